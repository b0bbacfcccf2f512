// The per-element work of the CUDA kernels (cuda_kernels.cu): element codecs (storage type <->
// arithmetic type), the reduction ops, and the functors a kernel applies to each element (reduce,
// copy, scale, cast, divide). Arithmetic matches cpu_reduce.cc operation for operation. Device
// code for cuda_kernels.cu only; nothing here launches anything.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common/types.h"

namespace fusecomm {
namespace cuda_elements {

// ---- Element codecs: storage type <-> arithmetic type ------------------------------------------

template <typename T>
struct NativeCodec {
  using Storage = T;
  using Compute = T;
  __device__ static Compute ToCompute(Storage x) { return x; }
  __device__ static Storage FromCompute(Compute x) { return x; }
};

// bool is one byte; any non-zero byte reads as true (see OrOp/AndOp).
struct BoolCodec : NativeCodec<uint8_t> {};

struct HalfCodec {
  using Storage = uint16_t;
  using Compute = float;
  __device__ static float ToCompute(uint16_t x) { return __half2float(__ushort_as_half(x)); }
  __device__ static uint16_t FromCompute(float x) {
    return __half_as_ushort(__float2half_rn(x));
  }
};

struct BFloat16Codec {
  using Storage = uint16_t;
  using Compute = float;
  __device__ static float ToCompute(uint16_t x) {
    return __bfloat162float(__ushort_as_bfloat16(x));
  }
  __device__ static uint16_t FromCompute(float x) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  }
};

// The types a float32 computation covers: the only ones CudaBatchedScaledCopy casts between.
template <typename C>
constexpr bool kFloat32Family = std::is_same_v<C, NativeCodec<float>> ||
                                std::is_same_v<C, HalfCodec> ||
                                std::is_same_v<C, BFloat16Codec>;

// Integer Sum/Product run on the unsigned type so they wrap modulo 2^n (as on the CPU).
// (Tested on Compute: float16/bfloat16 are stored as uint16_t but are not integers.)
template <typename C, bool = std::is_integral_v<typename C::Compute>>
struct WrapCodecOf { using type = C; };
template <typename C>
struct WrapCodecOf<C, true> {
  using type = NativeCodec<std::make_unsigned_t<typename C::Storage>>;
};
template <typename C>
using WrapCodec = typename WrapCodecOf<C>::type;

// ---- Reduction ops (same expressions as cpu_reduce.cc) ---------------------------------------

struct SumOp {
  template <typename T>
  __device__ static T Apply(T a, T b) { return static_cast<T>(a + b); }
};

struct ProductOp {
  template <typename T>
  __device__ static T Apply(T a, T b) { return static_cast<T>(a * b); }
};

// Floats: a NaN operand gives NaN; on ties the first operand is kept (so min(-0, +0) = -0).
struct MinOp {
  template <typename T>
  __device__ static T Apply(T a, T b) {
    if constexpr (std::is_floating_point_v<T>) {
      return ((a <= b) | (a != a)) ? a : b;
    } else {
      return b < a ? b : a;
    }
  }
};

struct MaxOp {
  template <typename T>
  __device__ static T Apply(T a, T b) {
    if constexpr (std::is_floating_point_v<T>) {
      return ((a >= b) | (a != a)) ? a : b;
    } else {
      return a < b ? b : a;
    }
  }
};

struct OrOp {
  template <typename T>
  __device__ static T Apply(T a, T b) { return static_cast<T>((a | b) != 0); }
};

struct AndOp {
  template <typename T>
  __device__ static T Apply(T a, T b) { return static_cast<T>((a != 0) & (b != 0)); }
};

// ---- Element functors ------------------------------------------------------------------------
// Each names its storage types; kReadsDst says whether it combines with the old dst value,
// kIsCopy that it is the identity (moved as whole vectors, never unpacked).
// They travel by value in the kernel parameters, so they hold only plain numbers.

// dst = op(dst, src)
template <typename Codec, typename Op>
struct ReduceFn {
  using Src = typename Codec::Storage;
  using Dst = typename Codec::Storage;
  static constexpr bool kReadsDst = true;
  static constexpr bool kIsCopy = false;
  __device__ Dst operator()(Dst d, Src s) const {
    return Codec::FromCompute(Op::Apply(Codec::ToCompute(d), Codec::ToCompute(s)));
  }
};

// dst = src, bit for bit, on unsigned integers of the element's size.
template <typename T>
struct CopyFn {
  using Src = T;
  using Dst = T;
  static constexpr bool kReadsDst = false;
  static constexpr bool kIsCopy = true;
  __device__ Dst operator()(Src s) const { return s; }
};

// dst = round(src * factor) computed in DstCodec's arithmetic type: double for float64, float
// for float32/float16/bfloat16 (including the casts between those three).
template <typename SrcCodec, typename DstCodec>
struct ScaleFloatFn {
  using Src = typename SrcCodec::Storage;
  using Dst = typename DstCodec::Storage;
  using Compute = typename DstCodec::Compute;
  static constexpr bool kReadsDst = false;
  static constexpr bool kIsCopy = false;
  Compute factor;
  __device__ Dst operator()(Src s) const {
    return DstCodec::FromCompute(static_cast<Compute>(SrcCodec::ToCompute(s)) * factor);
  }
};

// Saturate into int64 (NaN -> 0), then wrap to T modulo 2^n: DoubleToInt of cpu_reduce.cc.
template <typename T>
__device__ T DoubleToInt(double v) {
  constexpr double kTwo63 = 9223372036854775808.0;
  int64_t i;
  if (v != v) {
    i = 0;
  } else if (v >= kTwo63) {
    i = INT64_MAX;
  } else if (v < -kTwo63) {
    i = INT64_MIN;
  } else {
    i = static_cast<int64_t>(v);  // truncates toward zero
  }
  return static_cast<T>(static_cast<uint64_t>(i));
}

// dst = trunc(double(src) * factor), saturated and wrapped as above.
template <typename T>
struct ScaleIntFn {
  using Src = T;
  using Dst = T;
  static constexpr bool kReadsDst = false;
  static constexpr bool kIsCopy = false;
  double factor;
  __device__ Dst operator()(Src s) const {
    return DoubleToInt<T>(static_cast<double>(s) * factor);
  }
};

// Integers of at most 32 bits: the double quotient truncates to the exact integer quotient
// (see DivideInt in cpu_reduce.cc), and double division is cheaper than integer division.
template <typename T>
struct DivideSmallIntFn {
  using Src = T;
  using Dst = T;
  static constexpr bool kReadsDst = false;
  static constexpr bool kIsCopy = false;
  double divisor;
  __device__ Dst operator()(Src s) const {
    return static_cast<T>(
        static_cast<uint64_t>(static_cast<int64_t>(static_cast<double>(s) / divisor)));
  }
};

// int64: exact integer division; INT64_MIN / -1 overflows, so -1 negates modulo 2^64.
struct DivideInt64Fn {
  using Src = int64_t;
  using Dst = int64_t;
  static constexpr bool kReadsDst = false;
  static constexpr bool kIsCopy = false;
  int64_t divisor;
  __device__ Dst operator()(Src s) const {
    return divisor == -1 ? static_cast<int64_t>(0 - static_cast<uint64_t>(s)) : s / divisor;
  }
};

}  // namespace cuda_elements
}  // namespace fusecomm

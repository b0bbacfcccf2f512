// CPU element-wise kernels. Every loop body is a template instantiated per (type, op), so the
// per-element code has no switch and GCC -O3 vectorises it; the dispatch on dtype/op happens
// once per call.
#include "reduce/cpu_reduce.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The block conversions use F16C when the CPU has it, chosen at run time, so a build for any
// x86-64 gets them (without it, float16 all-reduces took twice fp32's time for the same bytes).
#define FUSECOMM_F16C_AT_RUN_TIME 1
#include <immintrin.h>
#endif

#include "common/errors.h"

namespace fusecomm {
namespace {

// fp16/bf16 are converted in blocks this size: small enough for the float scratch arrays to stay
// in L1, large enough that the conversion and arithmetic loops run at full vector width.
constexpr size_t kBlock = 256;

// memcpy is the defined way to reinterpret bits in C++17; GCC folds it to a register move, and
// the vectoriser treats it as a plain bit cast.
inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// ---- Portable conversions -----------------------------------------------------------------
// Branch-free (every case computed, then selected) so that loops over them vectorise.

// A select written as bit masks: GCC leaves nested ?: with FP operands as branches, which stops
// the vectoriser, but mask arithmetic is straight-line code.
inline uint32_t Select(bool c, uint32_t a, uint32_t b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return (a & m) | (b & ~m);
}

inline float HalfToFloatPortable(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;  // exponent and mantissa
  // em < 2^15, so signed compares give the same answer and need no bias trick in SSE2.
  const int32_t ems = static_cast<int32_t>(em);
  // Normal: shift into place and rebias the exponent from 15 to 127.
  const uint32_t normal = (em << 13) + (static_cast<uint32_t>(127 - 15) << 23);
  // Inf/NaN: all exponent bits set, payload kept; a NaN is quietened as IEEE conversions do.
  const uint32_t infnan = (em << 13) | 0x7f800000u | (ems > 0x7c00 ? 0x00400000u : 0u);
  // Subnormal or zero: mantissa * 2^-24 is exact in float (the mantissa has 10 bits).
  const uint32_t sub = FloatBits(static_cast<float>(ems) * 0x1p-24f);
  const uint32_t bits = Select(ems >= 0x7c00, infnan, Select(ems < 0x0400, sub, normal));
  return BitsFloat(bits | sign);
}

inline uint16_t FloatToHalfPortable(float f) {
  const uint32_t u = FloatBits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  // Normal result: rebias the exponent, then add 0x0fff plus the lowest kept bit so the 13
  // dropped bits round to nearest even; a carry out of the mantissa bumps the exponent, which
  // is also how values from 65520 up become infinity. (Wraps harmlessly when not selected.)
  const uint32_t normal =
      (a - (static_cast<uint32_t>(127 - 15) << 23) + 0x0fffu + ((a >> 13) & 1u)) >> 13;
  // Subnormal result (|f| < 2^-14): adding 0.5f places the half's 10 mantissa bits at the bottom
  // of the float's mantissa, and the FP adder performs the round-to-nearest-even for us.
  const uint32_t sub = FloatBits(BitsFloat(a) + 0.5f) - 0x3f000000u;
  // NaN stays NaN (quiet, top payload bits kept); overflow of the exponent is infinity.
  // a < 2^31: signed compares are equivalent and cheaper in SSE2.
  const int32_t as = static_cast<int32_t>(a);
  const uint32_t infnan = as > 0x7f800000 ? (0x7e00u | ((a >> 13) & 0x03ffu)) : 0x7c00u;
  const uint32_t bits = Select(as >= 0x47800000, infnan, Select(as < 0x38800000, sub, normal));
  return static_cast<uint16_t>(bits | sign);
}

inline float BFloat16ToFloatPortable(uint16_t b) {
  return BitsFloat(static_cast<uint32_t>(b) << 16);
}

inline uint16_t FloatToBFloat16Portable(float f) {
  const uint32_t u = FloatBits(f);
  // Round to nearest even on the dropped 16 bits; overflow rounds into infinity as it should.
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  // A NaN must not round into infinity: truncate and force the quiet bit.
  const uint32_t nan = (u >> 16) | 0x0040u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// Scalar conversions used by the public functions and the block tails: the F16C instructions
// when the compiler may use them (-mf16c, or an -march that has it), else the portable code.
// The hardware also rounds to nearest even and quietens NaNs, so both paths give equal bits.
inline float HalfToFloatImpl(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return HalfToFloatPortable(h);
#endif
}

inline uint16_t FloatToHalfImpl(float f) {
#if defined(__F16C__)
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
#else
  return FloatToHalfPortable(f);
#endif
}

// ---- Codecs: scalar + block conversion for the 16-bit float formats --------------------------

#ifdef FUSECOMM_F16C_AT_RUN_TIME
bool CpuHasF16C() {
  static const bool has = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  return has;
}

// Whole groups of 8 only (n a multiple of 8); callers convert the tail with the scalar code.
__attribute__((target("avx,f16c"))) void HalfToFloatF16C(const uint16_t* __restrict in,
                                                        float* __restrict out, size_t n) {
  for (size_t i = 0; i < n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
}

__attribute__((target("avx,f16c"))) void FloatToHalfF16C(const float* __restrict in,
                                                        uint16_t* __restrict out, size_t n) {
  for (size_t i = 0; i < n; i += 8) {
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
  }
}
#endif

struct HalfCodec {
  static void ToFloat(const uint16_t* __restrict in, float* __restrict out, size_t n) {
    size_t i = 0;
#ifdef FUSECOMM_F16C_AT_RUN_TIME
    if (CpuHasF16C()) HalfToFloatF16C(in, out, i = n / 8 * 8);
#endif
    for (; i < n; ++i) out[i] = HalfToFloatImpl(in[i]);
  }
  static void FromFloat(const float* __restrict in, uint16_t* __restrict out, size_t n) {
    size_t i = 0;
#ifdef FUSECOMM_F16C_AT_RUN_TIME
    if (CpuHasF16C()) FloatToHalfF16C(in, out, i = n / 8 * 8);
#endif
    for (; i < n; ++i) out[i] = FloatToHalfImpl(in[i]);
  }
};

struct BFloat16Codec {
  static void ToFloat(const uint16_t* __restrict in, float* __restrict out, size_t n) {
    for (size_t i = 0; i < n; ++i) out[i] = BFloat16ToFloatPortable(in[i]);
  }
  static void FromFloat(const float* __restrict in, uint16_t* __restrict out, size_t n) {
    for (size_t i = 0; i < n; ++i) out[i] = FloatToBFloat16Portable(in[i]);
  }
};

// ---- Reduction ops ---------------------------------------------------------------------------
// Integer Sum/Product are instantiated on the unsigned type (see ArithType), so they wrap
// modulo 2^n like NumPy instead of overflowing a signed type (undefined behaviour).

struct SumOp {
  template <typename T>
  static T Apply(T a, T b) { return static_cast<T>(a + b); }
};

struct ProductOp {
  template <typename T>
  static T Apply(T a, T b) { return static_cast<T>(a * b); }
};

// Floats: NaN in either operand gives NaN (numpy.minimum); on ties the first operand is kept.
// Written as one select so it becomes compare + blend in the vector loop.
struct MinOp {
  template <typename T>
  static T Apply(T a, T b) {
    if constexpr (std::is_floating_point_v<T>) {
      return ((a <= b) | (a != a)) ? a : b;
    } else {
      return b < a ? b : a;
    }
  }
};

struct MaxOp {
  template <typename T>
  static T Apply(T a, T b) {
    if constexpr (std::is_floating_point_v<T>) {
      return ((a >= b) | (a != a)) ? a : b;
    } else {
      return a < b ? b : a;
    }
  }
};

// bool is stored as one byte; any non-zero byte reads as true and results are written as 0/1.
struct OrOp {
  static uint8_t Apply(uint8_t a, uint8_t b) { return static_cast<uint8_t>((a | b) != 0); }
};

struct AndOp {
  static uint8_t Apply(uint8_t a, uint8_t b) {
    return static_cast<uint8_t>((a != 0) & (b != 0));
  }
};

template <typename T, bool = std::is_integral_v<T>>
struct ArithTypeOf { using type = T; };
template <typename T>
struct ArithTypeOf<T, true> { using type = std::make_unsigned_t<T>; };
template <typename T>
using ArithType = typename ArithTypeOf<T>::type;

// ---- Generic loops ---------------------------------------------------------------------------
// Separate in-place variants let the two-pointer loops use __restrict (no runtime alias check)
// while dst == src stays valid.

template <typename T, typename Op>
void ReduceLoop(T* __restrict dst, const T* __restrict src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = Op::Apply(dst[i], src[i]);
}

template <typename T, typename Op>
void ReduceLoopSelf(T* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = Op::Apply(dst[i], dst[i]);
}

template <typename T, typename Op>
void Reduce(void* dst, const void* src, size_t n) {
  // Casting a signed integer buffer to its unsigned counterpart is allowed aliasing.
  T* d = static_cast<T*>(dst);
  const T* s = static_cast<const T*>(src);
  if (d == s) {
    ReduceLoopSelf<T, Op>(d, n);
  } else {
    ReduceLoop<T, Op>(d, s, n);
  }
}

template <typename Codec, typename Op>
void ReduceBlocked(void* dst, const void* src, size_t n) {
  uint16_t* d = static_cast<uint16_t*>(dst);
  const uint16_t* s = static_cast<const uint16_t*>(src);
  alignas(64) float a[kBlock];
  alignas(64) float b[kBlock];
  for (size_t base = 0; base < n; base += kBlock) {
    const size_t m = std::min(kBlock, n - base);
    Codec::ToFloat(d + base, a, m);
    Codec::ToFloat(s + base, b, m);
    ReduceLoop<float, Op>(a, b, m);
    Codec::FromFloat(a, d + base, m);
  }
}

template <typename T, typename Fn>
void MapLoop(T* __restrict dst, const T* __restrict src, size_t n, Fn fn) {
  for (size_t i = 0; i < n; ++i) dst[i] = fn(src[i]);
}

template <typename T, typename Fn>
void MapLoopSelf(T* dst, size_t n, Fn fn) {
  for (size_t i = 0; i < n; ++i) dst[i] = fn(dst[i]);
}

// dst[i] = fn(src[i]) for a native type.
template <typename T, typename Fn>
void Map(void* dst, const void* src, size_t n, Fn fn) {
  T* d = static_cast<T*>(dst);
  const T* s = static_cast<const T*>(src);
  if (d == s) {
    MapLoopSelf(d, n, fn);
  } else {
    MapLoop(d, s, n, fn);
  }
}

// dst[i] = round(fn(float(src[i]))) for fp16/bf16. Each block is read completely before it is
// written, so dst == src is fine.
template <typename Codec, typename Fn>
void MapBlocked(void* dst, const void* src, size_t n, Fn fn) {
  uint16_t* d = static_cast<uint16_t*>(dst);
  const uint16_t* s = static_cast<const uint16_t*>(src);
  alignas(64) float a[kBlock];
  for (size_t base = 0; base < n; base += kBlock) {
    const size_t m = std::min(kBlock, n - base);
    Codec::ToFloat(s + base, a, m);
    MapLoopSelf(a, m, fn);
    Codec::FromFloat(a, d + base, m);
  }
}

// ---- Dispatch helpers ------------------------------------------------------------------------

[[noreturn]] void ThrowBadType(DataType dtype) {
  throw InvalidArgument("unsupported data type code " + std::to_string(static_cast<int>(dtype)));
}

// The kernels allow dst == src but not a partial overlap: reject it rather than return garbage.
void CheckOverlap(const void* dst, const void* src, size_t bytes, const char* what) {
  const uintptr_t d = reinterpret_cast<uintptr_t>(dst);
  const uintptr_t s = reinterpret_cast<uintptr_t>(src);
  if (d != s && d < s + bytes && s < d + bytes) {
    throw InvalidArgument(std::string(what) + ": source and destination partially overlap");
  }
}

template <typename T>
void ReduceNative(void* dst, const void* src, size_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAverage:
      return Reduce<ArithType<T>, SumOp>(dst, src, n);
    case ReduceOp::kProduct:
      return Reduce<ArithType<T>, ProductOp>(dst, src, n);
    case ReduceOp::kMin:
      return Reduce<T, MinOp>(dst, src, n);
    case ReduceOp::kMax:
      return Reduce<T, MaxOp>(dst, src, n);    case ReduceOp::kAdasum:
      break;  // not element-wise: collectives/adasum_allreduce.cc
  }
  throw InvalidArgument("unknown reduce op code " + std::to_string(static_cast<int>(op)));
}

template <typename Codec>
void ReduceHalfLike(void* dst, const void* src, size_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAverage:
      return ReduceBlocked<Codec, SumOp>(dst, src, n);
    case ReduceOp::kProduct:
      return ReduceBlocked<Codec, ProductOp>(dst, src, n);
    case ReduceOp::kMin:
      return ReduceBlocked<Codec, MinOp>(dst, src, n);
    case ReduceOp::kMax:
      return ReduceBlocked<Codec, MaxOp>(dst, src, n);    case ReduceOp::kAdasum:
      break;  // not element-wise: collectives/adasum_allreduce.cc
  }
  throw InvalidArgument("unknown reduce op code " + std::to_string(static_cast<int>(op)));
}

void ReduceBool(void* dst, const void* src, size_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAverage:
    case ReduceOp::kMax:
      return Reduce<uint8_t, OrOp>(dst, src, n);
    case ReduceOp::kMin:
    case ReduceOp::kProduct:
      return Reduce<uint8_t, AndOp>(dst, src, n);
    case ReduceOp::kAdasum:
      break;
  }
  throw InvalidArgument("unknown reduce op code " + std::to_string(static_cast<int>(op)));
}

// C++ leaves out-of-range float -> integer conversion undefined. Saturate into int64 (NaN -> 0),
// then wrap to T modulo 2^n, which is what NumPy's astype does on x86 for in-range int64 values.
template <typename T>
T DoubleToInt(double v) {
  constexpr double kTwo63 = 9223372036854775808.0;
  int64_t i;
  if (v != v) {
    i = 0;
  } else if (v >= kTwo63) {
    i = std::numeric_limits<int64_t>::max();
  } else if (v < -kTwo63) {
    i = std::numeric_limits<int64_t>::min();
  } else {
    i = static_cast<int64_t>(v);  // truncates toward zero
  }
  return static_cast<T>(static_cast<uint64_t>(i));
}

template <typename T>
void ScaleInt(void* dst, const void* src, size_t n, double factor) {
  Map<T>(dst, src, n, [factor](T x) { return DoubleToInt<T>(static_cast<double>(x) * factor); });
}

template <typename T>
void DivideInt(void* dst, const void* src, size_t n, int64_t divisor) {
  if constexpr (sizeof(T) <= 4) {
    // |x| <= 2^31, so a non-integral quotient is at least 2^-31 (relative) from an integer and
    // double division (vectorisable, unlike integer division) truncates to the exact result.
    const double d = static_cast<double>(divisor);
    Map<T>(dst, src, n, [d](T x) {
      return static_cast<T>(
          static_cast<uint64_t>(static_cast<int64_t>(static_cast<double>(x) / d)));
    });
  } else if (divisor == -1) {
    // INT64_MIN / -1 overflows; negate modulo 2^64 instead (NumPy's result).
    Map<T>(dst, src, n, [](T x) { return static_cast<T>(0 - static_cast<uint64_t>(x)); });
  } else {
    Map<T>(dst, src, n, [divisor](T x) { return static_cast<T>(x / divisor); });
  }
}

// Multiplication by a factor for every floating type: float64 in double, the rest in float.
void ScaleFloat(void* dst, const void* src, size_t n, DataType dtype, double factor) {
  const float ff = static_cast<float>(factor);
  auto scale_f = [ff](float x) { return x * ff; };
  switch (dtype) {
    case DataType::kFloat64:
      return Map<double>(dst, src, n, [factor](double x) { return x * factor; });
    case DataType::kFloat32:
      return Map<float>(dst, src, n, scale_f);
    case DataType::kFloat16:
      return MapBlocked<HalfCodec>(dst, src, n, scale_f);
    case DataType::kBFloat16:
      return MapBlocked<BFloat16Codec>(dst, src, n, scale_f);
    default:
      ThrowBadType(dtype);
  }
}

}  // namespace

// ---- Public API ------------------------------------------------------------------------------

void CpuReduceInto(void* dst, const void* src, size_t count, DataType dtype, ReduceOp op) {
  const size_t elem = DataTypeSize(dtype);  // throws on an unknown dtype
  if (count == 0) return;
  CheckOverlap(dst, src, count * elem, "CpuReduceInto");
  switch (dtype) {
    case DataType::kUInt8: return ReduceNative<uint8_t>(dst, src, count, op);
    case DataType::kInt8: return ReduceNative<int8_t>(dst, src, count, op);
    case DataType::kInt32: return ReduceNative<int32_t>(dst, src, count, op);
    case DataType::kInt64: return ReduceNative<int64_t>(dst, src, count, op);
    case DataType::kFloat32: return ReduceNative<float>(dst, src, count, op);
    case DataType::kFloat64: return ReduceNative<double>(dst, src, count, op);
    case DataType::kFloat16: return ReduceHalfLike<HalfCodec>(dst, src, count, op);
    case DataType::kBFloat16: return ReduceHalfLike<BFloat16Codec>(dst, src, count, op);
    case DataType::kBool: return ReduceBool(dst, src, count, op);
    case DataType::kInt16: return ReduceNative<int16_t>(dst, src, count, op);
    case DataType::kUInt16: return ReduceNative<uint16_t>(dst, src, count, op);
  }
  ThrowBadType(dtype);
}

void CpuScaledCopy(void* dst, const void* src, size_t count, DataType dtype, double factor) {
  const size_t bytes = count * DataTypeSize(dtype);
  if (factor == 1.0) {
    // A plain copy: memmove so any overlap is fine; nothing to do in place.
    if (count != 0 && dst != src) std::memmove(dst, src, bytes);
    return;
  }
  if (dtype == DataType::kBool) throw InvalidArgument("cannot scale a bool tensor");
  if (count == 0) return;
  CheckOverlap(dst, src, bytes, "CpuScaledCopy");
  switch (dtype) {
    case DataType::kUInt8: return ScaleInt<uint8_t>(dst, src, count, factor);
    case DataType::kInt8: return ScaleInt<int8_t>(dst, src, count, factor);
    case DataType::kInt32: return ScaleInt<int32_t>(dst, src, count, factor);
    case DataType::kInt64: return ScaleInt<int64_t>(dst, src, count, factor);
    case DataType::kInt16: return ScaleInt<int16_t>(dst, src, count, factor);
    case DataType::kUInt16: return ScaleInt<uint16_t>(dst, src, count, factor);
    default: return ScaleFloat(dst, src, count, dtype, factor);
  }
}

void CpuDivide(void* dst, const void* src, size_t count, DataType dtype, int64_t divisor) {
  const size_t bytes = count * DataTypeSize(dtype);
  if (dtype == DataType::kBool) throw InvalidArgument("cannot divide a bool tensor");
  if (divisor == 0) throw InvalidArgument("CpuDivide: division by zero");
  if (count == 0) return;
  CheckOverlap(dst, src, bytes, "CpuDivide");
  switch (dtype) {
    case DataType::kUInt8: return DivideInt<uint8_t>(dst, src, count, divisor);
    case DataType::kInt8: return DivideInt<int8_t>(dst, src, count, divisor);
    case DataType::kInt32: return DivideInt<int32_t>(dst, src, count, divisor);
    case DataType::kInt64: return DivideInt<int64_t>(dst, src, count, divisor);
    case DataType::kInt16: return DivideInt<int16_t>(dst, src, count, divisor);
    case DataType::kUInt16: return DivideInt<uint16_t>(dst, src, count, divisor);
    default: return ScaleFloat(dst, src, count, dtype, 1.0 / static_cast<double>(divisor));
  }
}

float HalfToFloat(uint16_t h) { return HalfToFloatImpl(h); }

uint16_t FloatToHalf(float f) { return FloatToHalfImpl(f); }

float BFloat16ToFloat(uint16_t b) { return BFloat16ToFloatPortable(b); }

uint16_t FloatToBFloat16(float f) { return FloatToBFloat16Portable(f); }

}  // namespace fusecomm

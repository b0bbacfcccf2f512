// CUDA element-wise kernels. One kernel template serves every entry point: it takes a batch of
// (src, dst, count) entries in its parameters, cuts each entry into fixed-size chunks and gives
// every chunk one thread block, so blocks are spread over the entries in proportion to their
// size. A single-tensor call is a batch of one. The per-element work is a functor (reduce, scale,
// cast, divide); the dtype switch (VisitCodec) and the op switch (VisitReduceFn) are written once.
//
// Arithmetic matches cpu_reduce.cc operation for operation (same types, same order, IEEE round
// to nearest even, no contraction opportunities), so results are bit-identical to the CPU
// kernels except for the payload bits of NaNs produced by the float16/bfloat16 conversions.
#include "reduce/cuda_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/errors.h"
#include "reduce/cuda_element_ops.cuh"

namespace fusecomm {
namespace {

using namespace cuda_elements;  // NOLINT: the element functors, codecs and ops

// ---- Launch geometry -------------------------------------------------------------------------

constexpr int kThreads = 256;
// Entries per launch. 128 keeps the parameter block under the 4 KiB that every driver accepts
// (the 32 KiB limit needs CUDA 12.1 and an R530+ driver); a launch costs a few microseconds,
// so a batch of hundreds of tensors loses little by taking two or three.
constexpr int kMaxEntries = 128;
// An entry longer than this many chunks is split into several entries, which bounds the block
// count of a launch (kMaxEntries * kMaxChunksPerEntry fits grid.x and uint32 prefix sums).
constexpr size_t kMaxChunksPerEntry = 4096;

// ---- The kernel --------------------------------------------------------------------------------

// kVec: elements per 16-byte vector of the narrower side (a float32 -> float16 cast moves 8
// elements: 32 bytes in, 16 out). kUnroll: vectors per thread, all loaded before any is stored;
// enough bytes in flight to cover memory latency, few enough elements (at most 16 once
// unpacked; the plain copy never unpacks) that registers allow full occupancy. kChunk: elements
// per block.
template <typename Fn>
struct Geometry {
  static constexpr size_t kNarrow = sizeof(typename Fn::Src) < sizeof(typename Fn::Dst)
                                        ? sizeof(typename Fn::Src)
                                        : sizeof(typename Fn::Dst);
  static constexpr int kVec = static_cast<int>(16 / kNarrow);
  static constexpr int kUnroll =
      Fn::kIsCopy ? 4 : (16 / kVec < 1 ? 1 : (16 / kVec > 4 ? 4 : 16 / kVec));
  static constexpr size_t kChunk = static_cast<size_t>(kThreads) * kUnroll * kVec;
};

// N elements, a multiple of 16 bytes: copying one compiles to 128-bit loads or stores.
template <typename T, int N>
struct alignas(16) Pack {
  T v[N];
};

template <typename Fn>
struct BatchArgs {
  Fn fn;
  int num_entries;
  // Entry e owns blocks [first_block[e], first_block[e + 1]); entries here are never empty.
  uint32_t first_block[kMaxEntries + 1];
  const void* src[kMaxEntries];
  void* dst[kMaxEntries];
  size_t count[kMaxEntries];
};

template <typename Fn>
__device__ __forceinline__ void ApplyAt(const Fn& fn, const typename Fn::Src* src,
                                        typename Fn::Dst* dst, size_t i) {
  if constexpr (Fn::kReadsDst) {
    dst[i] = fn(dst[i], src[i]);
  } else {
    dst[i] = fn(src[i]);
  }
}

// Vectors [first, min(first + kThreads * kUnroll, nvec)) of 16-byte-aligned src/dst.
template <typename Fn>
__device__ __forceinline__ void VectorChunk(const Fn& fn, const typename Fn::Src* src,
                                            typename Fn::Dst* dst, size_t nvec, size_t first) {
  constexpr int V = Geometry<Fn>::kVec;
  constexpr int kUnroll = Geometry<Fn>::kUnroll;
  using SrcPack = Pack<typename Fn::Src, V>;
  using DstPack = Pack<typename Fn::Dst, V>;
  const SrcPack* vsrc = reinterpret_cast<const SrcPack*>(src);
  DstPack* vdst = reinterpret_cast<DstPack*>(dst);
  SrcPack in[kUnroll];
  DstPack out[kUnroll];
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    const size_t i = first + static_cast<size_t>(k) * kThreads + threadIdx.x;
    if (i < nvec) {
      in[k] = vsrc[i];
      if constexpr (Fn::kReadsDst) out[k] = vdst[i];
    }
  }
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    const size_t i = first + static_cast<size_t>(k) * kThreads + threadIdx.x;
    if (i >= nvec) continue;
    if constexpr (Fn::kIsCopy) {
      vdst[i] = in[k];
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        if constexpr (Fn::kReadsDst) {
          out[k].v[j] = fn(out[k].v[j], in[k].v[j]);
        } else {
          out[k].v[j] = fn(in[k].v[j]);
        }
      }
      vdst[i] = out[k];
    }
  }
}

// Elements [begin, end), coalesced, kUnroll loads in flight per thread.
template <typename Fn>
__device__ __forceinline__ void ScalarRange(const Fn& fn, const typename Fn::Src* src,
                                            typename Fn::Dst* dst, size_t begin, size_t end) {
  constexpr int kUnroll = Geometry<Fn>::kUnroll;
  for (size_t base = begin + threadIdx.x; base < end;
       base += static_cast<size_t>(kThreads) * kUnroll) {
    typename Fn::Src in[kUnroll];
    typename Fn::Dst out[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const size_t i = base + static_cast<size_t>(k) * kThreads;
      if (i < end) {
        in[k] = src[i];
        if constexpr (Fn::kReadsDst) out[k] = dst[i];
      }
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const size_t i = base + static_cast<size_t>(k) * kThreads;
      if (i < end) {
        if constexpr (Fn::kReadsDst) {
          dst[i] = fn(out[k], in[k]);
        } else {
          dst[i] = fn(in[k]);
        }
      }
    }
  }
}

// __grid_constant__: the entry arrays are read in place from the parameter bank (indexing a
// by-value parameter with a run-time index would otherwise copy it to local memory). It needs
// compute capability 7.0; older targets get the plain (slower, still correct) parameter.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 700
#define FUSECOMM_GRID_CONSTANT
#else
#define FUSECOMM_GRID_CONSTANT __grid_constant__
#endif

template <typename Fn>
__global__ void __launch_bounds__(kThreads)
    BatchKernel(const FUSECOMM_GRID_CONSTANT BatchArgs<Fn> args) {
  using Src = typename Fn::Src;
  using Dst = typename Fn::Dst;
  constexpr int V = Geometry<Fn>::kVec;
  constexpr size_t kChunk = Geometry<Fn>::kChunk;

  // The entry of this block: the last e with first_block[e] <= blockIdx.x.
  const uint32_t block = blockIdx.x;
  int lo = 0;
  int hi = args.num_entries - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (args.first_block[mid] <= block) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const size_t chunk = block - args.first_block[lo];
  const Src* src = static_cast<const Src*>(args.src[lo]);
  Dst* dst = static_cast<Dst*>(args.dst[lo]);
  const size_t n = args.count[lo];

  // Peel the elements before src's first 16-byte boundary; the vector path needs dst on a
  // boundary at the same element. (The host checked that both are element-aligned.)
  const size_t head =
      ((16 - reinterpret_cast<uintptr_t>(src) % 16) % 16) / sizeof(Src);
  const bool vectorised =
      head < n && reinterpret_cast<uintptr_t>(dst + head) % 16 == 0;
  if (!vectorised) {
    const size_t begin = chunk * kChunk;
    ScalarRange(args.fn, src, dst, begin, n < begin + kChunk ? n : begin + kChunk);
    return;
  }
  const size_t nvec = (n - head) / V;
  // nvec * V <= n, so this entry's ceil(n / kChunk) blocks cover every vector.
  const size_t first = chunk * kThreads * Geometry<Fn>::kUnroll;
  if (first < nvec) VectorChunk(args.fn, src + head, dst + head, nvec, first);
  if (chunk == 0) {
    // Head and tail are each shorter than one vector (<= 16 elements < kThreads).
    const size_t tail = head + nvec * V;
    if (threadIdx.x < head) ApplyAt(args.fn, src, dst, threadIdx.x);
    if (tail + threadIdx.x < n) ApplyAt(args.fn, src, dst, tail + threadIdx.x);
  }
}

// ---- Host side -------------------------------------------------------------------------------

[[noreturn]] void ThrowBadType(DataType dtype) {
  throw InvalidArgument("unsupported data type code " + std::to_string(static_cast<int>(dtype)));
}

[[noreturn]] void ThrowBadOp(ReduceOp op) {
  throw InvalidArgument("unknown reduce op code " + std::to_string(static_cast<int>(op)));
}

void CheckLaunch(const char* what) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw CollectiveError(std::string(what) + ": CUDA kernel launch failed: " +
                          cudaGetErrorString(status) + " (" + cudaGetErrorName(status) + ")");
  }
}

// The kernels allow dst == src (same element size) but no other overlap: a partial overlap
// would race between blocks.
void CheckEntry(const void* dst, size_t dst_elem, const void* src, size_t src_elem, size_t count,
                const char* what) {
  const uintptr_t d = reinterpret_cast<uintptr_t>(dst);
  const uintptr_t s = reinterpret_cast<uintptr_t>(src);
  if (count > SIZE_MAX / 8) {
    throw InvalidArgument(std::string(what) + ": element count " + std::to_string(count) +
                          " is too large");
  }
  if (d == 0 || s == 0) {
    throw InvalidArgument(std::string(what) + ": null pointer with " + std::to_string(count) +
                          " elements");
  }
  // A misaligned element access is a fatal device fault; refuse it here instead.
  if (d % dst_elem != 0 || s % src_elem != 0) {
    throw InvalidArgument(std::string(what) + ": pointer not aligned to its element size");
  }
  const size_t dst_bytes = count * dst_elem;
  const size_t src_bytes = count * src_elem;
  const bool in_place = d == s && dst_elem == src_elem;
  if (!in_place && d < s + src_bytes && s < d + dst_bytes) {
    throw InvalidArgument(std::string(what) + ": source and destination overlap");
  }
}

// Launches fn over every entry in batches of kMaxEntries.
template <typename Fn>
void LaunchBatched(const Fn& fn, const CudaCopyEntry* entries, size_t num_entries,
                   cudaStream_t stream, const char* what) {
  using Src = typename Fn::Src;
  using Dst = typename Fn::Dst;
  constexpr size_t kChunk = Geometry<Fn>::kChunk;
  constexpr size_t kMaxPiece = kChunk * kMaxChunksPerEntry;
  static_assert(sizeof(BatchArgs<Fn>) <= 4096, "kernel parameters must fit in 4 KiB");

  for (size_t i = 0; i < num_entries; ++i) {
    if (entries[i].count != 0) {
      CheckEntry(entries[i].dst, sizeof(Dst), entries[i].src, sizeof(Src), entries[i].count,
                 what);
    }
  }
  BatchArgs<Fn> args{};
  args.fn = fn;
  uint32_t blocks = 0;
  auto flush = [&] {
    if (args.num_entries == 0) return;
    // Clear a stale error of earlier, unrelated calls so the check below reports only ours.
    (void)cudaGetLastError();
    BatchKernel<Fn><<<blocks, kThreads, 0, stream>>>(args);
    CheckLaunch(what);
    args.num_entries = 0;
    blocks = 0;
  };
  for (size_t i = 0; i < num_entries; ++i) {
    const size_t count = entries[i].count;
    const Src* src = static_cast<const Src*>(entries[i].src);
    Dst* dst = static_cast<Dst*>(entries[i].dst);
    // Nothing to do for an identity copy in place.
    if (count == 0 || (Fn::kIsCopy && static_cast<const void*>(src) == dst)) {
      continue;
    }
    // Pieces start at multiples of kChunk elements, so they keep the entry's alignment.
    for (size_t offset = 0; offset < count; offset += kMaxPiece) {
      const size_t piece = std::min(kMaxPiece, count - offset);
      const int e = args.num_entries;
      args.src[e] = src + offset;
      args.dst[e] = dst + offset;
      args.count[e] = piece;
      args.first_block[e] = blocks;
      blocks += static_cast<uint32_t>((piece + kChunk - 1) / kChunk);
      args.first_block[e + 1] = blocks;
      args.num_entries = e + 1;
      if (args.num_entries == kMaxEntries) flush();
    }
  }
  flush();
}

// Calls visit(Codec{}) for dtype: the one switch over data types.
template <typename Visitor>
void VisitCodec(DataType dtype, Visitor&& visit) {
  switch (dtype) {
    case DataType::kUInt8: return visit(NativeCodec<uint8_t>{});
    case DataType::kInt8: return visit(NativeCodec<int8_t>{});
    case DataType::kInt32: return visit(NativeCodec<int32_t>{});
    case DataType::kInt64: return visit(NativeCodec<int64_t>{});
    case DataType::kFloat16: return visit(HalfCodec{});
    case DataType::kBFloat16: return visit(BFloat16Codec{});
    case DataType::kFloat32: return visit(NativeCodec<float>{});
    case DataType::kFloat64: return visit(NativeCodec<double>{});
    case DataType::kBool: return visit(BoolCodec{});
    case DataType::kInt16: return visit(NativeCodec<int16_t>{});
    case DataType::kUInt16: return visit(NativeCodec<uint16_t>{});
  }
  ThrowBadType(dtype);
}

// Calls visit(ReduceFn<...>{}) for op on codec C: the one switch over reduce ops.
template <typename C, typename Visitor>
void VisitReduceFn(ReduceOp op, Visitor&& visit) {
  if constexpr (std::is_same_v<C, BoolCodec>) {
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAverage:
      case ReduceOp::kMax:
        return visit(ReduceFn<C, OrOp>{});
      case ReduceOp::kMin:
      case ReduceOp::kProduct:
        return visit(ReduceFn<C, AndOp>{});
    }
  } else {
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAverage:
        return visit(ReduceFn<WrapCodec<C>, SumOp>{});
      case ReduceOp::kProduct:
        return visit(ReduceFn<WrapCodec<C>, ProductOp>{});
      case ReduceOp::kMin:
        return visit(ReduceFn<C, MinOp>{});
      case ReduceOp::kMax:
        return visit(ReduceFn<C, MaxOp>{});
    }
  }
  ThrowBadOp(op);
}

// dst = src * factor for codec C with CpuScaledCopy's arithmetic (bool is rejected earlier).
template <typename C>
auto ScaleFnFor(double factor) {
  if constexpr (std::is_integral_v<typename C::Compute>) {
    return ScaleIntFn<typename C::Storage>{factor};
  } else {
    return ScaleFloatFn<C, C>{static_cast<typename C::Compute>(factor)};
  }
}

bool IsFloat32Family(DataType dtype) {
  return dtype == DataType::kFloat32 || dtype == DataType::kFloat16 ||
         dtype == DataType::kBFloat16;
}

}  // namespace

void CudaReduceInto(void* dst, const void* src, size_t count, DataType dtype, ReduceOp op,
                    cudaStream_t stream) {
  DataTypeSize(dtype);  // throws on an unknown dtype
  if (count == 0) return;
  const CudaCopyEntry entry{src, dst, count};
  VisitCodec(dtype, [&](auto codec) {
    VisitReduceFn<decltype(codec)>(op, [&](auto fn) {
      LaunchBatched(fn, &entry, 1, stream, "CudaReduceInto");
    });
  });
}

void CudaScaledCopy(void* dst, const void* src, size_t count, DataType dtype, double factor,
                    cudaStream_t stream) {
  const size_t bytes = count * DataTypeSize(dtype);
  if (factor == 1.0) {
    if (count == 0 || dst == src) return;
    // cudaMemcpy leaves overlapping copies undefined (unlike memmove on the CPU).
    CheckEntry(dst, 1, src, 1, bytes, "CudaScaledCopy");
    (void)cudaGetLastError();
    const cudaError_t status = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream);
    if (status != cudaSuccess) {
      (void)cudaGetLastError();
      throw CollectiveError(std::string("CudaScaledCopy: cudaMemcpyAsync of ") +
                            std::to_string(bytes) + " bytes failed: " +
                            cudaGetErrorString(status));
    }
    return;
  }
  if (dtype == DataType::kBool) throw InvalidArgument("cannot scale a bool tensor");
  if (count == 0) return;
  const CudaCopyEntry entry{src, dst, count};
  VisitCodec(dtype, [&](auto codec) {
    LaunchBatched(ScaleFnFor<decltype(codec)>(factor), &entry, 1, stream, "CudaScaledCopy");
  });
}

void CudaDivide(void* dst, const void* src, size_t count, DataType dtype, int64_t divisor,
                cudaStream_t stream) {
  DataTypeSize(dtype);
  if (dtype == DataType::kBool) throw InvalidArgument("cannot divide a bool tensor");
  if (divisor == 0) throw InvalidArgument("CudaDivide: division by zero");
  if (count == 0) return;
  const CudaCopyEntry entry{src, dst, count};
  VisitCodec(dtype, [&](auto codec) {
    using C = decltype(codec);
    // Compute, not Storage: float16/bfloat16 are stored as uint16_t but are not integers.
    using T = typename C::Compute;
    if constexpr (std::is_same_v<T, int64_t>) {
      LaunchBatched(DivideInt64Fn{divisor}, &entry, 1, stream, "CudaDivide");
    } else if constexpr (std::is_integral_v<T>) {
      LaunchBatched(DivideSmallIntFn<T>{static_cast<double>(divisor)}, &entry, 1, stream,
                    "CudaDivide");
    } else {
      LaunchBatched(ScaleFnFor<C>(1.0 / static_cast<double>(divisor)), &entry, 1, stream,
                    "CudaDivide");
    }
  });
}

void CudaBatchedScaledCopy(const CudaCopyEntry* entries, size_t num_entries, DataType src_dtype,
                           DataType dst_dtype, double factor, cudaStream_t stream) {
  constexpr const char* kWhat = "CudaBatchedScaledCopy";
  const size_t elem_size = DataTypeSize(src_dtype);
  DataTypeSize(dst_dtype);
  if (src_dtype == dst_dtype) {
    if (factor == 1.0) {
      // A plain copy moves bits: one kernel per element size serves every dtype.
      switch (elem_size) {
        case 1: return LaunchBatched(CopyFn<uint8_t>{}, entries, num_entries, stream, kWhat);
        case 2: return LaunchBatched(CopyFn<uint16_t>{}, entries, num_entries, stream, kWhat);
        case 4: return LaunchBatched(CopyFn<uint32_t>{}, entries, num_entries, stream, kWhat);
        case 8: return LaunchBatched(CopyFn<uint64_t>{}, entries, num_entries, stream, kWhat);
      }
      ThrowBadType(src_dtype);
    }
    if (src_dtype == DataType::kBool) throw InvalidArgument("cannot scale a bool tensor");
    VisitCodec(src_dtype, [&](auto codec) {
      LaunchBatched(ScaleFnFor<decltype(codec)>(factor), entries, num_entries, stream, kWhat);
    });
    return;
  }
  if (!IsFloat32Family(src_dtype) || !IsFloat32Family(dst_dtype)) {
    throw InvalidArgument(std::string(kWhat) + ": cannot cast " + DataTypeName(src_dtype) +
                          " to " + DataTypeName(dst_dtype) +
                          " (casts are between float32, float16 and bfloat16 only)");
  }
  VisitCodec(src_dtype, [&](auto src_codec) {
    VisitCodec(dst_dtype, [&](auto dst_codec) {
      using S = decltype(src_codec);
      using D = decltype(dst_codec);
      if constexpr (kFloat32Family<S> && kFloat32Family<D>) {
        LaunchBatched(ScaleFloatFn<S, D>{static_cast<float>(factor)}, entries, num_entries, stream,
                      kWhat);
      }
    });
  });
}

}  // namespace fusecomm

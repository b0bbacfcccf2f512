// Element-wise CUDA kernels on device memory, all launched on the caller's stream and never
// synchronising it. Same semantics as cpu_reduce.h (float16/bfloat16 computed in float32, bool
// Sum/Max = or, Min/Product = and, integer scaling truncated toward zero).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/types.h"

namespace fusecomm {

// dst[i] = op(dst[i], src[i]). kAverage is reduced as kSum (the caller scales).
void CudaReduceInto(void* dst, const void* src, size_t count, DataType dtype, ReduceOp op,
                    cudaStream_t stream);

// dst[i] = src[i] * factor (src may equal dst; factor == 1 is a copy).
void CudaScaledCopy(void* dst, const void* src, size_t count, DataType dtype, double factor,
                    cudaStream_t stream);

// Exact integer average: dst[i] = src[i] / divisor, truncated toward zero. Floats: * 1/divisor.
void CudaDivide(void* dst, const void* src, size_t count, DataType dtype, int64_t divisor,
                cudaStream_t stream);

// One tensor of a batched fusion-buffer copy.
struct CudaCopyEntry {
  const void* src;
  void* dst;
  size_t count;  // elements
};

// Many tensors in as few launches as possible: dst = cast<dst_dtype>(src * factor) for every
// entry. src_dtype == dst_dtype, or both in {float32, float16, bfloat16} (the fused cast of
// compressed gradients). The entry array is host memory; it travels in the kernel parameters.
void CudaBatchedScaledCopy(const CudaCopyEntry* entries, size_t num_entries, DataType src_dtype,
                           DataType dst_dtype, double factor, cudaStream_t stream);

}  // namespace fusecomm

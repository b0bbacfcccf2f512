// Element-wise CUDA kernels on device memory, all launched on the caller's stream and never
// synchronising it. Same semantics as cpu_reduce.h (float16/bfloat16 computed in float32, bool
// Sum/Max = or, Min/Product = and, integer scaling truncated toward zero), and the same
// InvalidArgument cases, plus these, checked on the host before anything is launched:
//   - src == dst is allowed; any other overlap is refused (also for a factor-1 copy, where the
//     CPU would memmove: CudaMemoryOps::Copy is the overlap-safe copy);
//   - pointers must be aligned to their element size (and non-null when count > 0).
// count == 0 launches nothing. Speed: a range runs 16-byte vector loads and stores when src and
// dst reach a 16-byte boundary at the same element (e.g. both 16-byte aligned); otherwise it runs
// element by element (correct, slower). Launch failures throw CollectiveError.
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
// compressed gradients). The entry array is host memory; it travels in the kernel parameters
// (up to 128 entries per launch; it may be reused as soon as the call returns). Casts compute
// float(src) * float(factor) and round once; same-dtype scaling is CudaScaledCopy's arithmetic.
// Entries must not overlap one another (not checked: their blocks would race).
void CudaBatchedScaledCopy(const CudaCopyEntry* entries, size_t num_entries, DataType src_dtype,
                           DataType dst_dtype, double factor, cudaStream_t stream);

}  // namespace fusecomm

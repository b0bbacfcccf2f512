// MemoryOps on CUDA device memory: every operation is a kernel or an async copy on one stream,
// so a Comm that orders its transfers on the same stream (NCCL) needs no synchronisation.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "transport/memory.h"

namespace fusecomm {

class CudaMemoryOps : public MemoryOps {
 public:
  // `stream` belongs to the caller (the engine's stream for this device) and outlives this.
  CudaMemoryOps(int device, cudaStream_t stream);
  ~CudaMemoryOps() override;

  void Copy(void* dst, const void* src, size_t bytes) override;
  void ReduceInto(void* dst, const void* src, size_t count, DataType dtype,
                  ReduceOp op) override;
  void ScaledCopy(void* dst, const void* src, size_t count, DataType dtype,
                  double factor) override;
  void Divide(void* dst, const void* src, size_t count, DataType dtype,
              int64_t divisor) override;
  // Device memory from a caching pool (cudaMalloc is a device-wide sync; the pool makes it rare).
  // A freed block is reused by later work on the same stream without waiting (stream order
  // keeps that safe), so pool memory must only be used on `stream`.
  std::shared_ptr<void> Allocate(size_t bytes) override;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  // Blocks the host until all work queued on the stream is done.
  void Synchronize();
  // Frees the pool's cached (unused) blocks, e.g. before a framework needs the memory.
  void ReleaseCachedMemory();
  // Bytes held in cached, unused blocks.
  size_t cached_bytes() const;

 private:
  struct Pool;
  int device_;
  cudaStream_t stream_;
  std::shared_ptr<Pool> pool_;
};

// Throws CollectiveError naming `what` when `status` is not cudaSuccess.
void CheckCuda(cudaError_t status, const char* what);

}  // namespace fusecomm

// Operations on the memory a Comm moves (host memory for MPI, device memory for NCCL), so that
// one algorithm file serves every transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/types.h"

namespace fusecomm {

class MemoryOps {
 public:
  virtual ~MemoryOps() = default;
  virtual void Copy(void* dst, const void* src, size_t bytes) = 0;
  // dst[i] = op(dst[i], src[i]); op is never kAverage here (algorithms reduce averages as sums).
  virtual void ReduceInto(void* dst, const void* src, size_t count, DataType dtype,
                          ReduceOp op) = 0;
  virtual void ScaledCopy(void* dst, const void* src, size_t count, DataType dtype,
                          double factor) = 0;
  // Exact average of integers: dst[i] = src[i] / divisor, truncated toward zero.
  virtual void Divide(void* dst, const void* src, size_t count, DataType dtype,
                      int64_t divisor) = 0;
  // Scratch space; the returned memory is owned by the caller through the unique_ptr.
  virtual std::shared_ptr<void> Allocate(size_t bytes) = 0;
  // Scratch space of zeros, for one-off use (the tuner's races): by default Allocate and a copy
  // from zeroed host memory.
  virtual std::shared_ptr<void> AllocateZeroed(size_t bytes) {
    std::shared_ptr<void> out = Allocate(bytes);
    const std::vector<char> zeros(bytes, 0);
    Copy(out.get(), zeros.data(), bytes);
    return out;
  }
};

class HostMemoryOps : public MemoryOps {
 public:
  void Copy(void* dst, const void* src, size_t bytes) override;
  void ReduceInto(void* dst, const void* src, size_t count, DataType dtype,
                  ReduceOp op) override;
  void ScaledCopy(void* dst, const void* src, size_t count, DataType dtype,
                  double factor) override;
  void Divide(void* dst, const void* src, size_t count, DataType dtype,
              int64_t divisor) override;
  std::shared_ptr<void> Allocate(size_t bytes) override;
  // Fresh pages from the kernel (already zero), returned to it on release: a one-off buffer
  // must not leave the allocator holding its size for good.
  std::shared_ptr<void> AllocateZeroed(size_t bytes) override;
};

HostMemoryOps& HostMemory();

}  // namespace fusecomm

// Operations on the memory a Comm moves (host memory for MPI, device memory for NCCL), so that
// one algorithm file serves every transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

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
};

HostMemoryOps& HostMemory();

}  // namespace fusecomm

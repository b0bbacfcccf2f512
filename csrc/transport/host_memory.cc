// Host-memory implementation of MemoryOps: the MPI transport's buffers live in ordinary RAM.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include <sys/mman.h>

#include "reduce/cpu_reduce.h"
#include "transport/memory.h"

namespace fusecomm {

namespace {
// Cache-line alignment keeps scratch buffers from sharing lines and suits any vector width.
constexpr size_t kAlignment = 64;
}  // namespace

void HostMemoryOps::Copy(void* dst, const void* src, size_t bytes) {
  // memmove: algorithms may copy between overlapping slices of one buffer.
  if (bytes == 0 || dst == src) return;
  std::memmove(dst, src, bytes);
}

void HostMemoryOps::ReduceInto(void* dst, const void* src, size_t count, DataType dtype,
                               ReduceOp op) {
  CpuReduceInto(dst, src, count, dtype, op);
}

void HostMemoryOps::ScaledCopy(void* dst, const void* src, size_t count, DataType dtype,
                               double factor) {
  CpuScaledCopy(dst, src, count, dtype, factor);
}

void HostMemoryOps::Divide(void* dst, const void* src, size_t count, DataType dtype,
                           int64_t divisor) {
  CpuDivide(dst, src, count, dtype, divisor);
}

std::shared_ptr<void> HostMemoryOps::Allocate(size_t bytes) {
  // aligned_alloc needs a non-zero multiple of the alignment; 0 bytes still gets a real,
  // unique pointer so callers need no special case.
  if (bytes > SIZE_MAX - kAlignment) throw std::bad_alloc();
  const size_t rounded =
      bytes == 0 ? kAlignment : (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded);
  if (p == nullptr) throw std::bad_alloc();
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}

std::shared_ptr<void> HostMemoryOps::AllocateZeroed(size_t bytes) {
  const size_t length = bytes == 0 ? 1 : bytes;
  void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  return std::shared_ptr<void>(p, [length](void* q) { munmap(q, length); });
}

HostMemoryOps& HostMemory() {
  static HostMemoryOps instance;
  return instance;
}

}  // namespace fusecomm

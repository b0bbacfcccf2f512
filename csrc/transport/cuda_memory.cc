// CudaMemoryOps: MemoryOps on device memory, every operation queued on one stream.
//
// Only CUDA builds compile this file (FUSECOMM_WITH_CUDA); a CPU-only build that globs
// csrc/transport/*.cc gets an empty translation unit.
#if defined(FUSECOMM_WITH_CUDA)

#include "transport/cuda_memory.h"

#include <cstdint>
#include <map>
#include <new>
#include <string>
#include <utility>

#include "common/errors.h"
#include "reduce/cuda_kernels.h"

namespace fusecomm {

namespace {

// Makes `device` current for a scope and restores the caller's device after it: the engine
// thread may serve several devices, and a framework thread must find its device unchanged.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    CheckCuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) {
      CheckCuda(cudaSetDevice(device), "cudaSetDevice");
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// Size classes: powers of two up to 1 MiB, then whole MiB, so that a slightly different
// request still finds a cached block and a large one wastes under 1 MiB.
constexpr size_t kMinBlock = 512;  // also keeps every block 512-byte aligned for the kernels
constexpr size_t kLargeUnit = size_t(1) << 20;

size_t BlockSize(size_t bytes) {
  if (bytes > SIZE_MAX / 2) throw std::bad_alloc();
  if (bytes <= kMinBlock) return kMinBlock;
  if (bytes <= kLargeUnit) {
    size_t size = kMinBlock;
    while (size < bytes) size *= 2;
    return size;
  }
  return (bytes + kLargeUnit - 1) / kLargeUnit * kLargeUnit;
}

bool PartiallyOverlap(const void* dst, const void* src, size_t bytes) {
  const uintptr_t d = reinterpret_cast<uintptr_t>(dst);
  const uintptr_t s = reinterpret_cast<uintptr_t>(src);
  return d != s && d < s + bytes && s < d + bytes;
}

}  // namespace

void CheckCuda(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  // A failed call also sets the thread's last error; clear it so that a later launch check
  // does not report this failure a second time (sticky errors stay regardless).
  (void)cudaGetLastError();
  throw CollectiveError(std::string(what) + " failed: " + cudaGetErrorString(status) + " (" +
                        cudaGetErrorName(status) + ")");
}

// Cached device blocks of one CudaMemoryOps, keyed by size.
//
// A freed block is reused at once, without waiting for an event: all work that touches pool
// memory is queued on the one stream of its CudaMemoryOps (kernels, copies, and NCCL calls on
// the same stream), so anything queued after the free runs after everything queued before
// it. Work on another stream must not use these blocks (it would need an event per block).
//
// The pool outlives its CudaMemoryOps while blocks are still out: each block's deleter holds
// a reference to it.
struct CudaMemoryOps::Pool {
  explicit Pool(int device) : device(device) {}
  ~Pool() { ReleaseCached(); }

  // Returns a block of at least `size` bytes (a BlockSize) and its actual size.
  std::pair<void*, size_t> Take(size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu);
      // Best fit, but never a block more than twice the request.
      auto it = free_blocks.lower_bound(size);
      if (it != free_blocks.end() && it->first / 2 <= size) {
        std::pair<void*, size_t> block{it->second, it->first};
        cached_bytes -= it->first;
        free_blocks.erase(it);
        return block;
      }
    }
    void* p = nullptr;
    cudaError_t status = cudaMalloc(&p, size);
    if (status == cudaErrorMemoryAllocation) {
      // Cached blocks of other sizes may be what is missing: give them back and retry.
      (void)cudaGetLastError();
      ReleaseCached();
      status = cudaMalloc(&p, size);
    }
    if (status != cudaSuccess) {
      const std::string what = "cudaMalloc of " + std::to_string(size) + " bytes on device " +
                               std::to_string(device);
      CheckCuda(status, what.c_str());
    }
    return {p, size};
  }

  // Called from a shared_ptr deleter: must not throw.
  void Give(void* p, size_t size) noexcept {
    try {
      std::lock_guard<std::mutex> lock(mu);
      free_blocks.emplace(size, p);
      cached_bytes += size;
      return;
    } catch (...) {
    }
    cudaFree(p);  // could not cache it (out of host memory): free it instead
  }

  // cudaFree waits for the device to finish with the memory, so this is safe at any time.
  void ReleaseCached() noexcept {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mu);
      blocks.swap(free_blocks);
      cached_bytes = 0;
    }
    if (blocks.empty()) return;
    int previous = -1;
    const bool switch_device = cudaGetDevice(&previous) == cudaSuccess && previous != device &&
                               cudaSetDevice(device) == cudaSuccess;
    for (const auto& block : blocks) cudaFree(block.second);
    if (switch_device) cudaSetDevice(previous);
    // Errors here (e.g. the runtime already unloaded at process exit) are not actionable.
    (void)cudaGetLastError();
  }

  const int device;
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;
  size_t cached_bytes = 0;
};

CudaMemoryOps::CudaMemoryOps(int device, cudaStream_t stream)
    : device_(device), stream_(stream), pool_(std::make_shared<Pool>(device)) {}

CudaMemoryOps::~CudaMemoryOps() {
  // Blocks still held by callers return to the pool, which frees them when the last one does.
  pool_->ReleaseCached();
}

void CudaMemoryOps::Copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  DeviceGuard guard(device_);
  if (PartiallyOverlap(dst, src, bytes)) {
    // cudaMemcpy leaves overlapping ranges undefined, but algorithms may shift data within one
    // buffer (memmove semantics, as HostMemoryOps gives): go through a scratch block. The block
    // returns to the pool when this function ends, which stream order makes safe.
    std::shared_ptr<void> scratch = Allocate(bytes);
    CheckCuda(cudaMemcpyAsync(scratch.get(), src, bytes, cudaMemcpyDefault, stream_),
              "cudaMemcpyAsync (overlapping copy, to scratch)");
    CheckCuda(cudaMemcpyAsync(dst, scratch.get(), bytes, cudaMemcpyDefault, stream_),
              "cudaMemcpyAsync (overlapping copy, from scratch)");
    return;
  }
  CheckCuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_), "cudaMemcpyAsync");
}

void CudaMemoryOps::ReduceInto(void* dst, const void* src, size_t count, DataType dtype,
                               ReduceOp op) {
  DeviceGuard guard(device_);
  CudaReduceInto(dst, src, count, dtype, op, stream_);
}

void CudaMemoryOps::ScaledCopy(void* dst, const void* src, size_t count, DataType dtype,
                               double factor) {
  if (factor == 1.0) {
    // A plain copy, through Copy for its memmove semantics.
    Copy(dst, src, count * DataTypeSize(dtype));
    return;
  }
  DeviceGuard guard(device_);
  CudaScaledCopy(dst, src, count, dtype, factor, stream_);
}

void CudaMemoryOps::Divide(void* dst, const void* src, size_t count, DataType dtype,
                           int64_t divisor) {
  DeviceGuard guard(device_);
  CudaDivide(dst, src, count, dtype, divisor, stream_);
}

std::shared_ptr<void> CudaMemoryOps::Allocate(size_t bytes) {
  DeviceGuard guard(device_);
  const std::pair<void*, size_t> block = pool_->Take(BlockSize(bytes));
  std::shared_ptr<Pool> pool = pool_;
  const size_t size = block.second;
  // If the control block cannot be allocated, shared_ptr calls the deleter: nothing leaks.
  return std::shared_ptr<void>(block.first, [pool, size](void* p) { pool->Give(p, size); });
}

void CudaMemoryOps::Synchronize() {
  DeviceGuard guard(device_);
  CheckCuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

void CudaMemoryOps::ReleaseCachedMemory() { pool_->ReleaseCached(); }

size_t CudaMemoryOps::cached_bytes() const {
  std::lock_guard<std::mutex> lock(pool_->mu);
  return pool_->cached_bytes;
}

}  // namespace fusecomm

#endif  // FUSECOMM_WITH_CUDA

// Where an operation's data lives and moves: the process set's MPI communicators on host
// memory, or a GPU's NCCL communicators on device memory. The executor's operations are written
// once against this; the device plane is in device_executor.cc (CUDA builds only).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "collectives/dispatch.h"
#include "transport/topology.h"
#include "engine/request.h"

namespace fusecomm {

// One tensor of a batched copy: count elements from src to dst.
struct CopyEntry {
  const void* src;
  void* dst;
  size_t count;
};

class DataPlane {
 public:
  virtual ~DataPlane() = default;
  // The communicators the data moves on (global() carries it; algorithms may use the rest).
  virtual Topology& topology() = 0;
  Comm& comm() { return *topology().global; }
  MemoryOps& memory() { return comm().memory(); }
  // The process set's host communicator, for small metadata (row counts, splits) in host memory.
  virtual Comm& host() = 0;
  // The algorithm that runs an all-reduce of `bytes` when `requested` (never kAuto) was asked for
  // or kAuto: on host memory the tuner's measured choice (collective: a new size class is raced
  // here), NCCL's own all-reduce on devices.
  virtual AllreduceAlgorithm Choose(AllreduceAlgorithm requested, size_t bytes,
                                    DataType dtype) = 0;
  // An output the engine allocates in this plane's memory.
  virtual std::shared_ptr<EngineBuffer> AllocateOutput(size_t bytes) = 0;
  // dst = src * factor for every entry (one kernel launch on a device).
  virtual void CopyBatch(const std::vector<CopyEntry>& entries, DataType dtype,
                         double factor) = 0;
  // The persistent fusion buffer, grown on demand.
  void* FusionBuffer(size_t bytes) {
    if (bytes > fusion_capacity_) {
      fusion_buffer_.reset();  // free the old one first: device memory is scarce
      fusion_capacity_ = 0;    // until the new one exists (the allocation may throw)
      fusion_buffer_ = memory().Allocate(bytes);
      fusion_capacity_ = bytes;
    }
    return fusion_buffer_.get();
  }

 private:
  std::shared_ptr<void> fusion_buffer_;
  size_t fusion_capacity_ = 0;
};

// Host memory over the process set's own communicators (MPI).
class HostPlane : public DataPlane {
 public:
  HostPlane(Topology& topology, const AllreduceSelector& selector)
      : topology_(topology), selector_(selector) {}
  Topology& topology() override { return topology_; }
  const AllreduceSelector& selector() const { return selector_; }
  Comm& host() override { return *topology_.global; }
  AllreduceAlgorithm Choose(AllreduceAlgorithm requested, size_t bytes, DataType dtype) override {
    return selector_.Choose(topology_, requested, bytes, dtype);
  }
  std::shared_ptr<EngineBuffer> AllocateOutput(size_t bytes) override {
    return std::make_shared<EngineBuffer>(bytes);
  }
  void CopyBatch(const std::vector<CopyEntry>& entries, DataType dtype, double factor) override {
    for (const CopyEntry& e : entries) memory().ScaledCopy(e.dst, e.src, e.count, dtype, factor);
  }

 private:
  Topology& topology_;
  const AllreduceSelector& selector_;
};

}  // namespace fusecomm

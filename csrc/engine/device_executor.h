// Device tensors (CUDA builds only): each operation runs on the plane of this process's GPU,
// created at the first device tensor of the process set (collectively: every rank reaches it at
// the same agreed response):
//   - NCCL: a communicator over the process set's ranks on a dedicated stream of the device, with
//     CudaMemoryOps on that stream (fusion copies are batched kernels);
//   - host staging over MPI: inputs copied to pinned host memory, the host path run unchanged,
//     results copied back. Used where NCCL cannot be: several ranks of the set on one GPU.
// FUSECOMM_GPU_TRANSPORT=auto|nccl|mpi picks (auto: nccl unless two ranks share a GPU, found by
// allgathering each rank's host name and GPU PCI bus id).
//
// Ordering: the engine's stream waits for the event the caller's stream recorded at submission
// (never a device-wide sync); after the operation the engine thread waits for an event on its
// stream, polling NCCL's asynchronous errors and the liveness monitor, then completes handles.
#pragma once

#if FUSECOMM_WITH_CUDA

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "transport/topology.h"
#include "engine/data_plane.h"
#include "engine/request.h"

namespace fusecomm {

class DeviceExecutor {
 public:
  // host_topology: the process set's MPI communicators (metadata, staging, unique-id broadcast).
  DeviceExecutor(Topology& host_topology, const AllreduceSelector& host_selector);
  ~DeviceExecutor();

  // Runs `group` (device requests of one planned group) by calling `run` with the plane of
  // their device and the requests as that plane sees them; returns when the results are in
  // place. Throws CollectiveError on any failure.
  void Run(const std::vector<Request*>& group,
           const std::function<void(DataPlane&, const std::vector<Request*>&)>& run);

 private:
  struct Context;
  Context& ContextFor(int device);
  void RunStaged(Context& context, const std::vector<Request*>& group,
                 const std::function<void(DataPlane&, const std::vector<Request*>&)>& run);

  Topology& host_topology_;
  HostPlane host_plane_;
  std::unique_ptr<Context> context_;
};

// The event a device request's engine stream waits for: recorded now on `stream` of `device`
// (called at submission, on the caller's thread).
std::shared_ptr<void> RecordSubmitEvent(int device, uintptr_t stream);

// For `fusecomm check-build`: CUDA runtime and driver versions ("13.0"; "none" without a
// driver) and NCCL's version (or why it was not found). Whether MPI is CUDA-aware is the MPI
// transport's to say (MpiCudaAwareness).
struct CudaBuildInfo {
  std::string runtime_version;
  std::string driver_version;
  std::string nccl_version;
};
CudaBuildInfo GetCudaBuildInfo();

}  // namespace fusecomm

#else

namespace fusecomm {
// CPU builds have no device plane (the executor refuses device tensors).
class DeviceExecutor {};
}  // namespace fusecomm

#endif  // FUSECOMM_WITH_CUDA

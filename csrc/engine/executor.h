// Runs the responses of a cycle on the data-plane communicator: fuses all-reduces into the
// persistent fusion buffer, runs every other operation on its own, and completes or fails
// each rank-local request's handle. Host tensors run on the process set's MPI communicators;
// device tensors on their GPU's plane (NCCL, or host staging over MPI: device_executor.h).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "transport/topology.h"
#include "engine/controller.h"
#include "engine/data_plane.h"
#include "engine/request.h"
#include "timeline/timeline.h"

namespace fusecomm {

class DeviceExecutor;

class Executor {
 public:
  // `release_name` is called for each finished request before its handle completes, so a caller
  // woken by the handle may reuse the name at once.
  Executor(Topology& topology, const AllreduceSelector& selector, size_t fusion_threshold,
           AllreduceAlgorithm default_algorithm,
           std::function<void(const std::string&)> release_name, Timeline* timeline);
  ~Executor();

  // `joined`: this rank has called join(), so responses it has no request for run with a
  // stand-in that contributes nothing (zeros, or no rows) and whose result is dropped.
  void Execute(const std::vector<Response>& responses, PendingTable& pending, bool joined);
  // Fails every pending request with `message` (shutdown, fatal transport error).
  void FailAll(PendingTable& pending, const std::string& message);

 private:
  // Runs one planned group (one request unless fused) on `plane`.
  void Run(DataPlane& plane, OpType type, const std::vector<Request*>& group);
  void RunAllreduceGroup(DataPlane& plane, const std::vector<Request*>& group);
  void RunAllgather(DataPlane& plane, Request& request);
  void RunBroadcast(DataPlane& plane, Request& request);
  void RunReducescatter(DataPlane& plane, Request& request);
  void RunAlltoall(DataPlane& plane, Request& request);
  // Final scaling of an all-reduce result, postscale and 1/size for Average: integers are
  // divided in place on `buf` (exactly); returns the factor the copy that follows applies.
  double PrepareFinish(DataPlane& plane, void* buf, size_t count, const TensorSpec& spec);
  void Finish(Request& request, const std::string& error);
  Request StandIn(const TensorSpec& spec);
  // Timeline: each request of `group` leaves its current activity and enters `activity`.
  void Enter(const std::vector<Request*>& group, const std::string& activity,
             const std::string& args_json = "");
  Timeline* timeline_;
  std::vector<std::shared_ptr<EngineBuffer>> stand_in_buffers_;

  HostPlane host_plane_;
  size_t fusion_threshold_;
  AllreduceAlgorithm default_algorithm_;
  std::function<void(const std::string&)> release_name_;
  // Device tensors' planes (CUDA builds; created at the first device tensor).
  std::unique_ptr<DeviceExecutor> device_;
};

}  // namespace fusecomm

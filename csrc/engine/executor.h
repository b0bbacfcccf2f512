// Runs the responses of a cycle on the data-plane communicator: fuses all-reduces into the
// persistent fusion buffer, runs every other operation on its own, and completes or fails
// each rank-local request's handle.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "collectives/topology.h"
#include "engine/controller.h"
#include "engine/request.h"
#include "timeline/timeline.h"

namespace fusecomm {

class Executor {
 public:
  // `release_name` is called for each finished request before its handle completes, so a caller
  // woken by the handle may reuse the name at once.
  Executor(Topology& topology, size_t fusion_threshold, AllreduceAlgorithm default_algorithm,
           std::function<void(const std::string&)> release_name, Timeline* timeline);

  // `joined`: this rank has called join(), so responses it has no request for run with a
  // stand-in that contributes nothing (zeros, or no rows) and whose result is dropped.
  void Execute(const std::vector<Response>& responses, PendingTable& pending, bool joined);
  // Fails every pending request with `message` (shutdown, fatal transport error).
  void FailAll(PendingTable& pending, const std::string& message);

 private:
  void RunAllreduceGroup(const std::vector<Request*>& group);
  void RunAllgather(Request& request);
  void RunBroadcast(Request& request);
  void RunReducescatter(Request& request);
  void RunAlltoall(Request& request);
  // Final scaling of an all-reduce result: postscale, and 1/size for Average.
  void FinishScale(void* dst, const void* src, size_t count, const TensorSpec& spec);
  void* FusionBuffer(size_t bytes);
  void Finish(Request& request, const std::string& error);
  Request StandIn(const TensorSpec& spec);
  // Timeline: each request of `group` leaves its current activity and enters `activity`.
  void Enter(const std::vector<Request*>& group, const std::string& activity,
             const std::string& args_json = "");
  Timeline* timeline_;
  std::vector<std::shared_ptr<HostBuffer>> stand_in_buffers_;

  Topology& topology_;
  Comm& comm_;
  size_t fusion_threshold_;
  AllreduceAlgorithm default_algorithm_;
  std::function<void(const std::string&)> release_name_;
  std::shared_ptr<void> fusion_buffer_;
  size_t fusion_capacity_ = 0;
};

}  // namespace fusecomm

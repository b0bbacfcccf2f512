#include "engine/mgwfbp_plan.h"

#include <algorithm>
#include <string>

#include "common/errors.h"

namespace fusecomm {

namespace {

// The paper's tau_c: when each gradient's all-reduce can start. A gradient merged into the next
// one has comm_seconds 0, so the merged all-reduce starts when the later member is ready.
std::vector<double> CommStarts(const std::vector<GradientTiming>& gradients,
                               const std::vector<double>& comm_seconds) {
  std::vector<double> start(gradients.size());
  for (size_t i = 0; i < gradients.size(); ++i) {
    start[i] = i == 0 ? gradients[0].ready_seconds
                      : std::max(start[i - 1] + comm_seconds[i - 1], gradients[i].ready_seconds);
  }
  return start;
}

}  // namespace

std::vector<std::vector<size_t>> PlanMergedGradients(const std::vector<GradientTiming>& gradients,
                                                     double startup_seconds,
                                                     const AllreduceSeconds& allreduce_seconds) {
  if (!(startup_seconds >= 0)) {
    throw InvalidArgument("MG-WFBP start-up cost must be >= 0, got " +
                          std::to_string(startup_seconds));
  }
  const size_t n = gradients.size();
  for (size_t i = 1; i < n; ++i) {
    if (gradients[i].ready_seconds < gradients[i - 1].ready_seconds) {
      throw InvalidArgument("MG-WFBP needs gradients in the order they become ready (gradient " +
                            std::to_string(i) + " is ready before gradient " +
                            std::to_string(i - 1) + ")");
    }
  }
  std::vector<std::vector<size_t>> groups;
  if (n == 0) return groups;
  std::vector<size_t> bytes(n);
  std::vector<double> comm(n);
  for (size_t i = 0; i < n; ++i) {
    bytes[i] = gradients[i].bytes;
    comm[i] = allreduce_seconds(bytes[i]);
  }
  std::vector<double> start = CommStarts(gradients, comm);
  std::vector<size_t> open;
  // Algorithm 1, walking the layers in the order they become ready: merge gradient i into the
  // next one when the next is ready before i's all-reduce would end, and either i's all-reduce
  // could not have started by then anyway (the link is busy: merging costs nothing and saves a
  // start-up), or the wait for it is shorter than the start-up it saves.
  for (size_t i = 0; i + 1 < n; ++i) {
    open.push_back(i);
    const double next_ready = gradients[i + 1].ready_seconds;
    bool merge = false;
    if (next_ready < start[i] + comm[i]) {
      merge = start[i] > next_ready || next_ready - start[i] < startup_seconds;
    }
    if (merge) {
      bytes[i + 1] += bytes[i];
      bytes[i] = 0;
      comm[i] = 0;
      comm[i + 1] = allreduce_seconds(bytes[i + 1]);
      start = CommStarts(gradients, comm);
    } else {
      groups.push_back(std::move(open));
      open.clear();
    }
  }
  open.push_back(n - 1);
  groups.push_back(std::move(open));
  return groups;
}

double PredictedStepEnd(const std::vector<std::vector<size_t>>& groups,
                        const std::vector<GradientTiming>& gradients,
                        const AllreduceSeconds& allreduce_seconds) {
  double end = 0;
  for (const auto& group : groups) {
    size_t bytes = 0;
    double ready = 0;
    for (size_t i : group) {
      bytes += gradients.at(i).bytes;
      ready = std::max(ready, gradients[i].ready_seconds);
    }
    end = std::max(end, ready) + allreduce_seconds(bytes);
  }
  return end;
}

}  // namespace fusecomm

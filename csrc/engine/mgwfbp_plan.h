// Merged-gradient wait-free backpropagation (MG-WFBP; S. Shi, X. Chu and B. Li, "MG-WFBP:
// Efficient Data Communication for Distributed Synchronous SGD Algorithms", INFOCOM 2019,
// Algorithm 1): which consecutive gradients of a backward pass to all-reduce together, from the
// time each becomes ready and an all-reduce cost t_c(bytes) = start-up + per-byte part.
// Pure functions: the engine feeds them measured timings (fusion_planner.h).
#pragma once

#include <cstddef>
#include <functional>
#include <vector>

namespace fusecomm {

// One gradient of a step, listed in the order backward makes them ready (the paper's layer L
// first): seconds since the step's first gradient became ready, and its size.
struct GradientTiming {
  double ready_seconds = 0;
  size_t bytes = 0;
};

// Seconds one all-reduce of `bytes` takes (the calibrated cost model's prediction).
using AllreduceSeconds = std::function<double(size_t bytes)>;

// Groups of consecutive indices into `gradients` (ready times must not decrease), each group
// one all-reduce. `startup_seconds` is the start-up cost a merge saves (the paper's a).
// Throws InvalidArgument for decreasing ready times or a negative start-up cost.
std::vector<std::vector<size_t>> PlanMergedGradients(const std::vector<GradientTiming>& gradients,
                                                     double startup_seconds,
                                                     const AllreduceSeconds& allreduce_seconds);

// The model's time at which the last all-reduce of `groups` ends, all-reduces running one at a
// time, each starting when its last member is ready and the previous one has ended.
double PredictedStepEnd(const std::vector<std::vector<size_t>>& groups,
                        const std::vector<GradientTiming>& gradients,
                        const AllreduceSeconds& allreduce_seconds);

}  // namespace fusecomm

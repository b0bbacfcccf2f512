// Which ready responses run as one collective. Threshold fusion packs all-reduces that agree on
// everything but name and shape together up to the fusion threshold (Horovod's tensor fusion);
// layer-wise runs one all-reduce per tensor; MG-WFBP learns the training step's gradients and
// when each becomes ready, and holds gradients back to merge them by its plan (mgwfbp_plan.h).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/config.h"
#include "engine/mgwfbp_plan.h"
#include "engine/request.h"

namespace fusecomm {

// Groups of indices into `responses`, in the order of each group's first member. Error
// responses and non-all-reduce operations form groups of one.
std::vector<std::vector<size_t>> PlanFusion(const std::vector<Response>& responses,
                                            size_t threshold_bytes);

// The plan in force, for inspection (fusecomm._core.fusion_plan).
struct FusionPlanState {
  std::string kind;                               // threshold, layerwise or mgwfbp
  std::vector<std::vector<std::string>> buckets;  // mgwfbp: merged gradients, first ready first
  int plans_made = 0;                             // learned once, then once per re-plan
  uint64_t steps_seen = 0;                        // training steps recognised so far
};

// Decides, identically on every rank of a process set, what runs in each cycle. It sees only
// the cycle's agreed responses (same names, same order everywhere), so its step boundaries and
// its holds agree across ranks; the ready times it learns differ per rank and are agreed by an
// element-wise maximum over the ranks before anything is planned from them.
class FusionScheduler {
 public:
  using Clock = std::chrono::steady_clock;
  // Element-wise maximum over the set's ranks: a collective, called on every rank at once.
  using AllreduceMax = std::function<void(std::vector<double>&)>;

  // MG-WFBP: steps measured (after one warm-up step) before the first plan; steps between
  // drift checks; mean change of the ready times, relative to the step's span, that re-plans
  // (the median step of each rank, the latest rank's: AgreedOffsets).
  static constexpr int kLearnSteps = 3;
  static constexpr int kDriftCheckSteps = 20;
  static constexpr double kReplanDrift = 0.25;

  // `ranks`: the process set's size (each rank's submissions wake cycles).
  FusionScheduler(FusionPlan kind, size_t threshold_bytes, double cycle_time_ms, int ranks,
                  AllreduceSeconds allreduce_seconds, AllreduceMax agree);

  struct Ready {
    Response response;
    Request request;  // its `submitted` is the gradient's ready time on this rank
  };
  struct Batch {
    std::vector<Response> responses;
    std::vector<Request> requests;            // this rank's request for each response
    std::vector<std::vector<size_t>> groups;  // indices into both, one collective each
  };
  // Called once per negotiation cycle with that cycle's responses (possibly none). Returns what
  // runs now; the rest is held for a bucket's missing members, at most a bounded number of
  // cycles (each cycle ends within the cycle time), so a gradient that does not come in some
  // step delays its bucket but never stalls it.
  Batch Schedule(std::vector<Ready> ready);
  bool holding() const { return !held_.empty(); }
  // The held requests (shutdown fails them).
  std::vector<Request> TakeHeld();
  FusionPlanState State() const;

 private:
  struct StepTensor {
    std::string name;
    size_t bytes;
    Clock::time_point submitted;
  };
  struct Held {
    Response response;
    Request request;
    uint64_t since_cycle;
  };
  // Every tensor of a step, sorted by name: the key that tells one step's composition.
  using Signature = std::vector<std::pair<std::string, size_t>>;

  void Observe(const Response& response, Clock::time_point submitted);
  void CloseStep();
  // The measured steps' ready offsets, agreed over the ranks (collective).
  std::vector<double> AgreedOffsets();
  void MakePlan(const std::vector<double>& offsets);
  void DropPlan();
  void Publish();
  double StartupSeconds() const;

  const FusionPlan kind_;
  const size_t threshold_bytes_;
  const double cycle_time_ms_;
  const int ranks_;
  const AllreduceSeconds allreduce_seconds_;
  const AllreduceMax agree_;
  uint64_t cycle_ = 0;

  // The step being recorded, in agreed order, and the names it holds.
  std::vector<StepTensor> step_;
  std::unordered_set<std::string> step_names_;
  uint64_t steps_seen_ = 0;
  Signature signature_;     // the composition being learned or planned for
  int same_steps_ = 0;      // consecutive steps with that composition
  // Measured steps since the last plan or check: per signature entry, seconds after the
  // step's first gradient.
  std::vector<std::vector<double>> step_offsets_;

  // The plan: buckets of names, first ready first, each with the most cycles it is held.
  bool planned_ = false;
  std::vector<std::vector<std::string>> buckets_;
  std::vector<uint64_t> hold_limit_cycles_;
  std::unordered_map<std::string, size_t> bucket_of_;
  std::vector<double> planned_offsets_;  // per signature entry
  double planned_span_ = 0;
  bool plan_changed_ = false;
  int plans_made_ = 0;
  std::vector<Held> held_;

  mutable std::mutex state_mutex_;  // guards state_, read from the caller's threads
  FusionPlanState state_;
};

}  // namespace fusecomm

// Which all-reduce algorithm runs, decided in one place (the selector), and running it.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "collectives/auto_tuner.h"
#include "collectives/cost_model.h"
#include "common/types.h"
#include "transport/topology.h"

namespace fusecomm {

// Resolves `auto` for one process set: the cost model measured at start-up and, unless
// FUSECOMM_AUTOTUNE=0, a tuner that races the model's shortlist per size class at first use.
// The Topology it is given carries the communicators; the choice is made only here.
class AllreduceSelector {
 public:
  AllreduceSelector() = default;
  // tuner: null lets the model alone choose.
  AllreduceSelector(CostModel model, std::shared_ptr<AutoTuner> tuner)
      : model_(model), tuner_(std::move(tuner)) {}

  const CostModel& cost_model() const { return model_; }
  // What the tuner has measured so far (empty without one).
  std::vector<TunedClass> TunedClasses() const;

  // The algorithm an all-reduce of `bytes` of `dtype` runs when `requested` was asked for:
  // `requested` itself unless it is kAuto. Collective over topo.global for kAuto with a tuner
  // (a size class seen for the first time is measured now): every rank calls it for the same
  // buffer, as the executor does once per fused buffer.
  AllreduceAlgorithm Choose(const Topology& topo, AllreduceAlgorithm requested, size_t bytes,
                            DataType dtype) const;
  // What kAuto would run for `bytes` as known now (measured or predicted). Not collective.
  AllreduceAlgorithm Preview(const Topology& topo, size_t bytes, DataType dtype) const;
  // The model's predicted seconds for `algorithm` (kAuto: what Preview picks for float32).
  double PredictSeconds(const Topology& topo, AllreduceAlgorithm algorithm, size_t bytes) const;

 private:
  CostModel model_;
  std::shared_ptr<AutoTuner> tuner_;
};

// In place on `buf`; `algorithm` is a concrete one (the selector resolved kAuto; kNative falls
// back to the ring where the transport's own reduction cannot do `op` on `dtype`); `op` is never
// kAverage. Returns the algorithm that ran.
AllreduceAlgorithm RunAllreduce(const Topology& topo, AllreduceAlgorithm algorithm, void* buf,
                                size_t count, DataType dtype, ReduceOp op);

}  // namespace fusecomm

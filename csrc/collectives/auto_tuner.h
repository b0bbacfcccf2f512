// `auto` by measurement. The cost model ranks the algorithms well where they differ by a lot
// (a 64 MiB buffer on a slow network), but it leaves out what it cannot see: the transport's
// protocol switches (MPI_Allreduce turning slow above its eager limit), ranks sharing cores,
// per-message overheads of the engine. So the first time a size class (a power of two) of a
// dtype is all-reduced with `auto`, the candidates the model does not rule out are timed on a
// scratch buffer of that size, interleaved, and the fastest by the slowest rank's median is
// what `auto` runs for that class from then on.
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "common/types.h"

namespace fusecomm {

struct CostModel;
struct Topology;

// One measured size class: every candidate's time and the winner.
struct TunedClass {
  DataType dtype;
  size_t bytes;  // the size that was timed (the first buffer seen in its class)
  std::vector<std::pair<AllreduceAlgorithm, double>> seconds;  // slowest rank's median
  AllreduceAlgorithm chosen;
};

class AutoTuner {
 public:
  // Collective over topo.global: every rank calls it for the same (bytes, dtype) in the same
  // order, as the executor does for every fused buffer. Measures the class if it is new;
  // `model` shortlists the candidates (and alone decides for one rank or an empty buffer).
  AllreduceAlgorithm Choose(const Topology& topo, const CostModel& model, size_t bytes,
                            DataType dtype);
  // Not collective (any thread): the measured choice if the class has been measured.
  std::optional<AllreduceAlgorithm> Lookup(size_t bytes, DataType dtype) const;
  std::vector<TunedClass> Classes() const;

  // Candidates predicted within this factor of the model's best (or within kShortlistSeconds
  // of it: the model leaves out fixed per-call costs that swamp small messages) are timed.
  static constexpr double kShortlistFactor = 2.0;
  static constexpr double kShortlistSeconds = 100e-6;

 private:
  TunedClass Measure(const Topology& topo, const CostModel& model, size_t bytes,
                     DataType dtype) const;

  mutable std::mutex mutex_;
  std::map<std::pair<DataType, int>, TunedClass> classes_;  // (dtype, floor(log2 bytes))
};

}  // namespace fusecomm

#include "collectives/auto_tuner.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>

#include "collectives/cost_model.h"
#include "collectives/dispatch.h"
#include "transport/topology.h"
#include "common/logging.h"

namespace fusecomm {

namespace {

// A class's measurement takes about this long (at least 5 rounds, at most 31): a few ms for
// small messages, where the rounds are many and the noise is large; 5 rounds for large ones.
constexpr double kBudgetSeconds = 0.05;
constexpr int kMinRounds = 5, kMaxRounds = 31;
// The model leaves out the engine's fixed per-call cost; a small prediction is at least this.
constexpr double kFloorSeconds = 30e-6;

int SizeClass(size_t bytes) {  // floor(log2(bytes)), bytes > 0
  int k = -1;
  for (; bytes != 0; bytes >>= 1) ++k;
  return k;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

AllreduceAlgorithm AutoTuner::Choose(const Topology& topo, const CostModel& model, size_t bytes,
                                     DataType dtype) {
  if (topo.global->size() == 1 || bytes < DataTypeSize(dtype)) {
    return ChooseByCost(model, topo, bytes);
  }
  if (auto known = Lookup(bytes, dtype)) return *known;
  TunedClass measured = Measure(topo, model, bytes, dtype);
  std::lock_guard<std::mutex> lock(mutex_);
  classes_[{dtype, SizeClass(bytes)}] = measured;
  return measured.chosen;
}

std::optional<AllreduceAlgorithm> AutoTuner::Lookup(size_t bytes, DataType dtype) const {
  if (bytes == 0) return std::nullopt;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = classes_.find({dtype, SizeClass(bytes)});
  if (it == classes_.end()) return std::nullopt;
  return it->second.chosen;
}

std::vector<TunedClass> AutoTuner::Classes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<TunedClass> out;
  for (const auto& entry : classes_) out.push_back(entry.second);
  return out;
}

TunedClass AutoTuner::Measure(const Topology& topo, const CostModel& model, size_t bytes,
                              DataType dtype) const {
  Comm& comm = *topo.global;
  const std::vector<AllreduceAlgorithm> candidates = AutoCandidates(topo);
  std::vector<double> predicted;
  for (AllreduceAlgorithm a : candidates) predicted.push_back(model.Predict(a, topo, bytes));
  const double best_predicted = *std::min_element(predicted.begin(), predicted.end());
  std::vector<AllreduceAlgorithm> shortlist;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (predicted[i] <= kShortlistFactor * best_predicted ||
        predicted[i] <= best_predicted + kShortlistSeconds) {
      shortlist.push_back(candidates[i]);
    }
  }
  const int n = static_cast<int>(shortlist.size());
  if (n == 1) return {dtype, bytes, {}, shortlist[0]};  // nothing to race
  const int rounds = std::clamp(
      static_cast<int>(kBudgetSeconds / (n * std::max(best_predicted, kFloorSeconds))),
      kMinRounds, kMaxRounds);

  // A scratch buffer of zeros: sums of zeros stay zeros, so no value ever turns slow (denormal)
  // or non-finite however many rounds run.
  const size_t count = bytes / DataTypeSize(dtype);
  const size_t scratch_bytes = count * DataTypeSize(dtype);
  std::shared_ptr<void> scratch = comm.memory().AllocateZeroed(scratch_bytes);
  const ReduceOp op = ReduceOpSupported(dtype, ReduceOp::kSum) ? ReduceOp::kSum : ReduceOp::kMax;

  // Interleaved in an order shuffled every round, so that a burst of noise lands on all
  // candidates alike; the same seed on every rank, because each run is a collective. Each run
  // starts from a barrier: otherwise a run's time depends on how skewed its predecessor left
  // the ranks. The first round warms the transport up and is dropped.
  std::mt19937 rng(static_cast<uint32_t>(bytes));
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::vector<std::vector<double>> samples(n);
  for (int round = 0; round <= rounds; ++round) {
    std::shuffle(order.begin(), order.end(), rng);
    for (int k : order) {
      comm.Barrier();
      const auto start = std::chrono::steady_clock::now();
      RunAllreduce(topo, shortlist[k], scratch.get(), count, dtype, op);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (round > 0) samples[k].push_back(seconds);
    }
  }
  std::vector<double> medians(n);
  for (int k = 0; k < n; ++k) medians[k] = Median(samples[k]);
  // The slowest rank's median decides, and every rank then holds the same numbers.
  comm.NativeAllreduce(medians.data(), medians.size(), DataType::kFloat64, ReduceOp::kMax);

  TunedClass result{dtype, bytes, {}, shortlist[0]};
  double fastest = std::numeric_limits<double>::infinity();
  for (int k = 0; k < n; ++k) {
    result.seconds.emplace_back(shortlist[k], medians[k]);
    if (medians[k] < fastest) {
      fastest = medians[k];
      result.chosen = shortlist[k];
    }
  }
  if (comm.rank() == 0) {
    std::ostringstream line;
    for (const auto& [algorithm, s] : result.seconds) {
      line << " " << AllreduceAlgorithmName(algorithm) << "=" << s * 1e6 << "us";
    }
    FUSECOMM_LOG(kInfo, "auto measured " << bytes << " B of " << DataTypeName(dtype) << ":"
                                         << line.str() << " -> "
                                         << AllreduceAlgorithmName(result.chosen));
  }
  return result;
}

}  // namespace fusecomm

#include "collectives/cost_model.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <sstream>
#include <vector>

#include "collectives/allreduce.h"
#include "collectives/topology.h"

namespace fusecomm {

namespace {

constexpr size_t kSmall = 8, kMid = 64 << 10, kLarge = 1 << 20;

AlgorithmCost Busiest(AlgorithmCost a, AlgorithmCost b) {
  return a.steps * 1e-6 + a.bytes_sent * 1e-9 >= b.steps * 1e-6 + b.bytes_sent * 1e-9 ? a : b;
}

// Steps and bytes of the busiest rank (the first and the last rank bound it: the last carries
// the fold of non-power-of-two and partial-grid schemes, the first the node leader's work).
AlgorithmCost CostOf(AllreduceAlgorithm algorithm, const Topology& topo, size_t count,
                     size_t elem) {
  const int p = topo.global->size();
  switch (algorithm) {
    case AllreduceAlgorithm::kRing:
      return Busiest(RingAllreduceCost(p, 0, count, elem), RingAllreduceCost(p, p - 1, count, elem));
    case AllreduceAlgorithm::kRecursiveHalvingDoubling:
      return Busiest(RecursiveHalvingDoublingAllreduceCost(p, 0, count, elem),
                     RecursiveHalvingDoublingAllreduceCost(p, p - 1, count, elem));
    case AllreduceAlgorithm::kHierarchical:
      return HierarchicalAllreduceCost(topo.node_sizes, 0, 0, count, elem);
    case AllreduceAlgorithm::kHierarchicalScatter:
      return HierarchicalScatterAllreduceCost(topo.node_sizes, 0, 0, 0, count, elem);
    case AllreduceAlgorithm::kTorus2D:
      return Busiest(Torus2DAllreduceCost(p, topo.torus_x, 0, count, elem),
                     Torus2DAllreduceCost(p, topo.torus_x, p - 1, count, elem));
    default:
      return {};
  }
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename Fn>
double TimeIt(int reps, Fn fn) {
  std::vector<double> samples;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    samples.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return Median(samples);
}

}  // namespace

double CostModel::Predict(AllreduceAlgorithm algorithm, const Topology& topo, size_t bytes) const {
  if (algorithm == AllreduceAlgorithm::kNative) {
    if (bytes <= kMid) {
      return native_small + (native_mid - native_small) * double(bytes - std::min(bytes, kSmall)) /
                                double(kMid - kSmall);
    }
    return native_mid + (native_large - native_mid) * double(bytes - kMid) / double(kLarge - kMid);
  }
  // Costs are in elements; evaluate on bytes (1-byte elements) so the model is dtype-free.
  AlgorithmCost cost = CostOf(algorithm, topo, bytes, 1);
  // About half of what a rank sends it has also reduced (reduce-scatter half of the schemes).
  return cost.steps * alpha + cost.bytes_sent * beta + 0.5 * cost.bytes_sent * gamma;
}

AllreduceAlgorithm ChooseByCost(const CostModel& model, const Topology& topo, size_t bytes) {
  if (topo.global->size() == 1) return AllreduceAlgorithm::kNative;
  std::vector<AllreduceAlgorithm> candidates = {
      AllreduceAlgorithm::kNative, AllreduceAlgorithm::kRing,
      AllreduceAlgorithm::kRecursiveHalvingDoubling, AllreduceAlgorithm::kTorus2D};
  if (topo.node_sizes.size() > 1) {
    candidates.push_back(AllreduceAlgorithm::kHierarchical);
    if (topo.homogeneous) candidates.push_back(AllreduceAlgorithm::kHierarchicalScatter);
  }
  AllreduceAlgorithm best = candidates[0];
  double best_time = model.Predict(best, topo, bytes);
  for (AllreduceAlgorithm a : candidates) {
    double t = model.Predict(a, topo, bytes);
    if (t < best_time) {
      best = a;
      best_time = t;
    }
  }
  return best;
}

std::string CostModel::ToText() const {
  std::ostringstream out;
  out.precision(6);
  out << "alpha " << alpha << "\nbeta " << beta << "\ngamma " << gamma << "\nnative_small "
      << native_small << "\nnative_mid " << native_mid << "\nnative_large " << native_large
      << "\n";
  return out.str();
}

bool CostModel::FromText(const std::string& text, CostModel* out) {
  std::istringstream in(text);
  std::string key;
  double value;
  int seen = 0;
  CostModel m;
  while (in >> key >> value) {
    if (key == "alpha") m.alpha = value;
    else if (key == "beta") m.beta = value;
    else if (key == "gamma") m.gamma = value;
    else if (key == "native_small") m.native_small = value;
    else if (key == "native_mid") m.native_mid = value;
    else if (key == "native_large") m.native_large = value;
    else continue;
    ++seen;
  }
  if (seen != 6) return false;
  m.calibrated = true;
  *out = m;
  return true;
}

CostModel CalibrateCostModel(const Topology& topo) {
  Comm& comm = *topo.global;
  CostModel model;
  const int p = comm.size();
  if (p == 1) return model;
  MemoryOps& mem = comm.memory();
  auto send = mem.Allocate(kLarge), recv = mem.Allocate(kLarge);
  std::memset(send.get(), 0, kLarge);
  const int right = (comm.rank() + 1) % p, left = (comm.rank() + p - 1) % p;
  auto exchange = [&](size_t bytes) {
    comm.SendRecv(send.get(), bytes, right, recv.get(), bytes, left, /*tag=*/9001);
  };
  const int reps = 7;
  exchange(kLarge);  // warm up the transport's buffers
  double t_small = TimeIt(reps, [&] { exchange(kSmall); });
  double t_large = TimeIt(reps, [&] { exchange(kLarge); });
  auto native = [&](size_t bytes) {
    return TimeIt(reps, [&] {
      comm.NativeAllreduce(send.get(), bytes / 4, DataType::kFloat32, ReduceOp::kSum);
    });
  };
  comm.NativeAllreduce(send.get(), kLarge / 4, DataType::kFloat32, ReduceOp::kSum);
  double values[6] = {
      t_small,
      std::max(0.0, (t_large - t_small) / double(kLarge - kSmall)),
      TimeIt(reps, [&] {
        mem.ReduceInto(recv.get(), send.get(), kLarge / 4, DataType::kFloat32, ReduceOp::kSum);
      }) / double(kLarge),
      native(kSmall), native(kMid), native(kLarge)};
  // The slowest rank sets the pace; agreeing on it makes every rank choose alike.
  comm.NativeAllreduce(values, 6, DataType::kFloat64, ReduceOp::kMax);
  model.alpha = values[0];
  model.beta = values[1];
  model.gamma = values[2];
  model.native_small = values[3];
  model.native_mid = values[4];
  model.native_large = values[5];
  model.calibrated = true;
  return model;
}

}  // namespace fusecomm

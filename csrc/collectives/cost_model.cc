#include "collectives/cost_model.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <sstream>
#include <utility>
#include <vector>

#include "collectives/allreduce.h"
#include "transport/shared_segment.h"
#include "transport/topology.h"

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
    case AllreduceAlgorithm::kSharedMemory: {
      const SharedSegment* segment = topo.global->shared_segment();
      return segment ? SharedMemoryAllreduceCost(p, count, elem, segment->slot_bytes(),
                                                 segment->single_copy_min_bytes())
                     : RingAllreduceCost(p, 0, count, elem);
    }
    default:
      return {};
  }
}

AlgorithmCost Minus(AlgorithmCost a, AlgorithmCost b) {
  return {a.steps - std::min(a.steps, b.steps), a.bytes_sent - std::min(a.bytes_sent, b.bytes_sent)};
}

// The busiest rank's cost divided by the links it uses. Nodes are consecutive ranks, so a ring
// or exchange over all ranks crosses nodes whenever there are several, and a pipelined schedule
// runs at the pace of its slowest link: all of it is charged to the inter-node link. The
// two-level schemes pay inter-node prices only for their cross-node phase.
struct LinkCost {
  AlgorithmCost intra, inter, ring;  // ring: a schedule over all ranks in one ring
};

LinkCost SplitByLink(AllreduceAlgorithm algorithm, const Topology& topo, size_t bytes) {
  const AlgorithmCost total = CostOf(algorithm, topo, bytes, 1);
  const int nodes = static_cast<int>(topo.node_sizes.size());
  const bool global_ring = algorithm == AllreduceAlgorithm::kRing ||
                           (algorithm == AllreduceAlgorithm::kHierarchicalScatter &&
                            !topo.homogeneous) ||
                           (algorithm == AllreduceAlgorithm::kTorus2D &&
                            topo.torus_x > topo.global->size());
  if (global_ring) return {{}, {}, total};
  // Virtual nodes (FUSECOMM_LOCAL_SIZE) aside, a shared segment means one node: no link at all.
  if (nodes <= 1 || algorithm == AllreduceAlgorithm::kSharedMemory) return {total, {}, {}};
  AlgorithmCost inter;
  switch (algorithm) {
    case AllreduceAlgorithm::kHierarchical:
      inter = RingAllreduceCost(nodes, 0, bytes, 1);
      break;
    case AllreduceAlgorithm::kHierarchicalScatter:
      inter = RingAllreduceCost(nodes, 0, EvenBlockCounts(bytes, topo.node_sizes[0])[0], 1);
      break;
    case AllreduceAlgorithm::kTorus2D: {
      const int p = topo.global->size(), x = topo.torus_x;
      // Rows are x consecutive ranks: inside a node when every node holds whole rows.
      bool rows_in_nodes = true;
      for (int k : topo.node_sizes) rows_in_nodes = rows_in_nodes && k % x == 0;
      if (!rows_in_nodes) return {{}, total, {}};
      inter = RingAllreduceCost(p / x, 0, EvenBlockCounts(bytes, x)[0], 1);
      break;
    }
    default:  // rhd: its widest exchanges cross nodes, every rank at once
      return {{}, total, {}};
  }
  return {Minus(total, inter), inter, {}};
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
  const LinkCost cost = SplitByLink(algorithm, topo, bytes);
  const double sent = double(cost.intra.bytes_sent) + double(cost.inter.bytes_sent) +
                      double(cost.ring.bytes_sent);
  // About half of what a rank sends it has also reduced (reduce-scatter half of the schemes).
  return cost.intra.steps * alpha_intra + cost.intra.bytes_sent * beta_intra +
         cost.inter.steps * alpha_inter + cost.inter.bytes_sent * beta_inter +
         cost.ring.steps * alpha_ring + cost.ring.bytes_sent * beta_ring + 0.5 * sent * gamma;
}

std::vector<AllreduceAlgorithm> AutoCandidates(const Topology& topo) {
  std::vector<AllreduceAlgorithm> candidates = {
      AllreduceAlgorithm::kNative, AllreduceAlgorithm::kRing,
      AllreduceAlgorithm::kRecursiveHalvingDoubling, AllreduceAlgorithm::kTorus2D};
  // Virtual nodes (FUSECOMM_LOCAL_SIZE) stand for several machines: no shared memory for auto
  // there, though an explicit algorithm="shm" still runs.
  if (topo.global->shared_segment() != nullptr && topo.node_sizes.size() <= 1) {
    candidates.push_back(AllreduceAlgorithm::kSharedMemory);
  }
  if (topo.node_sizes.size() > 1) {
    candidates.push_back(AllreduceAlgorithm::kHierarchical);
    if (topo.homogeneous) candidates.push_back(AllreduceAlgorithm::kHierarchicalScatter);
  }
  return candidates;
}

AllreduceAlgorithm ChooseByCost(const CostModel& model, const Topology& topo, size_t bytes) {
  if (topo.global->size() == 1) return AllreduceAlgorithm::kNative;
  const std::vector<AllreduceAlgorithm> candidates = AutoCandidates(topo);
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

namespace {

// The parameters by name, for the cache file and `fusecomm bench calibrate`.
std::vector<std::pair<const char*, double*>> Fields(CostModel& m) {
  return {{"alpha_intra", &m.alpha_intra}, {"beta_intra", &m.beta_intra},
          {"alpha_inter", &m.alpha_inter}, {"beta_inter", &m.beta_inter},
          {"alpha_ring", &m.alpha_ring},   {"beta_ring", &m.beta_ring},
          {"gamma", &m.gamma},             {"native_small", &m.native_small},
          {"native_mid", &m.native_mid},   {"native_large", &m.native_large}};
}

}  // namespace

std::string CostModel::ToText() const {
  std::ostringstream out;
  out.precision(6);
  CostModel copy = *this;
  for (const auto& [key, value] : Fields(copy)) out << key << " " << *value << "\n";
  return out.str();
}

bool CostModel::FromText(const std::string& text, CostModel* out) {
  std::istringstream in(text);
  std::string key;
  double value;
  CostModel m;
  auto fields = Fields(m);
  size_t seen = 0;
  while (in >> key >> value) {
    for (auto& [name, slot] : fields) {
      if (key == name) {
        *slot = value;
        ++seen;
      }
    }
  }
  if (seen != fields.size()) return false;  // an older or partial file: calibrate afresh
  m.calibrated = true;
  *out = m;
  return true;
}

namespace {

// α and β of one link class from a ring exchange of 8 B and 1 MiB on `comm` (every rank sends
// right and receives from the left at once, as the ring schedules do). {-1, -1} when the comm
// has one rank: nothing to measure here.
std::pair<double, double> MeasureLink(Comm* comm, void* send, void* recv, int reps) {
  if (comm == nullptr || comm->size() < 2) return {-1.0, -1.0};
  const int p = comm->size();
  const int right = (comm->rank() + 1) % p, left = (comm->rank() + p - 1) % p;
  auto exchange = [&](size_t bytes) {
    comm->SendRecv(send, bytes, right, recv, bytes, left, /*tag=*/9001);
  };
  exchange(kLarge);  // warm up the transport's buffers
  const double t_small = TimeIt(reps, [&] { exchange(kSmall); });
  const double t_large = TimeIt(reps, [&] { exchange(kLarge); });
  return {t_small, std::max(0.0, (t_large - t_small) / double(kLarge - kSmall))};
}

}  // namespace

CostModel CalibrateCostModel(const Topology& topo) {
  Comm& comm = *topo.global;
  CostModel model;
  const int p = comm.size();
  if (p == 1) return model;
  MemoryOps& mem = comm.memory();
  auto send = mem.Allocate(kLarge), recv = mem.Allocate(kLarge);
  std::memset(send.get(), 0, kLarge);
  const int reps = 7;
  // Every node measures its own links at once, and every cross-node ring likewise: the load the
  // two-level schemes put on them. With one node, or one rank per node, the global ring stands
  // in for the class that has no link of its own.
  const bool one_node = topo.node_sizes.size() <= 1;
  const auto intra = MeasureLink(one_node ? &comm : topo.local.get(), send.get(), recv.get(), reps);
  const auto inter = MeasureLink(one_node ? nullptr : topo.cross.get(), send.get(), recv.get(), reps);
  const auto ring = MeasureLink(&comm, send.get(), recv.get(), reps);
  auto native = [&](size_t bytes) {
    return TimeIt(reps, [&] {
      comm.NativeAllreduce(send.get(), bytes / 4, DataType::kFloat32, ReduceOp::kSum);
    });
  };
  comm.NativeAllreduce(send.get(), kLarge / 4, DataType::kFloat32, ReduceOp::kSum);
  double values[10] = {
      intra.first, intra.second, inter.first, inter.second, ring.first, ring.second,
      TimeIt(reps, [&] {
        mem.ReduceInto(recv.get(), send.get(), kLarge / 4, DataType::kFloat32, ReduceOp::kSum);
      }) / double(kLarge),
      native(kSmall), native(kMid), native(kLarge)};
  // The slowest rank sets the pace; agreeing on it makes every rank choose alike.
  comm.NativeAllreduce(values, 10, DataType::kFloat64, ReduceOp::kMax);
  // A class no rank could measure (-1 everywhere) takes the other's values.
  for (int i = 0; i < 2; ++i) {
    if (values[i] < 0) values[i] = values[i + 2];
    if (values[i + 2] < 0) values[i + 2] = values[i];
  }
  model.alpha_intra = values[0];
  model.beta_intra = values[1];
  model.alpha_inter = values[2];
  model.beta_inter = values[3];
  model.alpha_ring = values[4];
  model.beta_ring = values[5];
  model.gamma = values[6];
  model.native_small = values[7];
  model.native_mid = values[8];
  model.native_large = values[9];
  model.calibrated = true;
  return model;
}

}  // namespace fusecomm

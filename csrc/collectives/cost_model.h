// The α-β(-γ) cost model that `auto` chooses an all-reduce algorithm with, and the short
// calibration that measures its parameters on the job's own ranks at init.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "common/types.h"

namespace fusecomm {

struct Topology;

struct CostModel {
  bool calibrated = false;
  // Link classes: inside a node (measured on topo.local, every node at once) and between nodes
  // (on topo.cross, every cross-node ring at once). On one machine with virtual nodes both are
  // shared memory and come out alike.
  double alpha_intra = 5e-6;  // seconds per message (point-to-point)
  double beta_intra = 2e-10;  // seconds per byte sent
  double alpha_inter = 5e-6;
  double beta_inter = 2e-10;
  // A ring over all ranks (measured on topo.global): one flow per node crosses each node
  // boundary, where the cross-node rings above measure every local rank's flow at once. The
  // one-level ring pays these.
  double alpha_ring = 5e-6;
  double beta_ring = 2e-10;
  double gamma = 1e-10;       // seconds per byte reduced
  // MPI_Allreduce measured directly: seconds at 8 B, 64 KiB and 1 MiB (linear in between,
  // extrapolated from the last two beyond).
  double native_small = 5e-6;
  double native_mid = 5e-5;
  double native_large = 5e-4;

  // Predicted seconds of one all-reduce of `bytes` with `algorithm` on `topo`.
  double Predict(AllreduceAlgorithm algorithm, const Topology& topo, size_t bytes) const;
  std::string ToText() const;
  static bool FromText(const std::string& text, CostModel* out);
};

// Collective over topo.global: measures the parameters (a few milliseconds) and agrees on the
// slowest rank's values so that every rank predicts, and so chooses, the same.
CostModel CalibrateCostModel(const Topology& topo);

// The algorithms `auto` chooses among on this topology (every rank lists the same).
std::vector<AllreduceAlgorithm> AutoCandidates(const Topology& topo);

// The cheapest algorithm for `bytes` under the model; every rank returns the same.
AllreduceAlgorithm ChooseByCost(const CostModel& model, const Topology& topo, size_t bytes);

}  // namespace fusecomm

// The communicators an algorithm may use, built once at init (never per call). Communicators
// only: which algorithm runs is the selector's business (collectives/dispatch.h).
#pragma once

#include <memory>
#include <vector>

#include "transport/comm.h"

namespace fusecomm {

struct Topology {
  // All ranks of the process set, in rank order. Owned elsewhere.
  Comm* global = nullptr;
  // Ranks of this rank's node (or virtual node when FUSECOMM_LOCAL_SIZE carves them).
  std::unique_ptr<Comm> local;
  // One rank per node with the same local rank as this one (local_rank-th ranks of every node).
  std::unique_ptr<Comm> cross;
  // 2D grid for torus2d: rows of width torus_x (consecutive global ranks), columns across rows.
  std::unique_ptr<Comm> torus_row;
  std::unique_ptr<Comm> torus_col;
  // This column's ranks in full rows only: global.Split(row < ranks / torus_x ? col : -1, rank).
  // Needed only when the last row is partial (its ranks fold into the row above and sit out the
  // column all-reduce); may stay null when torus_x divides the rank count.
  std::unique_ptr<Comm> torus_col_full;
  int torus_x = 1;
  // Whether every node has the same number of ranks (hierarchical algorithms need to know).
  bool homogeneous = true;
  // node_sizes[i]: ranks on node i (nodes ordered by their lowest global rank).
  std::vector<int> node_sizes;
  int local_rank() const { return local ? local->rank() : 0; }
  int local_size() const { return local ? local->size() : 1; }
  int cross_rank() const { return cross ? cross->rank() : 0; }
  int cross_size() const { return cross ? cross->size() : 1; }
};

}  // namespace fusecomm

// Node-aware all-reduces.
//
// HierarchicalAllreduce (Jia et al.): binomial reduce to local rank 0, ring all-reduce among the
// node leaders, binomial broadcast back. The leaders' cross communicator is topo.cross on local
// rank 0 (cross groups ranks of equal local rank, and every node has a local rank 0), so nodes of
// different sizes need nothing special: each node reduces and broadcasts over its own ranks.
//
// HierarchicalScatterAllreduce (Horovod's HOROVOD_HIERARCHICAL_ALLREDUCE): ring reduce-scatter
// in the node, ring all-reduce of shard l across nodes among the local-rank-l ranks (all k
// shards in parallel), ring all-gather in the node. It needs every node to cut the buffer into
// the same k shards and every shard to have one owner per node, which uneven nodes cannot give
// (a node of 1 rank would own all shards, and topo.cross for local rank 1 would miss it). There
// it falls back to RingAllreduce on topo.global, still bandwidth-optimal (2n(p-1)/p per rank);
// HierarchicalAllreduce is the node-aware choice for such jobs.
#include <numeric>

#include "collectives/allreduce.h"
#include "collectives/pipeline.h"

namespace fusecomm {

namespace {

// Binomial tree rooted at rank 0: in round j (mask = 2^j) rank r with bit j set sends to
// r - mask and leaves; ranks below receive from r + mask. Rank 0 takes ceil(lg p) rounds.
// The tree's shape for one rank: how many children it has and whether it has a parent.
struct TreeShape {
  int children = 0;
  bool has_parent = false;
  TreeShape(int ranks, int rank) {
    for (int mask = 1; mask < ranks; mask <<= 1) {
      if (rank & mask) {
        has_parent = true;
        break;
      }
      if (rank + mask < ranks) ++children;
    }
  }
};

void BinomialReduce(Comm& comm, void* buf, size_t count, DataType dtype, ReduceOp op,
                    size_t segment_bytes) {
  const int p = comm.size();
  const int r = comm.rank();
  for (int mask = 1; mask < p; mask <<= 1) {
    if (r & mask) {
      Exchange(comm, buf, count, r - mask, nullptr, 0, r - mask, dtype, std::nullopt,
               kTagTreeReduce, segment_bytes);
      ++comm.traffic().steps;
      return;
    }
    if (r + mask < p) {
      Exchange(comm, nullptr, 0, r + mask, buf, count, r + mask, dtype, op, kTagTreeReduce,
               segment_bytes);
      ++comm.traffic().steps;
    }
  }
}

// The reduce's tree run backwards: receive from the parent, then send to children, largest
// subtree first.
void BinomialBroadcast(Comm& comm, void* buf, size_t count, DataType dtype,
                       size_t segment_bytes) {
  const int p = comm.size();
  const int r = comm.rank();
  int mask = 1;
  for (; mask < p; mask <<= 1) {
    if (r & mask) {
      Exchange(comm, nullptr, 0, r - mask, buf, count, r - mask, dtype, std::nullopt,
               kTagTreeBroadcast, segment_bytes);
      ++comm.traffic().steps;
      break;
    }
  }
  for (mask >>= 1; mask > 0; mask >>= 1) {
    if (r + mask < p) {
      Exchange(comm, buf, count, r + mask, nullptr, 0, r + mask, dtype, std::nullopt,
               kTagTreeBroadcast, segment_bytes);
      ++comm.traffic().steps;
    }
  }
}

// Reduce: a parent-bound send of n; broadcast: n to each child. Same rounds both ways.
AlgorithmCost BinomialReduceCost(int ranks, int rank, size_t bytes) {
  const TreeShape tree(ranks, rank);
  return {static_cast<uint64_t>(tree.children + (tree.has_parent ? 1 : 0)),
          tree.has_parent ? bytes : 0};
}

AlgorithmCost BinomialBroadcastCost(int ranks, int rank, size_t bytes) {
  const TreeShape tree(ranks, rank);
  return {static_cast<uint64_t>(tree.children + (tree.has_parent ? 1 : 0)),
          static_cast<uint64_t>(tree.children) * bytes};
}

}  // namespace

void HierarchicalAllreduce(const Topology& topo, void* buf, size_t count, DataType dtype,
                           ReduceOp op, size_t segment_bytes) {
  if (count == 0) return;
  Comm* local = topo.local.get();
  if (local != nullptr && local->size() > 1) {
    BinomialReduce(*local, buf, count, dtype, op, segment_bytes);
  }
  if (topo.local_rank() == 0 && topo.cross != nullptr) {
    RingAllreduce(*topo.cross, buf, count, dtype, op, segment_bytes);
  }
  if (local != nullptr && local->size() > 1) {
    BinomialBroadcast(*local, buf, count, dtype, segment_bytes);
  }
}

AlgorithmCost HierarchicalAllreduceCost(const std::vector<int>& node_sizes, int node,
                                        int local_rank, size_t count, size_t elem_size) {
  if (count == 0) return {};
  const int k = node_sizes[node];
  const size_t bytes = count * elem_size;
  AlgorithmCost cost = BinomialReduceCost(k, local_rank, bytes);
  if (local_rank == 0) {
    cost = cost + RingAllreduceCost(static_cast<int>(node_sizes.size()), node, count, elem_size);
  }
  return cost + BinomialBroadcastCost(k, local_rank, bytes);
}

void HierarchicalScatterAllreduce(const Topology& topo, void* buf, size_t count, DataType dtype,
                                  ReduceOp op, size_t segment_bytes) {
  if (count == 0) return;
  if (!topo.homogeneous) {
    RingAllreduce(*topo.global, buf, count, dtype, op, segment_bytes);
    return;
  }
  const int k = topo.local_size();
  const int l = topo.local_rank();
  const std::vector<size_t> shards = EvenBlockCounts(count, k);
  const size_t offset = std::accumulate(shards.begin(), shards.begin() + l, size_t{0});
  char* shard = static_cast<char*>(buf) + offset * DataTypeSize(dtype);
  if (k > 1) RingReduceScatter(*topo.local, buf, shards, dtype, op, segment_bytes);
  if (topo.cross != nullptr) {
    RingAllreduce(*topo.cross, shard, shards[l], dtype, op, segment_bytes);
  }
  if (k > 1) RingAllgather(*topo.local, buf, shards, dtype, segment_bytes);
}

AlgorithmCost HierarchicalScatterAllreduceCost(const std::vector<int>& node_sizes, int cross_rank,
                                               int local_rank, int rank, size_t count,
                                               size_t elem_size) {
  if (count == 0) return {};
  const int nodes = static_cast<int>(node_sizes.size());
  const int k = node_sizes[0];
  bool homogeneous = true;
  for (int size : node_sizes) homogeneous = homogeneous && size == k;
  if (!homogeneous) {
    const int ranks = std::accumulate(node_sizes.begin(), node_sizes.end(), 0);
    return RingAllreduceCost(ranks, rank, count, elem_size);
  }
  const std::vector<size_t> shards = EvenBlockCounts(count, k);
  return RingReduceScatterCost(k, local_rank, shards, elem_size) +
         RingAllreduceCost(nodes, cross_rank, shards[local_rank], elem_size) +
         RingAllgatherCost(k, local_rank, shards, elem_size);
}

}  // namespace fusecomm

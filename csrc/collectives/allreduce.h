// The all-reduce algorithms, one file each. Every one is in place on `buf` (count elements of
// dtype), reduces with `op` (never kAverage: the engine averages by scaling), and touches memory
// only through comm.memory(), so it runs on any transport.
//
// Segments: every algorithm moves data as messages of at most `segment_bytes`, so that receiving
// the next segment overlaps reducing (or forwarding) the current one. All ranks must pass the
// same segment size (it decides how many messages each side expects).
//
// Steps: each algorithm adds to comm.traffic().steps, on the comm a round runs on, one per round
// of its schedule in which this rank has a partner (however many segment messages the round
// takes, and even when a round's share of an uneven split happens to be empty). Bytes are never
// self-reported: the Comm counts what Send/Isend/SendRecv put on the wire.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "transport/topology.h"
#include "common/types.h"
#include "transport/comm.h"

namespace fusecomm {

// 512 KiB. Measured (ring, 64 MiB float32, 2 ranks, shared-memory Open MPI): 256 KiB-2 MiB within
// noise of each other, 64 KiB 20-50% slower and 16 KiB 2-3x slower (per-message overhead), one
// unsegmented message per block 1.3-1.8x slower (no overlap of receive and reduction).
constexpr size_t kDefaultSegmentBytes = size_t{512} << 10;

// What an algorithm costs one rank: the steps (rounds) it takes part in and the bytes it sends.
// These are the formulas of shared/REFERENCE.md evaluated exactly for one rank, uneven splits
// included; where the split is even they reduce to the closed forms (e.g. ring: 2(p-1) steps,
// 2n(p-1)/p bytes). The latency of the whole all-reduce is that of the busiest rank: the maximum
// over ranks (the same on every rank, so ranks choosing by it agree).
struct AlgorithmCost {
  uint64_t steps = 0;
  uint64_t bytes_sent = 0;
};
AlgorithmCost operator+(AlgorithmCost a, AlgorithmCost b);

// Splits `count` elements into `parts` blocks that differ by at most one element (the first
// count % parts blocks get the extra one).
std::vector<size_t> EvenBlockCounts(size_t count, int parts);

// ---- Ring building blocks (ring_allreduce.cc). `buf` holds comm.size() blocks back to back,
// block i of block_counts[i] elements; any counts, zeros included. The ring runs rank i -> i+1.

// Afterwards block comm.rank() holds the reduction of that block over all ranks; the other
// blocks hold partial results.
void RingReduceScatter(Comm& comm, void* buf, const std::vector<size_t>& block_counts,
                       DataType dtype, ReduceOp op, size_t segment_bytes = kDefaultSegmentBytes);
// Block comm.rank() is this rank's contribution; afterwards every block holds its owner's.
void RingAllgather(Comm& comm, void* buf, const std::vector<size_t>& block_counts, DataType dtype,
                   size_t segment_bytes = kDefaultSegmentBytes);
AlgorithmCost RingReduceScatterCost(int ranks, int rank, const std::vector<size_t>& block_counts,
                                    size_t elem_size);
AlgorithmCost RingAllgatherCost(int ranks, int rank, const std::vector<size_t>& block_counts,
                                size_t elem_size);

// ---- The algorithms. Cost functions take the rank they are evaluated for.

// Ring reduce-scatter + ring all-gather on blocks of count/p.
void RingAllreduce(Comm& comm, void* buf, size_t count, DataType dtype, ReduceOp op,
                   size_t segment_bytes = kDefaultSegmentBytes);
AlgorithmCost RingAllreduceCost(int ranks, int rank, size_t count, size_t elem_size);

// Shared memory (shm_allreduce.cc): every rank on one node (comm.shared_segment()); each block
// is reduced by one rank and copied out by all: through the segment's slots, in pieces of the
// slot size, or, from the segment's single_copy_min_bytes up, read from the peers' buffers.
void SharedMemoryAllreduce(Comm& comm, void* buf, size_t count, DataType dtype, ReduceOp op);
AlgorithmCost SharedMemoryAllreduceCost(int ranks, size_t count, size_t elem_size,
                                        size_t slot_bytes, size_t single_copy_min_bytes);

// Rabenseifner: recursive-halving reduce-scatter + recursive-doubling all-gather over the
// largest power of two p' <= p; the p - p' extra ranks fold their data into a partner first and
// get the result back at the end.
void RecursiveHalvingDoublingAllreduce(Comm& comm, void* buf, size_t count, DataType dtype,
                                       ReduceOp op, size_t segment_bytes = kDefaultSegmentBytes);
AlgorithmCost RecursiveHalvingDoublingAllreduceCost(int ranks, int rank, size_t count,
                                                    size_t elem_size);

// Jia et al.: binomial reduce to the node leader (local rank 0), ring all-reduce among the
// leaders over topo.cross, binomial broadcast inside the node. Any node sizes.
void HierarchicalAllreduce(const Topology& topo, void* buf, size_t count, DataType dtype,
                           ReduceOp op, size_t segment_bytes = kDefaultSegmentBytes);
// node_sizes as in Topology; `node` is this rank's node index, local_rank its rank in the node.
AlgorithmCost HierarchicalAllreduceCost(const std::vector<int>& node_sizes, int node,
                                        int local_rank, size_t count, size_t elem_size);

// Ring reduce-scatter inside the node, ring all-reduce of each shard across nodes (topo.cross,
// all local ranks in parallel), ring all-gather inside the node. Uneven nodes fall back to
// RingAllreduce on topo.global (see the .cc).
void HierarchicalScatterAllreduce(const Topology& topo, void* buf, size_t count, DataType dtype,
                                  ReduceOp op, size_t segment_bytes = kDefaultSegmentBytes);
// cross_rank: this rank's position in topo.cross (its node's index when nodes are consecutive
// ranks); rank (the global rank) matters only for the uneven-node fallback.
AlgorithmCost HierarchicalScatterAllreduceCost(const std::vector<int>& node_sizes, int cross_rank,
                                               int local_rank, int rank, size_t count,
                                               size_t elem_size);

// Mikami et al.: ring reduce-scatter along the row (topo.torus_row), ring all-reduce of the shard
// along the column, ring all-gather along the row. A partial last row folds into the row above
// (see the .cc); with no full row at all (torus_x > ranks) it is RingAllreduce on topo.global.
void Torus2DAllreduce(const Topology& topo, void* buf, size_t count, DataType dtype, ReduceOp op,
                      size_t segment_bytes = kDefaultSegmentBytes);
AlgorithmCost Torus2DAllreduceCost(int ranks, int torus_x, int rank, size_t count,
                                   size_t elem_size);

// Adasum (Maleki et al.; Horovod's op=Adasum): a binary tree of pairwise adaptive sums
// adasum(a, b) = (1 - a.b/(2|a|^2)) a + (1 - a.b/(2|b|^2)) b, computed per tensor of the fused
// buffer (tensor_counts elements each, back to back) by vector halving, distance doubling; any
// rank count (see the .cc for the tree). Floating-point dtypes, host memory.
void AdasumAllreduce(Comm& comm, void* buf, const std::vector<size_t>& tensor_counts,
                     DataType dtype, size_t segment_bytes = kDefaultSegmentBytes);

}  // namespace fusecomm

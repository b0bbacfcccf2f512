// Ring all-reduce: ring reduce-scatter, then ring all-gather (Patarasuk & Yuan). Bandwidth-optimal
// (each rank sends 2n(p-1)/p), latency 2(p-1) steps. The two halves are exposed as building
// blocks for the hierarchical and 2D-torus algorithms.
#include <numeric>
#include <string>

#include "collectives/allreduce.h"
#include "collectives/pipeline.h"
#include "common/errors.h"

namespace fusecomm {

namespace {

int Mod(int a, int p) { return ((a % p) + p) % p; }

// One trip around the ring: p-1 steps. At step s this rank sends block (first_send - s) to the
// next rank and receives block (first_send - s - 1) from the previous one, the block it sends
// at step s+1. Segments flow without a barrier between steps: a segment is forwarded as soon as
// it has arrived (and been reduced), so the steps overlap as well as the segments within one.
// Both neighbours cut each block into the same segments, so the k-th message from the previous
// rank is always the k-th segment this rank expects.
void RingPass(Comm& comm, void* buf, const std::vector<size_t>& block_counts, DataType dtype,
              std::optional<ReduceOp> reduce_op, int first_send, int tag, size_t segment_bytes) {
  const int p = comm.size();
  if (static_cast<int>(block_counts.size()) != p) {
    throw InvalidArgument("ring: " + std::to_string(block_counts.size()) + " blocks for " +
                          std::to_string(p) + " ranks");
  }
  const size_t total = std::accumulate(block_counts.begin(), block_counts.end(), size_t{0});
  if (p == 1 || total == 0) return;

  const size_t elem = DataTypeSize(dtype);
  std::vector<size_t> offsets(p, 0);
  std::partial_sum(block_counts.begin(), block_counts.end() - 1, offsets.begin() + 1);
  char* base = static_cast<char*>(buf);
  auto append_block = [&](std::vector<Segment>* segments, int block) {
    AppendSegments(segments, base + offsets[block] * elem, block_counts[block], elem,
                   segment_bytes);
  };

  std::vector<Segment> first;
  append_block(&first, Mod(first_send, p));
  std::vector<Segment> incoming;
  std::vector<int> step_of;  // the step in which incoming[i] arrives
  for (int s = 0; s < p - 1; ++s) {
    append_block(&incoming, Mod(first_send - s - 1, p));
    step_of.resize(incoming.size(), s);
  }

  const int next = Mod(comm.rank() + 1, p);
  const int prev = Mod(comm.rank() - 1, p);
  PendingSends pending;
  StartSends(comm, first, elem, next, tag, &pending);
  size_t arrived = 0;
  try {
    ReceiveSegments(comm, incoming, dtype, reduce_op, prev, tag, [&](size_t i) {
      // Every step's block but the last goes on to the next rank.
      if (step_of[i] < p - 2) {
        pending.push_back(comm.Isend(incoming[i].data, incoming[i].count * elem, next, tag));
      }
      arrived = i + 1;
    });
  } catch (const CollectiveError& e) {
    throw CollectiveError("ring step " + std::to_string(step_of[arrived] + 1) + " of " +
                          std::to_string(p - 1) + " (from rank " + std::to_string(prev) +
                          ", to rank " + std::to_string(next) + "): " + e.what());
  }
  WaitAll(&pending, tag);
  comm.traffic().steps += static_cast<uint64_t>(p - 1);
}

// Bytes of all blocks but `skipped`: what a ring pass sends when every other block goes out once.
uint64_t BytesExcept(const std::vector<size_t>& block_counts, int skipped, size_t elem_size) {
  const size_t total = std::accumulate(block_counts.begin(), block_counts.end(), size_t{0});
  return static_cast<uint64_t>((total - block_counts[skipped]) * elem_size);
}

bool RingIsIdle(int ranks, const std::vector<size_t>& block_counts) {
  return ranks <= 1 ||
         std::accumulate(block_counts.begin(), block_counts.end(), size_t{0}) == 0;
}

}  // namespace

AlgorithmCost operator+(AlgorithmCost a, AlgorithmCost b) {
  return {a.steps + b.steps, a.bytes_sent + b.bytes_sent};
}

std::vector<size_t> EvenBlockCounts(size_t count, int parts) {
  std::vector<size_t> counts(parts, count / parts);
  for (size_t i = 0; i < count % parts; ++i) ++counts[i];
  return counts;
}

// Rank r sends block r-1 first and finishes with block r (received last, fully reduced).
void RingReduceScatter(Comm& comm, void* buf, const std::vector<size_t>& block_counts,
                       DataType dtype, ReduceOp op, size_t segment_bytes) {
  RingPass(comm, buf, block_counts, dtype, op, comm.rank() - 1, kTagRingReduceScatter,
           segment_bytes);
}

// Rank r sends its own block r first; the blocks it receives are final and land in place.
void RingAllgather(Comm& comm, void* buf, const std::vector<size_t>& block_counts, DataType dtype,
                   size_t segment_bytes) {
  RingPass(comm, buf, block_counts, dtype, std::nullopt, comm.rank(), kTagRingAllgather,
           segment_bytes);
}

// Reduce-scatter sends every block but the rank's own (r); all-gather every block but r+1
// (the last one to reach it).
AlgorithmCost RingReduceScatterCost(int ranks, int rank, const std::vector<size_t>& block_counts,
                                    size_t elem_size) {
  if (RingIsIdle(ranks, block_counts)) return {};
  return {static_cast<uint64_t>(ranks - 1), BytesExcept(block_counts, rank, elem_size)};
}

AlgorithmCost RingAllgatherCost(int ranks, int rank, const std::vector<size_t>& block_counts,
                                size_t elem_size) {
  if (RingIsIdle(ranks, block_counts)) return {};
  return {static_cast<uint64_t>(ranks - 1),
          BytesExcept(block_counts, Mod(rank + 1, ranks), elem_size)};
}

void RingAllreduce(Comm& comm, void* buf, size_t count, DataType dtype, ReduceOp op,
                   size_t segment_bytes) {
  if (comm.size() == 1 || count == 0) return;
  const std::vector<size_t> blocks = EvenBlockCounts(count, comm.size());
  RingReduceScatter(comm, buf, blocks, dtype, op, segment_bytes);
  RingAllgather(comm, buf, blocks, dtype, segment_bytes);
}

AlgorithmCost RingAllreduceCost(int ranks, int rank, size_t count, size_t elem_size) {
  if (ranks <= 1 || count == 0) return {};
  const std::vector<size_t> blocks = EvenBlockCounts(count, ranks);
  return RingReduceScatterCost(ranks, rank, blocks, elem_size) +
         RingAllgatherCost(ranks, rank, blocks, elem_size);
}

}  // namespace fusecomm

// Rabenseifner's all-reduce (Thakur, Rabenseifner & Gropp 2005): recursive-halving
// reduce-scatter then recursive-doubling all-gather, 2 lg p steps and 2n(p-1)/p bytes per rank.
//
// Rank counts that are not a power of two: with p' the largest power of two <= p and
// rem = p - p', the first 2*rem ranks pair up (2i, 2i+1); the even one sends its whole buffer to
// the odd one (which reduces it), sits out, and gets the result back at the end. The remaining
// p' ranks run the power-of-two algorithm. Costs 2 more steps and n more bytes for the odd
// partners, as in REFERENCE.md: (2 floor(lg p) + 2) steps.
//
// Uneven counts: the buffer is cut into p' blocks that differ by at most one element and every
// halving/doubling step moves whole blocks, so any count works.
#include <numeric>

#include "collectives/allreduce.h"
#include "collectives/pipeline.h"

namespace fusecomm {

namespace {

int LargestPowerOfTwoAtMost(int p) {
  int p2 = 1;
  while (p2 * 2 <= p) p2 *= 2;
  return p2;
}

// The schedule's shape for one rank, shared by the algorithm and its cost function.
struct RhdPlan {
  int pow2 = 1;          // p'
  int rem = 0;           // p - p'
  int virtual_rank = -1; // rank among the p' that run the halving/doubling; -1: folded out
  bool folds_in = false; // an odd rank among the first 2*rem: receives a partner's data

  explicit RhdPlan(int ranks, int rank) : pow2(LargestPowerOfTwoAtMost(ranks)) {
    rem = ranks - pow2;
    if (rank < 2 * rem) {
      folds_in = rank % 2 == 1;
      virtual_rank = folds_in ? rank / 2 : -1;
    } else {
      virtual_rank = rank - rem;
    }
  }
  int RealRank(int vrank) const { return vrank < rem ? 2 * vrank + 1 : vrank + rem; }
};

// Elements in blocks [first, last).
size_t CountOf(const std::vector<size_t>& offsets, int first, int last) {
  return offsets[last] - offsets[first];
}

}  // namespace

void RecursiveHalvingDoublingAllreduce(Comm& comm, void* buf, size_t count, DataType dtype,
                                       ReduceOp op, size_t segment_bytes) {
  const int p = comm.size();
  const int rank = comm.rank();
  if (p == 1 || count == 0) return;
  const size_t elem = DataTypeSize(dtype);
  char* base = static_cast<char*>(buf);
  const RhdPlan plan(p, rank);
  uint64_t& steps = comm.traffic().steps;

  if (plan.virtual_rank < 0) {
    Exchange(comm, base, count, rank + 1, nullptr, 0, rank + 1, dtype, std::nullopt, kTagFold,
             segment_bytes);
    Exchange(comm, nullptr, 0, rank + 1, base, count, rank + 1, dtype, std::nullopt, kTagUnfold,
             segment_bytes);
    steps += 2;
    return;
  }
  if (plan.folds_in) {
    Exchange(comm, nullptr, 0, rank - 1, base, count, rank - 1, dtype, op, kTagFold,
             segment_bytes);
    ++steps;
  }

  const int vrank = plan.virtual_rank;
  const std::vector<size_t> blocks = EvenBlockCounts(count, plan.pow2);
  std::vector<size_t> offsets(plan.pow2 + 1, 0);
  std::partial_sum(blocks.begin(), blocks.end(), offsets.begin() + 1);
  auto at = [&](int block) { return base + offsets[block] * elem; };

  // Halving: the window [lo, hi) of blocks this rank is responsible for halves each step; it
  // keeps the half holding its own block vrank and hands the other half to the partner.
  int lo = 0;
  int hi = plan.pow2;
  for (int mask = plan.pow2 / 2; mask >= 1; mask /= 2) {
    const int partner = plan.RealRank(vrank ^ mask);
    const int mid = lo + mask;
    const bool keep_upper = (vrank & mask) != 0;
    const int keep_lo = keep_upper ? mid : lo, keep_hi = keep_upper ? hi : mid;
    const int give_lo = keep_upper ? lo : mid, give_hi = keep_upper ? mid : hi;
    Exchange(comm, at(give_lo), CountOf(offsets, give_lo, give_hi), partner, at(keep_lo),
             CountOf(offsets, keep_lo, keep_hi), partner, dtype, op, kTagHalving, segment_bytes);
    lo = keep_lo;
    hi = keep_hi;
    ++steps;
  }

  // Doubling: the windows merge back; each step swaps this rank's window with the partner's
  // adjacent one of the same size.
  for (int mask = 1; mask < plan.pow2; mask *= 2) {
    const int partner_vrank = vrank ^ mask;
    const int mine = vrank & ~(mask - 1);
    const int theirs = partner_vrank & ~(mask - 1);
    Exchange(comm, at(mine), CountOf(offsets, mine, mine + mask), plan.RealRank(partner_vrank),
             at(theirs), CountOf(offsets, theirs, theirs + mask), plan.RealRank(partner_vrank),
             dtype, std::nullopt, kTagDoubling, segment_bytes);
    ++steps;
  }

  if (plan.folds_in) {
    Exchange(comm, base, count, rank - 1, nullptr, 0, rank - 1, dtype, std::nullopt, kTagUnfold,
             segment_bytes);
    ++steps;
  }
}

AlgorithmCost RecursiveHalvingDoublingAllreduceCost(int ranks, int rank, size_t count,
                                                    size_t elem_size) {
  if (ranks <= 1 || count == 0) return {};
  const RhdPlan plan(ranks, rank);
  const uint64_t whole = static_cast<uint64_t>(count * elem_size);
  if (plan.virtual_rank < 0) return {2, whole};

  AlgorithmCost cost;
  if (plan.folds_in) cost = {2, whole};  // receive the partner's data, send back the result
  const std::vector<size_t> blocks = EvenBlockCounts(count, plan.pow2);
  std::vector<size_t> offsets(plan.pow2 + 1, 0);
  std::partial_sum(blocks.begin(), blocks.end(), offsets.begin() + 1);
  const int vrank = plan.virtual_rank;
  // Halving hands off the half of the window not holding vrank; doubling sends the window held.
  for (int mask = plan.pow2 / 2; mask >= 1; mask /= 2) {
    const int window = vrank & ~(2 * mask - 1);
    const int given = (vrank & mask) ? window : window + mask;
    cost.bytes_sent += CountOf(offsets, given, given + mask) * elem_size;
    ++cost.steps;
  }
  for (int mask = 1; mask < plan.pow2; mask *= 2) {
    const int mine = vrank & ~(mask - 1);
    cost.bytes_sent += CountOf(offsets, mine, mine + mask) * elem_size;
    ++cost.steps;
  }
  return cost;
}

}  // namespace fusecomm

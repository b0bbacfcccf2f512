// Adasum (Maleki et al. 2021, "Scaling distributed training with adaptive summation"), the
// reduction Horovod offers as op=Adasum. Two gradients combine as
//
//   adasum(a, b) = (1 - a.b / (2 |a|^2)) a + (1 - a.b / (2 |b|^2)) b
//
// per tensor: orthogonal gradients add, parallel ones average, and anything between gets
// less than the sum. A coefficient whose norm is zero is 1 (adasum(a, 0) = a, which is also
// what a joined rank's zeros contribute). Horovod cuts off at |a|^2 < 1e-8 instead, which makes
// the result depend on the gradients' scale; fusecomm only guards the 0/0.
//
// Schedule (p' the largest power of two <= p):
//  1. Fold: rank p' + i (i < p - p') sends its buffer to rank i, which combines adasum(v_i,
//     v_{p'+i}) locally. Horovod refuses non-powers of two; this makes any p a binary tree
//     whose first level pairs i with p' + i.
//  2. Vector halving, distance doubling over the p' ranks: at distance d, rank r and r ^ d hold
//     the same range of the fused buffer; each keeps half of it (the lower rank the first half),
//     receives the partner's copy of that half, and the pair combines its halves with the
//     coefficients of the whole vectors. The vectors being combined are spread over the 2d
//     ranks r >> (lg d + 1) has in common, so each tensor's three partial sums (a.b, |a|^2,
//     |b|^2) are summed over those 2d ranks by recursive doubling first (pairwise sums are
//     commutative, so every rank of the group gets bitwise the same coefficients). `a` is
//     always the side with bit d clear: the tree combines block [k 2d, k 2d + d) with
//     [k 2d + d, (k + 1) 2d).
//  3. Distance halving all-gather of the ranges, then the result goes back to the folded ranks.
//
// Sums are in double; each combination rounds once to the tensor's dtype (fp16 and bf16 too).
// Host memory only: the engine rejects Adasum on device tensors.
#include <algorithm>
#include <cstring>
#include <utility>

#include "collectives/allreduce.h"
#include "collectives/pipeline.h"
#include "common/errors.h"
#include "reduce/cpu_reduce.h"

namespace fusecomm {

namespace {

struct Float32Elem {
  using Storage = float;
  static double Get(Storage v) { return v; }
  static Storage Put(double v) { return static_cast<float>(v); }
};
struct Float64Elem {
  using Storage = double;
  static double Get(Storage v) { return v; }
  static Storage Put(double v) { return v; }
};
struct Float16Elem {
  using Storage = uint16_t;
  static double Get(Storage v) { return HalfToFloat(v); }
  static Storage Put(double v) { return FloatToHalf(static_cast<float>(v)); }
};
struct BFloat16Elem {
  using Storage = uint16_t;
  static double Get(Storage v) { return BFloat16ToFloat(v); }
  static Storage Put(double v) { return FloatToBFloat16(static_cast<float>(v)); }
};

int LargestPowerOfTwoAtMost(int p) {
  int p2 = 1;
  while (p2 * 2 <= p) p2 *= 2;
  return p2;
}

double Coefficient(double dot, double norm_sq) {
  return norm_sq > 0.0 ? 1.0 - dot / (2.0 * norm_sq) : 1.0;
}

// The fused buffer's tensors and this rank's current window [lo, hi) of it. `mine` holds the
// whole buffer (element i at mine[i]); `theirs` holds the partner's copy of the window
// (element i at theirs[i - lo]).
template <typename E>
class Combiner {
 public:
  using T = typename E::Storage;
  explicit Combiner(const std::vector<size_t>& offsets) : offsets_(offsets) {}

  // Adds each tensor's (a.b, |a|^2, |b|^2) over the window to dots (3 per tensor); `a` is this
  // rank's data when mine_is_a.
  void PartialDots(const T* mine, const T* theirs, size_t lo, size_t hi, bool mine_is_a,
                   std::vector<double>* dots) const {
    ForEachTensor(lo, hi, [&](size_t t, size_t begin, size_t end) {
      double ab = 0.0, mm = 0.0, tt = 0.0;
      for (size_t i = begin; i < end; ++i) {
        const double m = E::Get(mine[i]), o = E::Get(theirs[i - lo]);
        ab += m * o;
        mm += m * m;
        tt += o * o;
      }
      (*dots)[3 * t] += ab;
      (*dots)[3 * t + 1] += mine_is_a ? mm : tt;
      (*dots)[3 * t + 2] += mine_is_a ? tt : mm;
    });
  }

  // mine[i] = ca a[i] + cb b[i] over the window, with each tensor's coefficients from dots.
  void Combine(T* mine, const T* theirs, size_t lo, size_t hi, bool mine_is_a,
               const std::vector<double>& dots) const {
    ForEachTensor(lo, hi, [&](size_t t, size_t begin, size_t end) {
      const double ca = Coefficient(dots[3 * t], dots[3 * t + 1]);
      const double cb = Coefficient(dots[3 * t], dots[3 * t + 2]);
      const double cm = mine_is_a ? ca : cb, co = mine_is_a ? cb : ca;
      for (size_t i = begin; i < end; ++i) {
        mine[i] = E::Put(cm * E::Get(mine[i]) + co * E::Get(theirs[i - lo]));
      }
    });
  }

 private:
  template <typename Fn>
  void ForEachTensor(size_t lo, size_t hi, Fn&& fn) const {
    for (size_t t = 0; t + 1 < offsets_.size(); ++t) {
      const size_t begin = std::max(lo, offsets_[t]), end = std::min(hi, offsets_[t + 1]);
      if (begin < end) fn(t, begin, end);
    }
  }

  const std::vector<size_t>& offsets_;
};

template <typename E>
void AdasumTyped(Comm& comm, void* buf, const std::vector<size_t>& tensor_counts,
                 DataType dtype, size_t segment_bytes) {
  using T = typename E::Storage;
  const int p = comm.size();
  const int rank = comm.rank();
  std::vector<size_t> offsets(tensor_counts.size() + 1, 0);
  for (size_t t = 0; t < tensor_counts.size(); ++t) offsets[t + 1] = offsets[t] + tensor_counts[t];
  const size_t count = offsets.back();
  if (p == 1 || count == 0) return;
  const int p2 = LargestPowerOfTwoAtMost(p);
  const int extras = p - p2;
  T* mine = static_cast<T*>(buf);
  uint64_t& steps = comm.traffic().steps;

  if (rank >= p2) {  // folded: hand the data to rank - p', get the result back
    Exchange(comm, mine, count, rank - p2, nullptr, 0, rank - p2, dtype, std::nullopt,
             kTagFold, segment_bytes);
    Exchange(comm, nullptr, 0, rank - p2, mine, count, rank - p2, dtype, std::nullopt,
             kTagUnfold, segment_bytes);
    steps += 2;
    return;
  }
  const Combiner<E> combiner(offsets);
  const size_t tensors = tensor_counts.size();
  std::vector<T> theirs(rank < extras ? count : count - count / 2);
  if (rank < extras) {
    Exchange(comm, nullptr, 0, rank + p2, theirs.data(), count, rank + p2, dtype, std::nullopt,
             kTagFold, segment_bytes);
    ++steps;
    std::vector<double> dots(3 * tensors, 0.0);
    combiner.PartialDots(mine, theirs.data(), 0, count, true, &dots);
    combiner.Combine(mine, theirs.data(), 0, count, true, dots);
  }

  std::vector<std::pair<size_t, size_t>> windows;  // the window before each halving
  size_t lo = 0, hi = count;
  for (int d = 1; d < p2; d *= 2) {
    const int partner = rank ^ d;
    const bool lower = (rank & d) == 0;
    const size_t mid = lo + (hi - lo) / 2;
    const size_t keep_lo = lower ? lo : mid, keep_hi = lower ? mid : hi;
    const size_t give_lo = lower ? mid : lo, give_hi = lower ? hi : mid;
    Exchange(comm, mine + give_lo, give_hi - give_lo, partner, theirs.data(), keep_hi - keep_lo,
             partner, dtype, std::nullopt, kTagHalving, segment_bytes);
    ++steps;
    std::vector<double> dots(3 * tensors, 0.0);
    combiner.PartialDots(mine, theirs.data(), keep_lo, keep_hi, lower, &dots);
    for (int k = 1; k <= d; k *= 2) {  // sum over the 2d ranks holding pieces of a and b
      const std::vector<double> sent = dots;
      Exchange(comm, sent.data(), sent.size(), rank ^ k, dots.data(), dots.size(), rank ^ k,
               DataType::kFloat64, ReduceOp::kSum, kTagAdasumDots, segment_bytes);
      ++steps;
    }
    combiner.Combine(mine, theirs.data(), keep_lo, keep_hi, lower, dots);
    windows.emplace_back(lo, hi);
    lo = keep_lo;
    hi = keep_hi;
  }

  for (int d = p2 / 2; d >= 1; d /= 2) {
    const auto [outer_lo, outer_hi] = windows.back();
    windows.pop_back();
    const size_t other_lo = lo == outer_lo ? hi : outer_lo;
    const size_t other_hi = lo == outer_lo ? outer_hi : lo;
    Exchange(comm, mine + lo, hi - lo, rank ^ d, mine + other_lo, other_hi - other_lo, rank ^ d,
             dtype, std::nullopt, kTagDoubling, segment_bytes);
    ++steps;
    lo = outer_lo;
    hi = outer_hi;
  }

  if (rank < extras) {
    Exchange(comm, mine, count, rank + p2, nullptr, 0, rank + p2, dtype, std::nullopt,
             kTagUnfold, segment_bytes);
    ++steps;
  }
}

}  // namespace

void AdasumAllreduce(Comm& comm, void* buf, const std::vector<size_t>& tensor_counts,
                     DataType dtype, size_t segment_bytes) {
  switch (dtype) {
    case DataType::kFloat32:
      return AdasumTyped<Float32Elem>(comm, buf, tensor_counts, dtype, segment_bytes);
    case DataType::kFloat64:
      return AdasumTyped<Float64Elem>(comm, buf, tensor_counts, dtype, segment_bytes);
    case DataType::kFloat16:
      return AdasumTyped<Float16Elem>(comm, buf, tensor_counts, dtype, segment_bytes);
    case DataType::kBFloat16:
      return AdasumTyped<BFloat16Elem>(comm, buf, tensor_counts, dtype, segment_bytes);
    default:
      throw InvalidArgument(std::string("Adasum is defined for floating-point tensors, not ") +
                            DataTypeName(dtype));
  }
}

}  // namespace fusecomm

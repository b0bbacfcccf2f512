// 2D-torus all-reduce (Mikami et al.): ranks on a grid of rows of X = topo.torus_x consecutive
// global ranks. Ring reduce-scatter along the row leaves column c's rank owning shard c of the
// row's sum; ring all-reduce along the column makes that shard global; ring all-gather along the
// row spreads the shards. 2(X-1) + 2(Y-1) steps instead of 2(XY-1), and the column links carry
// only n/X.
//
// Rank counts that do not fill the grid (p = F*X + t, 0 < t < X): the t ranks of the partial
// last row fold into the rank directly above them (same column, last full row) before the
// torus, as Rabenseifner folds extra ranks, and get the result back after it. The F x X full
// grid then runs unchanged, its columns being topo.torus_col_full. This costs 2 more steps and
// n more bytes for the t partner ranks, but keeps the row shards equal, which letting a short
// row take part could not (its ranks cannot hold X shards). With no full row (X > p) there is
// no grid: RingAllreduce on topo.global.
#include <numeric>
#include <string>

#include "collectives/allreduce.h"
#include "collectives/pipeline.h"
#include "common/errors.h"

namespace fusecomm {

namespace {

struct GridPlace {
  int full_rows;  // F
  int row;
  int col;
  bool in_partial_row;  // folds into the rank above
  bool takes_fold;      // receives the fold of the rank below
  GridPlace(int ranks, int x, int rank)
      : full_rows(ranks / x),
        row(rank / x),
        col(rank % x),
        in_partial_row(row == full_rows),
        takes_fold(row == full_rows - 1 && rank + x < ranks) {}
};

void CheckGridComm(const Comm* comm, int expected_size, const char* field, const char* holds) {
  if (comm == nullptr || comm->size() != expected_size) {
    throw InvalidArgument(std::string("torus2d: Topology::") + field + " must hold the " +
                          std::to_string(expected_size) + " ranks of " + holds);
  }
}

}  // namespace

void Torus2DAllreduce(const Topology& topo, void* buf, size_t count, DataType dtype, ReduceOp op,
                      size_t segment_bytes) {
  Comm& global = *topo.global;
  const int p = global.size();
  const int x = topo.torus_x;
  if (x < 1) throw InvalidArgument("torus2d: torus_x must be at least 1");
  if (p == 1 || count == 0) return;
  const GridPlace place(p, x, global.rank());
  if (place.full_rows == 0) {
    RingAllreduce(global, buf, count, dtype, op, segment_bytes);
    return;
  }
  const int me = global.rank();
  if (place.in_partial_row) {
    Exchange(global, buf, count, me - x, nullptr, 0, me - x, dtype, std::nullopt, kTagFold,
             segment_bytes);
    Exchange(global, nullptr, 0, me - x, buf, count, me - x, dtype, std::nullopt, kTagUnfold,
             segment_bytes);
    global.traffic().steps += 2;
    return;
  }
  // The full-grid columns (torus_col itself when the grid is full; never when it is partial, so
  // that a missing torus_col_full fails on every full-row rank alike). Checked before this rank
  // sends anything, so a mis-built topology fails here rather than half-way through a fold.
  const bool grid_full = p % x == 0;
  Comm* column =
      topo.torus_col_full || !grid_full ? topo.torus_col_full.get() : topo.torus_col.get();
  CheckGridComm(topo.torus_row.get(), x, "torus_row", "this rank's row");
  CheckGridComm(column, place.full_rows, "torus_col_full", "this rank's column in full rows");
  if (place.takes_fold) {
    Exchange(global, nullptr, 0, me + x, buf, count, me + x, dtype, op, kTagFold, segment_bytes);
    ++global.traffic().steps;
  }

  const std::vector<size_t> shards = EvenBlockCounts(count, x);
  const size_t offset = std::accumulate(shards.begin(), shards.begin() + place.col, size_t{0});
  char* shard = static_cast<char*>(buf) + offset * DataTypeSize(dtype);
  RingReduceScatter(*topo.torus_row, buf, shards, dtype, op, segment_bytes);
  RingAllreduce(*column, shard, shards[place.col], dtype, op, segment_bytes);
  RingAllgather(*topo.torus_row, buf, shards, dtype, segment_bytes);

  if (place.takes_fold) {
    Exchange(global, buf, count, me + x, nullptr, 0, me + x, dtype, std::nullopt, kTagUnfold,
             segment_bytes);
    ++global.traffic().steps;
  }
}

AlgorithmCost Torus2DAllreduceCost(int ranks, int torus_x, int rank, size_t count,
                                   size_t elem_size) {
  if (ranks <= 1 || count == 0) return {};
  const GridPlace place(ranks, torus_x, rank);
  if (place.full_rows == 0) return RingAllreduceCost(ranks, rank, count, elem_size);
  const AlgorithmCost fold{2, static_cast<uint64_t>(count * elem_size)};
  if (place.in_partial_row) return fold;
  const std::vector<size_t> shards = EvenBlockCounts(count, torus_x);
  AlgorithmCost cost = RingReduceScatterCost(torus_x, place.col, shards, elem_size) +
                       RingAllreduceCost(place.full_rows, place.row, shards[place.col],
                                         elem_size) +
                       RingAllgatherCost(torus_x, place.col, shards, elem_size);
  return place.takes_fold ? cost + fold : cost;
}

}  // namespace fusecomm

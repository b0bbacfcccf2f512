// Shared-memory all-reduce, for a communicator whose ranks all run on one node: no messages,
// each rank's data crosses memory a fixed number of times whatever the rank count. Per piece of
// up to slot_bytes a rank:
//   1. every rank copies its piece into its own slot;                          -- synchronize
//   2. rank r reduces block r of the piece over every rank's slot, in place in its own slot;
//                                                                              -- synchronize
//   3. every rank copies every reduced block out of its owner's slot.
// Each block is reduced by exactly one rank, so every rank gets the same bits. Pieces alternate
// between the segment's two slot sets: a rank that reaches step 1 of piece k+2 has passed the
// first synchronization of piece k+1, which every rank reached only after step 3 of piece k,
// so nobody still reads the slot set it overwrites.
#include <algorithm>
#include <cstring>

#include "collectives/allreduce.h"
#include "common/errors.h"
#include "reduce/cpu_reduce.h"
#include "transport/shared_segment.h"

namespace fusecomm {

void SharedMemoryAllreduce(Comm& comm, void* buf, size_t count, DataType dtype, ReduceOp op) {
  SharedSegment* segment = comm.shared_segment();
  if (segment == nullptr) {
    throw CollectiveError("the shared-memory all-reduce needs every rank on one node");
  }
  const int p = comm.size(), me = comm.rank();
  const size_t elem = DataTypeSize(dtype);
  const size_t piece_max = std::max<size_t>(1, segment->slot_bytes() / elem);
  char* data = static_cast<char*>(buf);
  for (size_t offset = 0; offset < count;) {
    const size_t piece = std::min(piece_max, count - offset);
    const int set = static_cast<int>(segment->pieces % 2);
    char* const here = data + offset * elem;
    std::memcpy(segment->slot(set, me), here, piece * elem);
    segment->Synchronize("shared-memory all-reduce, copying in");
    const std::vector<size_t> blocks = EvenBlockCounts(piece, p);
    std::vector<size_t> starts(p, 0);
    for (int q = 1; q < p; ++q) starts[q] = starts[q - 1] + blocks[q - 1];
    char* mine = segment->slot(set, me) + starts[me] * elem;
    for (int q = 0; q < p; ++q) {
      if (q == me) continue;
      CpuReduceInto(mine, segment->slot(set, q) + starts[me] * elem, blocks[me], dtype, op);
    }
    segment->Synchronize("shared-memory all-reduce, reducing");
    for (int q = 0; q < p; ++q) {
      std::memcpy(here + starts[q] * elem, segment->slot(set, q) + starts[q] * elem,
                  blocks[q] * elem);
    }
    comm.traffic().steps += 2;
    segment->pieces += 1;
    offset += piece;
  }
}

AlgorithmCost SharedMemoryAllreduceCost(int ranks, size_t count, size_t elem_size,
                                        size_t slot_bytes) {
  if (ranks <= 1 || count == 0) return {};
  const size_t piece_max = std::max<size_t>(1, slot_bytes / elem_size);
  const uint64_t pieces = (count + piece_max - 1) / piece_max;
  // What crosses memory besides this rank's own copy in: the others' shares of its block,
  // read to reduce, and the others' blocks, copied out; as much as a ring sends.
  const uint64_t others = static_cast<uint64_t>(count - EvenBlockCounts(count, ranks)[0]);
  return {2 * pieces, 2 * others * elem_size};
}

}  // namespace fusecomm

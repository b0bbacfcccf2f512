// Shared-memory all-reduce, for a communicator whose ranks all run on one node: no messages,
// each rank's data crosses memory a fixed number of times whatever the rank count.
//
// Through the slots, per piece of up to slot_bytes a rank:
//   1. every rank copies its piece into its own slot;                          -- synchronize
//   2. rank r reduces block r of the piece over every rank's slot, in place in its own slot;
//                                                                              -- synchronize
//   3. every rank copies every reduced block out of its owner's slot.
// Pieces alternate between the segment's two slot sets: a rank that reaches step 1 of piece
// k+2 has passed the first synchronization of piece k+1, which every rank reached only after
// step 3 of piece k, so nobody still reads the slot set it overwrites.
//
// Single copy, for messages of at least the segment's single_copy_min_bytes (the kernel lets
// a process read its peers' memory: process_vm_readv), the whole buffer at once:
//   1. every rank publishes its buffer's address;                              -- synchronize
//   2. rank r reads block r of every peer's buffer (through its own slot, a chunk at a time) and
//      reduces it into block r of its own buffer;                              -- synchronize
//   3. every rank reads every other block from its owner's buffer into its own;
//                                                                              -- synchronize
// so the buffer is copied once, not into and out of the slots. In step 2 each rank writes only
// its own block, which no peer reads until step 3; in step 3 it writes only the others'
// blocks, which no peer reads; the last synchronization keeps every buffer unchanged until all
// peers have read it. A rank's slots are free for scratch once the first synchronization has
// passed, since every peer has then finished the call before.
//
// Either way each block is reduced by exactly one rank, in the same order (its owner's share
// first, then the others' by rank), so every rank gets the same bits.
#include <algorithm>
#include <cstring>
#include <vector>

#include "collectives/allreduce.h"
#include "common/errors.h"
#include "reduce/cpu_reduce.h"
#include "transport/shared_segment.h"

namespace fusecomm {

namespace {

struct Blocks {
  std::vector<size_t> counts, starts;
};

Blocks SplitEvenly(size_t count, int ranks) {
  Blocks b{EvenBlockCounts(count, ranks), std::vector<size_t>(ranks, 0)};
  for (int q = 1; q < ranks; ++q) b.starts[q] = b.starts[q - 1] + b.counts[q - 1];
  return b;
}

bool UsesSingleCopy(size_t bytes, size_t single_copy_min_bytes) {
  return single_copy_min_bytes != SIZE_MAX && bytes >= single_copy_min_bytes;
}

void SingleCopyAllreduce(Comm& comm, SharedSegment& segment, char* data, size_t count,
                         DataType dtype, ReduceOp op) {
  const int p = comm.size(), me = comm.rank();
  const size_t elem = DataTypeSize(dtype);
  segment.PublishAddress(data);
  segment.Synchronize("shared-memory all-reduce, publishing buffers");
  const Blocks blocks = SplitEvenly(count, p);
  char* const scratch = segment.slot(0, me);
  const size_t chunk_max = std::max<size_t>(1, segment.slot_bytes() / elem);
  char* const mine = data + blocks.starts[me] * elem;
  for (size_t done = 0; done < blocks.counts[me];) {
    const size_t chunk = std::min(chunk_max, blocks.counts[me] - done);
    for (int q = 0; q < p; ++q) {
      if (q == me) continue;
      segment.ReadPeer(q, (blocks.starts[me] + done) * elem, scratch, chunk * elem,
                       "shared-memory all-reduce, reducing");
      CpuReduceInto(mine + done * elem, scratch, chunk, dtype, op);
    }
    done += chunk;
  }
  segment.Synchronize("shared-memory all-reduce, reducing");
  for (int q = 0; q < p; ++q) {
    if (q == me || blocks.counts[q] == 0) continue;
    segment.ReadPeer(q, blocks.starts[q] * elem, data + blocks.starts[q] * elem,
                     blocks.counts[q] * elem, "shared-memory all-reduce, copying out");
  }
  segment.Synchronize("shared-memory all-reduce, copying out");
  comm.traffic().steps += 3;
}

}  // namespace

void SharedMemoryAllreduce(Comm& comm, void* buf, size_t count, DataType dtype, ReduceOp op) {
  SharedSegment* segment = comm.shared_segment();
  if (segment == nullptr) {
    throw CollectiveError("the shared-memory all-reduce needs every rank on one node");
  }
  const int p = comm.size(), me = comm.rank();
  const size_t elem = DataTypeSize(dtype);
  if (count > 0 && UsesSingleCopy(count * elem, segment->single_copy_min_bytes())) {
    SingleCopyAllreduce(comm, *segment, static_cast<char*>(buf), count, dtype, op);
    return;
  }
  const size_t piece_max = std::max<size_t>(1, segment->slot_bytes() / elem);
  char* data = static_cast<char*>(buf);
  for (size_t offset = 0; offset < count;) {
    const size_t piece = std::min(piece_max, count - offset);
    const int set = static_cast<int>(segment->pieces % 2);
    char* const here = data + offset * elem;
    std::memcpy(segment->slot(set, me), here, piece * elem);
    segment->Synchronize("shared-memory all-reduce, copying in");
    const Blocks blocks = SplitEvenly(piece, p);
    char* mine = segment->slot(set, me) + blocks.starts[me] * elem;
    for (int q = 0; q < p; ++q) {
      if (q == me) continue;
      CpuReduceInto(mine, segment->slot(set, q) + blocks.starts[me] * elem, blocks.counts[me],
                    dtype, op);
    }
    segment->Synchronize("shared-memory all-reduce, reducing");
    for (int q = 0; q < p; ++q) {
      std::memcpy(here + blocks.starts[q] * elem, segment->slot(set, q) + blocks.starts[q] * elem,
                  blocks.counts[q] * elem);
    }
    comm.traffic().steps += 2;
    segment->pieces += 1;
    offset += piece;
  }
}

AlgorithmCost SharedMemoryAllreduceCost(int ranks, size_t count, size_t elem_size,
                                        size_t slot_bytes, size_t single_copy_min_bytes) {
  if (ranks <= 1 || count == 0) return {};
  // What crosses memory besides this rank's own copy in: the others' shares of its block,
  // read to reduce, and the others' blocks, copied out; as much as a ring sends.
  const uint64_t others = static_cast<uint64_t>(count - EvenBlockCounts(count, ranks)[0]);
  if (UsesSingleCopy(count * elem_size, single_copy_min_bytes)) return {3, 2 * others * elem_size};
  const size_t piece_max = std::max<size_t>(1, slot_bytes / elem_size);
  const uint64_t pieces = (count + piece_max - 1) / piece_max;
  return {2 * pieces, 2 * others * elem_size};
}

}  // namespace fusecomm

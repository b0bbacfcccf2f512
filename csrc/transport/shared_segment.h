// Memory that every rank of a communicator maps, when all of them run on one node: for each
// rank two slots (so one piece can be filled while the last is still read), a phase counter
// the others watch, and its process id and a published buffer address, through which the
// others may read that buffer straight from its memory (Linux's cross-memory attach,
// process_vm_readv: one copy, where the slots take two). The transport creates it (MpiComm
// over MPI_Win_allocate_shared); the shared-memory all-reduce (collectives/shm_allreduce.cc)
// uses it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fusecomm {

class SharedSegment {
 public:
  // Bytes the segment needs for `ranks` ranks with slots of `slot_bytes`.
  static size_t Bytes(int ranks, size_t slot_bytes);
  // `base`: the mapped segment of Bytes(size, slot_bytes), the same memory on every rank. Each
  // rank zeroes its own counter here; the creator must make every rank construct its view
  // before any rank uses it (a barrier).
  SharedSegment(char* base, int rank, int size, size_t slot_bytes);

  size_t slot_bytes() const { return slot_bytes_; }
  char* slot(int set, int rank) const;

  // Cross-memory reads. Messages of at least single_copy_min_bytes() go through them; the
  // transport raises it from "never" (SIZE_MAX) after ProbePeerReads succeeded on every rank.
  size_t single_copy_min_bytes() const { return single_copy_min_bytes_; }
  void set_single_copy_min_bytes(size_t bytes) { single_copy_min_bytes_ = bytes; }
  // Makes `address` (in this process) the one the others read from, once they have seen this
  // rank's next phase.
  void PublishAddress(const void* address);
  // Copies `bytes` at offset `offset` of the address rank `peer` published into `out`. A
  // failure (the peer is gone, the kernel forbids it) aborts the transport and throws.
  void ReadPeer(int peer, size_t offset, void* out, size_t bytes, const char* what) const;
  // Lets the peers read this process's memory where Yama's ptrace scope would allow only its
  // ancestors (Open MPI's shared-memory transport does the same for its single copy).
  static void AllowPeerReads();
  // Whether this rank can read every peer's published `expected` value (each rank published the
  // address of its own copy): false where the kernel or a sandbox forbids cross-memory reads.
  // Collective in the sense that every rank must have published before any probes.
  bool ProbePeerReads(uint64_t expected) const;

  // Publishes that this rank has finished its next phase, then waits until every rank has
  // finished it too. Phases are counted over the segment's life, the same on every rank, since
  // every rank runs the same collectives in the same order. The wait spins briefly, then yields
  // the core; it throws CollectiveError when the transport is aborted (the liveness heartbeat
  // declared a peer dead or frozen) and aborts the transport when no peer moved for the
  // calling thread's data-wait bound (DataWaitBound).
  void Synchronize(const char* what);
  // The two halves of Synchronize, for callers that wait their own way (the negotiation, which
  // may wait long for a peer's next cycle, sleeps): publishes this rank's next phase and
  // returns it; whether every rank has published `phase`.
  uint64_t Arrive();
  bool AllArrived(uint64_t phase) const;
  // Uses of the slots so far (pieces, negotiations): selects the slot set of the next one.
  uint64_t pieces = 0;

 private:
  uint64_t* counter(int rank) const;
  // The rank's process id and published address, beside its counter.
  int64_t* process_id(int rank) const;
  uint64_t* published(int rank) const;

  char* base_;
  int rank_;
  int size_;
  size_t slot_bytes_;
  uint64_t phase_ = 0;
  size_t single_copy_min_bytes_ = SIZE_MAX;
};

}  // namespace fusecomm

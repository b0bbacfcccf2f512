// Memory that every rank of a communicator maps, when all of them run on one node: for each
// rank two slots (so one piece can be filled while the last is still read) and a phase counter
// the others watch. The transport creates it (MpiComm over MPI_Win_allocate_shared); the
// shared-memory all-reduce (collectives/shm_allreduce.cc) uses it.
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

  char* base_;
  int rank_;
  int size_;
  size_t slot_bytes_;
  uint64_t phase_ = 0;
};

}  // namespace fusecomm

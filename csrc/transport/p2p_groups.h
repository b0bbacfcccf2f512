// Turns the MPI-style Isend/Irecv/Wait of the algorithms in csrc/collectives into NCCL groups.
//
// NCCL runs a group's sends and receives together, but one group after another on a stream, and
// a send completes only while the peer's matching receive is in the peer's running group. So the
// grouping must be the same "round" on both sides of every message, or ranks wait on each other
// in a cycle (the ring's first block sent in one group while the peer receives it over several
// groups deadlocks). The rule: nothing is issued until something is waited on; waiting on a
// receive issues one group holding that receive (with any earlier ones from the same peer) and
// the oldest queued send to each peer; waiting on a send issues such groups of one send per peer
// until it has gone. In the algorithms' patterns (rings, pairwise exchanges, trees, folds) the
// k-th message of a link then sits in the k-th group of both ends, whatever the segment counts.
// tests/cpp/test_p2p_groups.cc runs every algorithm through this rule against a model
// of NCCL's group semantics and fails on any deadlock.
//
// Waiting never blocks the host: an issued group is ordered on the stream before everything the
// algorithm launches afterwards (reductions, the next groups).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

namespace fusecomm {

struct P2pOp {
  bool send = false;
  void* buffer = nullptr;
  size_t bytes = 0;
  int peer = 0;
  uint64_t id = 0;
};

class P2pGroups {
 public:
  // issue_group(ops): start one group of ops, in this order (ops to one peer keep their order).
  explicit P2pGroups(std::function<void(const std::vector<P2pOp>&)> issue_group);

  // Queues an operation; returns its id for Issue/Issued.
  uint64_t Add(bool send, void* buffer, size_t bytes, int peer);
  // Issues groups until operation `id` has been issued (no-op when it already was).
  void Issue(uint64_t id);
  // Issues everything still queued (before a native collective, a split or a synchronisation).
  void IssueAll();
  bool Issued(uint64_t id) const;
  bool empty() const { return queued_.empty(); }

 private:
  void IssueOneGroup(const P2pOp* target_recv);

  std::function<void(const std::vector<P2pOp>&)> issue_group_;
  std::deque<P2pOp> queued_;
  uint64_t next_id_ = 0;
};

}  // namespace fusecomm

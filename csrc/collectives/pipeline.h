// Segmented point-to-point moves shared by the all-reduce algorithms (internal to
// csrc/collectives): a buffer travels as messages of at most segment_bytes, so the next segment
// is on the wire while the current one is reduced or forwarded.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "common/types.h"
#include "transport/comm.h"

namespace fusecomm {

// One tag per kind of round, so that a message can only ever match a receive of its own kind.
enum CollectiveTag : int {
  kTagRingReduceScatter = 101,
  kTagRingAllgather = 102,
  kTagHalving = 103,
  kTagDoubling = 104,
  kTagFold = 105,
  kTagUnfold = 106,
  kTagTreeReduce = 107,
  kTagTreeBroadcast = 108,
  kTagAdasumDots = 109,
};

// The round a tag belongs to, for error messages ("ring reduce-scatter").
const char* CollectiveTagName(int tag);

// A slice of a buffer that travels as one message.
struct Segment {
  char* data;
  size_t count;  // elements
};

using PendingSends = std::vector<std::unique_ptr<CommRequest>>;

// Appends count elements at `data` cut into segments of at most segment_bytes (at least one
// element each); appends nothing for count == 0, so an empty block costs no message.
void AppendSegments(std::vector<Segment>* segments, const void* data, size_t count,
                    size_t elem_size, size_t segment_bytes);

void StartSends(Comm& comm, const std::vector<Segment>& segments, size_t elem_size, int peer,
                int tag, PendingSends* pending);
// Completes the sends; a failed wait throws a CollectiveError naming the round (`tag`).
void WaitAll(PendingSends* pending, int tag);

// Receives `segments` from `peer` in the order the peer sends them, with a few receives posted
// ahead. With reduce_op each segment lands in scratch and is reduced into place; without, it
// lands in place directly. on_arrival(i), if given, runs as soon as segment i is in place.
// A failed wait throws a CollectiveError naming the round, the segment and the peer.
void ReceiveSegments(Comm& comm, const std::vector<Segment>& segments, DataType dtype,
                     std::optional<ReduceOp> reduce_op, int peer, int tag,
                     const std::function<void(size_t)>& on_arrival = {});

// Sends send_count elements at `send` to `to` while receiving recv_count elements from `from`
// into `recv` (reduced into it with reduce_op when given). A zero count means no message that
// way, so one-way moves pass 0 (and any peer) for the other side.
void Exchange(Comm& comm, const void* send, size_t send_count, int to, void* recv,
              size_t recv_count, int from, DataType dtype, std::optional<ReduceOp> reduce_op,
              int tag, size_t segment_bytes);

}  // namespace fusecomm

#include "collectives/pipeline.h"

#include <algorithm>
#include <string>

#include "common/errors.h"

namespace fusecomm {

namespace {
// Receives posted ahead: while segment i is reduced, segments i+1.. are already on the wire.
// Two is enough to hide the reduction; more only adds scratch (measured: no gain from 4).
constexpr size_t kReceiveDepth = 2;
}  // namespace

const char* CollectiveTagName(int tag) {
  switch (tag) {
    case kTagRingReduceScatter: return "ring reduce-scatter";
    case kTagRingAllgather: return "ring all-gather";
    case kTagHalving: return "recursive halving";
    case kTagDoubling: return "recursive doubling";
    case kTagFold: return "fold into a power of two";
    case kTagUnfold: return "unfold from a power of two";
    case kTagTreeReduce: return "tree reduce";
    case kTagTreeBroadcast: return "tree broadcast";
  }
  return "point-to-point round";
}

void AppendSegments(std::vector<Segment>* segments, const void* data, size_t count,
                    size_t elem_size, size_t segment_bytes) {
  const size_t per_segment = std::max<size_t>(1, segment_bytes / elem_size);
  // Segments may be sent from or received into; the caller knows which.
  char* base = const_cast<char*>(static_cast<const char*>(data));
  for (size_t done = 0; done < count; done += per_segment) {
    segments->push_back({base + done * elem_size, std::min(per_segment, count - done)});
  }
}

void StartSends(Comm& comm, const std::vector<Segment>& segments, size_t elem_size, int peer,
                int tag, PendingSends* pending) {
  for (const Segment& s : segments) {
    pending->push_back(comm.Isend(s.data, s.count * elem_size, peer, tag));
  }
}

void WaitAll(PendingSends* pending, int tag) {
  try {
    for (auto& request : *pending) request->Wait();
  } catch (const CollectiveError& e) {
    throw CollectiveError(std::string(CollectiveTagName(tag)) + ": " + e.what());
  }
  pending->clear();
}

void ReceiveSegments(Comm& comm, const std::vector<Segment>& segments, DataType dtype,
                     std::optional<ReduceOp> reduce_op, int peer, int tag,
                     const std::function<void(size_t)>& on_arrival) {
  if (segments.empty()) return;
  const size_t elem = DataTypeSize(dtype);
  const size_t depth = std::min(kReceiveDepth, segments.size());
  MemoryOps& memory = comm.memory();

  // A reduction needs the incoming data beside the local data: one scratch slot per receive
  // in flight, reused round-robin.
  size_t slot_bytes = 0;
  std::shared_ptr<void> scratch;
  if (reduce_op) {
    for (const Segment& s : segments) slot_bytes = std::max(slot_bytes, s.count * elem);
    scratch = memory.Allocate(depth * slot_bytes);
  }
  auto landing = [&](size_t i) -> char* {
    return reduce_op ? static_cast<char*>(scratch.get()) + (i % depth) * slot_bytes
                     : segments[i].data;
  };

  std::vector<std::unique_ptr<CommRequest>> in_flight(depth);
  auto post = [&](size_t i) {
    in_flight[i % depth] = comm.Irecv(landing(i), segments[i].count * elem, peer, tag);
  };
  for (size_t i = 0; i < depth; ++i) post(i);
  for (size_t i = 0; i < segments.size(); ++i) {
    try {
      in_flight[i % depth]->Wait();
    } catch (const CollectiveError& e) {
      throw CollectiveError(std::string(CollectiveTagName(tag)) + ": segment " +
                            std::to_string(i + 1) + " of " + std::to_string(segments.size()) +
                            " from rank " + std::to_string(peer) + ": " + e.what());
    }
    if (reduce_op) {
      memory.ReduceInto(segments[i].data, landing(i), segments[i].count, dtype, *reduce_op);
    }
    // Forward first: the next rank is waiting on it; the slot is reposted right after.
    if (on_arrival) on_arrival(i);
    if (i + depth < segments.size()) post(i + depth);
  }
}

void Exchange(Comm& comm, const void* send, size_t send_count, int to, void* recv,
              size_t recv_count, int from, DataType dtype, std::optional<ReduceOp> reduce_op,
              int tag, size_t segment_bytes) {
  const size_t elem = DataTypeSize(dtype);
  std::vector<Segment> outgoing;
  std::vector<Segment> incoming;
  AppendSegments(&outgoing, send, send_count, elem, segment_bytes);
  AppendSegments(&incoming, recv, recv_count, elem, segment_bytes);
  PendingSends pending;
  StartSends(comm, outgoing, elem, to, tag, &pending);
  ReceiveSegments(comm, incoming, dtype, reduce_op, from, tag);
  WaitAll(&pending, tag);
}

}  // namespace fusecomm

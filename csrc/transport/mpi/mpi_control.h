// ControlChannel over its own MPI communicator. Waits poll with back-off instead of blocking in
// MPI, so an idle engine thread does not spin a core that training needs.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "transport/control_channel.h"

namespace fusecomm {

class MpiComm;

class MpiControlChannel : public ControlChannel {
 public:
  explicit MpiControlChannel(MPI_Comm comm);  // takes ownership
  ~MpiControlChannel() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void AllreduceNegotiation(std::vector<uint64_t>& words, NegotiationSlot& slot) override;
  std::vector<std::vector<char>> GatherToRoot(const std::vector<char>& mine) override;
  void BroadcastFromRoot(std::vector<char>& bytes) override;
  int64_t AllreduceMin(int64_t value) override;
  // Collective: when every rank runs on this node, the negotiation's exchange goes through a
  // shared segment (slots of `slot_bytes`) instead of messages; messages longer than a slot
  // still go point-to-point.
  void AttachSharedSegment(size_t slot_bytes);

 private:
  // Completes `count` requests of a control collective (see WaitUntil).
  void Wait(MPI_Request* requests, const char* call, int count = 1);
  // Polls `done()` until true: spinning first (a negotiation is usually microseconds), then
  // sleeping with back-off, calling the slow-wait report, if set, while the wait lasts; throws
  // as soon as the transport is aborted.
  template <typename Done>
  void WaitUntil(Done done, const char* call);
  // The negotiation through the shared segment; false if the message does not fit a slot.
  bool AllreduceNegotiationShared(std::vector<uint64_t>& words, NegotiationSlot& slot);

  MPI_Comm comm_;
  std::unique_ptr<MpiComm> shared_;  // a duplicate of comm_ holding the segment, or null
  int rank_ = 0;
  int size_ = 1;
  std::vector<uint64_t> negotiation_buffer_;  // this rank's message, then a peer's
};

}  // namespace fusecomm

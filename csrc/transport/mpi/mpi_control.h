// ControlChannel over its own MPI communicator. Waits poll with back-off instead of blocking in
// MPI, so an idle engine thread does not spin a core that training needs.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <vector>

#include "transport/control_channel.h"

namespace fusecomm {

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

 private:
  // Completes `count` requests of a control collective: WaitPolling with back-off, or with a
  // slow-wait report set, a poll that calls it while the wait lasts.
  void Wait(MPI_Request* requests, const char* call, int count = 1);

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  std::vector<uint64_t> negotiation_buffer_;  // this rank's message, then a peer's
};

}  // namespace fusecomm

// ControlChannel over its own MPI communicator. Waits poll with back-off instead of blocking in
// MPI, so an idle engine thread does not spin a core that training needs.
#pragma once

#include <mpi.h>

#include <map>

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
  // Completes a control collective: WaitWithBackoff, or with a slow-wait report set, a poll
  // that calls it while the wait lasts.
  void Wait(MPI_Request* request, const char* call);

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  // The negotiation message travels as ONE element of a contiguous type of its words, so MPI
  // never hands the combining op a piece that splits the slot. One type per length, kept.
  MPI_Op negotiation_op_ = MPI_OP_NULL;
  std::map<int, MPI_Datatype> negotiation_types_;
  std::vector<uint64_t> negotiation_buffer_;
};

// Completes `request`, spinning briefly and then sleeping in growing steps (up to 1 ms).
void WaitWithBackoff(MPI_Request* request, const char* call);

}  // namespace fusecomm

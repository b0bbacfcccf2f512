// The engine's control traffic (negotiation), kept apart from the data plane so that a
// negotiation message can never be confused with a collective's payload.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "transport/negotiation_slot.h"

namespace fusecomm {

class ControlChannel {
 public:
  virtual ~ControlChannel() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The negotiation's one all-reduce, in place: bitwise AND over all ranks of `words` (the
  // response-cache agreement) and CombineNegotiationSlots of `slot`.
  virtual void AllreduceNegotiation(std::vector<uint64_t>& words, NegotiationSlot& slot) = 0;
  // Rank 0 receives every rank's bytes (index = rank); other ranks get an empty vector.
  virtual std::vector<std::vector<char>> GatherToRoot(const std::vector<char>& mine) = 0;
  // Rank 0's bytes replace everybody's.
  virtual void BroadcastFromRoot(std::vector<char>& bytes) = 0;
  // Minimum of one integer over all ranks.
  virtual int64_t AllreduceMin(int64_t value) = 0;

  // Peers' engine threads run a negotiation every cycle even while their Python computes, so a
  // collective above that waits long means a peer's process is frozen, hung or dead. Once one
  // has waited `after_seconds` (and again every `after_seconds`), `report` is called from
  // inside the wait with the time waited and the peers the transport suspects ("" if none).
  using SlowWaitReport = std::function<void(double waited_seconds, const std::string& suspects)>;
  void SetSlowWaitReport(double after_seconds, SlowWaitReport report) {
    slow_after_seconds_ = after_seconds;
    slow_report_ = std::move(report);
  }

 protected:
  double slow_after_seconds_ = 0;
  SlowWaitReport slow_report_;
};

}  // namespace fusecomm

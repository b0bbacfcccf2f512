// The engine's control traffic (negotiation), kept apart from the data plane so that a
// negotiation message can never be confused with a collective's payload.
#pragma once

#include <cstdint>
#include <vector>

namespace fusecomm {

class ControlChannel {
 public:
  virtual ~ControlChannel() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In-place bitwise AND over all ranks (the response-cache agreement).
  virtual void AllreduceBitwiseAnd(std::vector<uint64_t>& words) = 0;
  // Rank 0 receives every rank's bytes (index = rank); other ranks get an empty vector.
  virtual std::vector<std::vector<char>> GatherToRoot(const std::vector<char>& mine) = 0;
  // Rank 0's bytes replace everybody's.
  virtual void BroadcastFromRoot(std::vector<char>& bytes) = 0;
  // Minimum of one integer over all ranks.
  virtual int64_t AllreduceMin(int64_t value) = 0;
};

}  // namespace fusecomm

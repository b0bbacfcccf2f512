// Responses already negotiated, by name. Every rank applies the same insertions, uses and
// evictions in the same order, so a position means the same tensor on every rank and readiness
// can be agreed with one bit per position.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/request.h"

namespace fusecomm {

// Whether two ranks' specs describe the same collective (allgather and alltoall may differ in
// their first dimension). On disagreement, `field` names what differs.
bool SpecsAgree(const TensorSpec& a, const TensorSpec& b, std::string* field = nullptr);

class ResponseCache {
 public:
  explicit ResponseCache(size_t capacity) : capacity_(capacity) {}

  bool enabled() const { return capacity_ > 0; }
  // Position of `name`, or -1.
  int Find(const std::string& name) const;
  const Response& At(int position) const { return entries_[position].response; }
  // Positions in use or once used: the width of the agreement bit vector.
  size_t num_positions() const { return entries_.size(); }
  void Erase(int position);
  // Inserts (or replaces) a response; evicts the least recently used entry when full.
  void Put(const Response& response);
  // Marks a position used by this cycle's execution (for eviction order).
  void Touch(int position);

 private:
  struct Entry {
    Response response;
    bool valid = false;
    uint64_t last_use = 0;
  };
  size_t capacity_;
  uint64_t clock_ = 0;
  size_t live_ = 0;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, int> by_name_;
};

}  // namespace fusecomm

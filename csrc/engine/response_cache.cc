#include "engine/response_cache.h"

namespace fusecomm {

namespace {
bool FirstDimensionMayDiffer(OpType op) {
  return op == OpType::kAllgather || op == OpType::kAlltoall;
}
}  // namespace

bool SpecsAgree(const TensorSpec& a, const TensorSpec& b, std::string* field) {
  auto differ = [field](const char* what) {
    if (field) *field = what;
    return false;
  };
  if (a.argument_error != b.argument_error) return differ("argument errors");
  if (a.op_type != b.op_type) return differ("operations");
  if (a.dtype != b.dtype) return differ("data types");
  // CPU or GPU must agree; the GPU's ordinal is each rank's own (usually its local rank).
  if ((a.device < 0) != (b.device < 0)) return differ("devices");
  bool reduces = a.op_type == OpType::kAllreduce || a.op_type == OpType::kReducescatter;
  if (reduces && a.reduce_op != b.reduce_op) return differ("reduce ops");
  if (reduces && (a.prescale != b.prescale || a.postscale != b.postscale)) {
    return differ("scale factors");
  }
  if (a.op_type == OpType::kBroadcast && a.root != b.root) return differ("root ranks");
  if (a.op_type == OpType::kAllreduce && a.algorithm != b.algorithm) return differ("algorithms");
  if (FirstDimensionMayDiffer(a.op_type)) {
    if (a.shape.size() != b.shape.size() || a.shape.empty() ||
        !std::equal(a.shape.begin() + 1, a.shape.end(), b.shape.begin() + 1)) {
      return differ("shapes");
    }
  } else if (a.op_type != OpType::kBarrier && a.shape != b.shape) {
    return differ("shapes");
  }
  return true;
}

int ResponseCache::Find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? -1 : it->second;
}

void ResponseCache::Erase(int position) {
  Entry& e = entries_[position];
  if (!e.valid) return;
  by_name_.erase(e.response.spec.name);
  e.valid = false;
  --live_;
}

void ResponseCache::Put(const Response& response) {
  if (!enabled()) return;
  int existing = Find(response.spec.name);
  if (existing >= 0) Erase(existing);
  if (live_ >= capacity_) {
    int oldest = -1;
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (entries_[i].valid &&
          (oldest < 0 || entries_[i].last_use < entries_[oldest].last_use)) {
        oldest = static_cast<int>(i);
      }
    }
    Erase(oldest);
  }
  // Lowest free position keeps the bit vector short.
  int position = -1;
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (!entries_[i].valid) {
      position = static_cast<int>(i);
      break;
    }
  }
  if (position < 0) {
    entries_.emplace_back();
    position = static_cast<int>(entries_.size()) - 1;
  }
  Entry& e = entries_[position];
  e.response = response;
  e.valid = true;
  e.last_use = ++clock_;
  by_name_[response.spec.name] = position;
  ++live_;
}

void ResponseCache::Touch(int position) { entries_[position].last_use = ++clock_; }

}  // namespace fusecomm

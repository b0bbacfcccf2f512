#include "engine/fusion_planner.h"

#include <tuple>

namespace fusecomm {

namespace {

bool Fusable(const Response& r, size_t threshold) {
  return r.error.empty() && r.spec.op_type == OpType::kAllreduce &&
         r.spec.num_bytes() <= threshold;
}

bool SameKind(const TensorSpec& a, const TensorSpec& b) {
  return std::tie(a.dtype, a.reduce_op, a.prescale, a.postscale, a.device, a.algorithm) ==
         std::tie(b.dtype, b.reduce_op, b.prescale, b.postscale, b.device, b.algorithm);
}

}  // namespace

std::vector<std::vector<size_t>> PlanFusion(const std::vector<Response>& responses,
                                            size_t threshold_bytes) {
  std::vector<std::vector<size_t>> groups;
  std::vector<size_t> group_bytes;
  std::vector<size_t> open;  // groups still accepting members
  for (size_t i = 0; i < responses.size(); ++i) {
    const Response& r = responses[i];
    if (!Fusable(r, threshold_bytes)) {
      groups.push_back({i});
      group_bytes.push_back(0);
      continue;
    }
    size_t bytes = r.spec.num_bytes();
    bool placed = false;
    for (size_t g : open) {
      const TensorSpec& first = responses[groups[g][0]].spec;
      if (SameKind(first, r.spec) && group_bytes[g] + bytes <= threshold_bytes) {
        groups[g].push_back(i);
        group_bytes[g] += bytes;
        placed = true;
        break;
      }
    }
    if (!placed) {
      open.push_back(groups.size());
      groups.push_back({i});
      group_bytes.push_back(bytes);
    }
  }
  return groups;
}

}  // namespace fusecomm

// Which ready responses run as one collective: all-reduces that agree on everything but name
// and shape are packed together up to the fusion threshold (Horovod's tensor fusion).
#pragma once

#include <cstddef>
#include <vector>

#include "engine/request.h"

namespace fusecomm {

// Groups of indices into `responses`, in the order of each group's first member. Error
// responses and non-all-reduce operations form groups of one.
std::vector<std::vector<size_t>> PlanFusion(const std::vector<Response>& responses,
                                            size_t threshold_bytes);

}  // namespace fusecomm

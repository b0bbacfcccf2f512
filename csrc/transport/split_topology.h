// Builds a Topology's sub-communicators by splitting any Comm, given the node of every rank.
// Shared by the MPI transport (at process-set creation) and the NCCL transport (whose
// communicators mirror the MPI ones, so every algorithm sees the same grid on either).
#pragma once

#include <vector>

#include "transport/topology.h"

namespace fusecomm {

// node_of[r]: an id of rank r's node, the same on every rank (e.g. the node's lowest rank).
// torus_x_setting: FUSECOMM_TORUS_X (0: the widest node). Collective over `global`; moves no
// data on it, so `global` may be a device communicator. Leaves topo.global and cost_model unset.
Topology SplitTopology(Comm& global, const std::vector<int>& node_of, int torus_x_setting);

}  // namespace fusecomm

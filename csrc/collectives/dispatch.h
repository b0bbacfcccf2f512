// Runs an all-reduce with the algorithm asked for, resolving `auto` per buffer.
#pragma once

#include <cstddef>

#include "collectives/topology.h"
#include "common/types.h"

namespace fusecomm {

// The algorithm `auto` resolves to for `bytes` on this topology.
AllreduceAlgorithm ChooseAllreduceAlgorithm(const Topology& topo, size_t bytes);

// In place on `buf`; `op` is never kAverage. Returns the algorithm that ran.
AllreduceAlgorithm RunAllreduce(const Topology& topo, AllreduceAlgorithm algorithm, void* buf,
                                size_t count, DataType dtype, ReduceOp op);

}  // namespace fusecomm

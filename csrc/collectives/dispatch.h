// Runs an all-reduce with the algorithm asked for, resolving `auto` per buffer.
#pragma once

#include <cstddef>

#include "collectives/topology.h"
#include "common/types.h"

namespace fusecomm {

// The algorithm `auto` resolves to for `bytes` of `dtype` on this topology: the tuner's
// measured choice where it has measured this size class, else the cost model's. Not collective.
AllreduceAlgorithm ChooseAllreduceAlgorithm(const Topology& topo, size_t bytes, DataType dtype);

// The same, but collective over topo.global (every rank, for the same buffer): with a tuner, a
// size class seen for the first time is measured now.
AllreduceAlgorithm ResolveAutoAllreduce(const Topology& topo, size_t bytes, DataType dtype);

// In place on `buf`; `op` is never kAverage. Returns the algorithm that ran.
AllreduceAlgorithm RunAllreduce(const Topology& topo, AllreduceAlgorithm algorithm, void* buf,
                                size_t count, DataType dtype, ReduceOp op);

}  // namespace fusecomm

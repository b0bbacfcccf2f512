#include "collectives/dispatch.h"

#include "collectives/allreduce.h"
#include "collectives/cost_model.h"
#include "common/errors.h"

namespace fusecomm {

AllreduceAlgorithm ChooseAllreduceAlgorithm(const Topology& topo, size_t bytes, DataType dtype) {
  if (topo.tuner) {
    if (auto measured = topo.tuner->Lookup(bytes, dtype)) return *measured;
  }
  return ChooseByCost(topo.cost_model, topo, bytes);
}

AllreduceAlgorithm ResolveAutoAllreduce(const Topology& topo, size_t bytes, DataType dtype) {
  return topo.tuner ? topo.tuner->Choose(topo, bytes, dtype)
                    : ChooseByCost(topo.cost_model, topo, bytes);
}

AllreduceAlgorithm RunAllreduce(const Topology& topo, AllreduceAlgorithm algorithm, void* buf,
                                size_t count, DataType dtype, ReduceOp op) {
  if (algorithm == AllreduceAlgorithm::kAuto) {
    algorithm = ResolveAutoAllreduce(topo, count * DataTypeSize(dtype), dtype);
  }
  Comm& comm = *topo.global;
  if (algorithm == AllreduceAlgorithm::kNative && !comm.NativeReductionSupports(dtype, op)) {
    algorithm = AllreduceAlgorithm::kRing;
  }
  switch (algorithm) {
    case AllreduceAlgorithm::kRing:
      RingAllreduce(comm, buf, count, dtype, op);
      break;
    case AllreduceAlgorithm::kRecursiveHalvingDoubling:
      RecursiveHalvingDoublingAllreduce(comm, buf, count, dtype, op);
      break;
    case AllreduceAlgorithm::kHierarchical:
      HierarchicalAllreduce(topo, buf, count, dtype, op);
      break;
    case AllreduceAlgorithm::kHierarchicalScatter:
      HierarchicalScatterAllreduce(topo, buf, count, dtype, op);
      break;
    case AllreduceAlgorithm::kTorus2D:
      Torus2DAllreduce(topo, buf, count, dtype, op);
      break;
    case AllreduceAlgorithm::kNative:
    case AllreduceAlgorithm::kAuto:
      comm.NativeAllreduce(buf, count, dtype, op);
      algorithm = AllreduceAlgorithm::kNative;
      break;
  }
  return algorithm;
}

}  // namespace fusecomm

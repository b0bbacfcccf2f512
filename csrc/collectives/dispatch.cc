#include "collectives/dispatch.h"

#include "collectives/allreduce.h"
#include "common/errors.h"

namespace fusecomm {

std::vector<TunedClass> AllreduceSelector::TunedClasses() const {
  return tuner_ ? tuner_->Classes() : std::vector<TunedClass>{};
}

AllreduceAlgorithm AllreduceSelector::Choose(const Topology& topo, AllreduceAlgorithm requested,
                                             size_t bytes, DataType dtype) const {
  if (requested != AllreduceAlgorithm::kAuto) return requested;
  return tuner_ ? tuner_->Choose(topo, model_, bytes, dtype) : ChooseByCost(model_, topo, bytes);
}

AllreduceAlgorithm AllreduceSelector::Preview(const Topology& topo, size_t bytes,
                                              DataType dtype) const {
  if (tuner_) {
    if (auto measured = tuner_->Lookup(bytes, dtype)) return *measured;
  }
  return ChooseByCost(model_, topo, bytes);
}

double AllreduceSelector::PredictSeconds(const Topology& topo, AllreduceAlgorithm algorithm,
                                         size_t bytes) const {
  if (algorithm == AllreduceAlgorithm::kAuto) algorithm = Preview(topo, bytes, DataType::kFloat32);
  return model_.Predict(algorithm, topo, bytes);
}

AllreduceAlgorithm RunAllreduce(const Topology& topo, AllreduceAlgorithm algorithm, void* buf,
                                size_t count, DataType dtype, ReduceOp op) {
  Comm& comm = *topo.global;
  if (algorithm == AllreduceAlgorithm::kNative && !comm.NativeReductionSupports(dtype, op)) {
    algorithm = AllreduceAlgorithm::kRing;
  }
  // Ranks on several nodes, or a transport without shared memory (NCCL): every rank sees the
  // same, so every rank falls back alike.
  if (algorithm == AllreduceAlgorithm::kSharedMemory && comm.shared_segment() == nullptr) {
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
      comm.NativeAllreduce(buf, count, dtype, op);
      break;
    case AllreduceAlgorithm::kSharedMemory:
      SharedMemoryAllreduce(comm, buf, count, dtype, op);
      break;
    case AllreduceAlgorithm::kAuto:
      // Every rank must run the same algorithm, so `auto` is resolved once, by the selector,
      // before the collective starts; reaching here is a bug in the caller.
      throw CollectiveError("RunAllreduce was given 'auto': the selector resolves it first");
  }
  return algorithm;
}

}  // namespace fusecomm

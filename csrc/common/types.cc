#include "common/types.h"

#include "common/errors.h"

namespace fusecomm {

size_t DataTypeSize(DataType dtype) {
  switch (dtype) {
    case DataType::kUInt8:
    case DataType::kInt8:
    case DataType::kBool:
      return 1;
    case DataType::kInt16:
    case DataType::kUInt16:
    case DataType::kFloat16:
    case DataType::kBFloat16:
      return 2;
    case DataType::kInt32:
    case DataType::kFloat32:
      return 4;
    case DataType::kInt64:
    case DataType::kFloat64:
      return 8;
  }
  throw InvalidArgument("unknown data type " + std::to_string(static_cast<int>(dtype)));
}

const char* DataTypeName(DataType dtype) {
  switch (dtype) {
    case DataType::kUInt8: return "uint8";
    case DataType::kInt8: return "int8";
    case DataType::kInt32: return "int32";
    case DataType::kInt64: return "int64";
    case DataType::kFloat16: return "float16";
    case DataType::kBFloat16: return "bfloat16";
    case DataType::kFloat32: return "float32";
    case DataType::kFloat64: return "float64";
    case DataType::kBool: return "bool";
    case DataType::kInt16: return "int16";
    case DataType::kUInt16: return "uint16";
  }
  return "unknown";
}

bool IsFloatingPoint(DataType dtype) {
  return dtype == DataType::kFloat16 || dtype == DataType::kBFloat16 ||
         dtype == DataType::kFloat32 || dtype == DataType::kFloat64;
}

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "Sum";
    case ReduceOp::kAverage: return "Average";
    case ReduceOp::kMin: return "Min";
    case ReduceOp::kMax: return "Max";
    case ReduceOp::kProduct: return "Product";
    case ReduceOp::kAdasum: return "Adasum";
  }
  return "unknown";
}

const char* OpTypeName(OpType op) {
  switch (op) {
    case OpType::kAllreduce: return "allreduce";
    case OpType::kAllgather: return "allgather";
    case OpType::kBroadcast: return "broadcast";
    case OpType::kReducescatter: return "reducescatter";
    case OpType::kAlltoall: return "alltoall";
    case OpType::kBarrier: return "barrier";
    case OpType::kJoin: return "join";
  }
  return "unknown";
}

const char* AllreduceAlgorithmName(AllreduceAlgorithm algorithm) {
  switch (algorithm) {
    case AllreduceAlgorithm::kAuto: return "auto";
    case AllreduceAlgorithm::kRing: return "ring";
    case AllreduceAlgorithm::kRecursiveHalvingDoubling: return "rhd";
    case AllreduceAlgorithm::kHierarchical: return "hierarchical";
    case AllreduceAlgorithm::kHierarchicalScatter: return "hierarchical_scatter";
    case AllreduceAlgorithm::kTorus2D: return "torus2d";
    case AllreduceAlgorithm::kNative: return "native";
    case AllreduceAlgorithm::kSharedMemory: return "shm";
  }
  return "unknown";
}

AllreduceAlgorithm ParseAllreduceAlgorithm(const std::string& name) {
  if (name == "auto" || name.empty()) return AllreduceAlgorithm::kAuto;
  if (name == "ring") return AllreduceAlgorithm::kRing;
  if (name == "rhd") return AllreduceAlgorithm::kRecursiveHalvingDoubling;
  if (name == "hierarchical") return AllreduceAlgorithm::kHierarchical;
  if (name == "hierarchical_scatter") return AllreduceAlgorithm::kHierarchicalScatter;
  if (name == "torus2d") return AllreduceAlgorithm::kTorus2D;
  if (name == "shm") return AllreduceAlgorithm::kSharedMemory;
  if (name == "mpi" || name == "nccl" || name == "native") return AllreduceAlgorithm::kNative;
  throw InvalidArgument("unknown all-reduce algorithm '" + name +
                        "': expected one of auto, ring, rhd, hierarchical, hierarchical_scatter, "
                        "torus2d, shm, mpi");
}

void CheckDataType(int32_t value) {
  if (value < 0 || value >= kNumDataTypes) {
    throw InvalidArgument("unsupported data type code " + std::to_string(value));
  }
}

void CheckReduceOp(int32_t value) {
  if (value < 0 || value > static_cast<int32_t>(ReduceOp::kAdasum)) {
    throw InvalidArgument("unknown reduce op code " + std::to_string(value));
  }
}

bool ReduceOpSupported(DataType dtype, ReduceOp op) {
  // Average of booleans has no meaning; Adasum needs real vectors (dot products); everything
  // else is defined (bool sum is logical or).
  if (op == ReduceOp::kAdasum) return IsFloatingPoint(dtype);
  return !(dtype == DataType::kBool && op == ReduceOp::kAverage);
}

}  // namespace fusecomm

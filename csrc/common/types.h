// Element types, reduction ops and collective kinds shared by every layer of the core.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace fusecomm {

// Values are part of the binding ABI: the Python side passes them as integers.
enum class DataType : int32_t {
  kUInt8 = 0,
  kInt8 = 1,
  kInt32 = 2,
  kInt64 = 3,
  kFloat16 = 4,
  kBFloat16 = 5,
  kFloat32 = 6,
  kFloat64 = 7,
  kBool = 8,
  kInt16 = 9,
  kUInt16 = 10,
};
constexpr int kNumDataTypes = 11;

enum class ReduceOp : int32_t {
  kSum = 0,
  kAverage = 1,  // reduced as a sum; the engine applies 1/size in the copy-out
  kMin = 2,
  kMax = 3,
  kProduct = 4,
  kAdasum = 5,  // an all-reduce of its own (collectives/adasum_allreduce.cc), not element-wise
};

enum class OpType : int32_t {
  kAllreduce = 0,
  kAllgather = 1,
  kBroadcast = 2,
  kReducescatter = 3,
  kAlltoall = 4,
  kBarrier = 5,
  kJoin = 6,  // this rank is out of work; completes when every rank has joined
};

// Which all-reduce algorithm runs a (fused) buffer.
enum class AllreduceAlgorithm : int32_t {
  kAuto = 0,
  kRing = 1,
  kRecursiveHalvingDoubling = 2,
  kHierarchical = 3,            // reduce to node leader, ring across leaders, broadcast in node
  kHierarchicalScatter = 4,     // reduce-scatter in node, all-reduce across nodes per shard, all-gather
  kTorus2D = 5,
  kNative = 6,                  // the transport's own call (MPI_Allreduce, ncclAllReduce)
  kSharedMemory = 7,            // every rank on one node: reduced in a shared segment
};

size_t DataTypeSize(DataType dtype);
const char* DataTypeName(DataType dtype);
bool IsFloatingPoint(DataType dtype);
const char* ReduceOpName(ReduceOp op);
const char* OpTypeName(OpType op);
const char* AllreduceAlgorithmName(AllreduceAlgorithm algorithm);
// Accepts "auto", "ring", "rhd", "hierarchical", "hierarchical_scatter", "torus2d", "mpi", "nccl",
// "native"; throws InvalidArgument for anything else.
AllreduceAlgorithm ParseAllreduceAlgorithm(const std::string& name);

// Validation before a request enters the engine; throws InvalidArgument with a readable message.
void CheckDataType(int32_t value);
void CheckReduceOp(int32_t value);
// Whether `op` is defined on `dtype` (e.g. average of bool is not).
bool ReduceOpSupported(DataType dtype, ReduceOp op);

}  // namespace fusecomm

// NCCL, loaded at run time. The module links no NCCL: libnccl.so.2 is dlopen-ed on the first
// device collective (or version query), so a CUDA build imports, and runs on CPU tensors, on a
// machine without NCCL or a GPU. Where it is looked for, first match wins:
//   1. FUSECOMM_NCCL_LIBRARY (a path to libnccl.so.2);
//   2. the nvidia-nccl wheel beside the installed package (<site-packages>/nvidia/nccl/lib);
//   3. the NCCL library directory found at build time (NCCL_HOME or the build's wheel);
//   4. the dynamic loader's search path (LD_LIBRARY_PATH, system NCCL).
#pragma once

#include <nccl.h>

#include <string>

// The NCCL functions fusecomm calls (NCCL >= 2.18 for ncclCommSplit).
#define FUSECOMM_NCCL_FUNCTIONS(X) \
  X(ncclGetVersion) \
  X(ncclGetErrorString) \
  X(ncclGetLastError) \
  X(ncclGetUniqueId) \
  X(ncclCommInitRankConfig) \
  X(ncclCommSplit) \
  X(ncclCommDestroy) \
  X(ncclCommAbort) \
  X(ncclCommGetAsyncError) \
  X(ncclCommUserRank) \
  X(ncclCommCount) \
  X(ncclGroupStart) \
  X(ncclGroupEnd) \
  X(ncclSend) \
  X(ncclRecv) \
  X(ncclAllReduce) \
  X(ncclBroadcast) \
  X(ncclReduce) \
  X(ncclReduceScatter) \
  X(ncclAllGather)

namespace fusecomm {

struct NcclApi {
#define FUSECOMM_NCCL_POINTER(name) decltype(&::name) name = nullptr;
  FUSECOMM_NCCL_FUNCTIONS(FUSECOMM_NCCL_POINTER)
#undef FUSECOMM_NCCL_POINTER
  std::string path;  // the library that was loaded
};

// The loaded API; throws CollectiveError listing where NCCL was looked for when it is not found.
const NcclApi& Nccl();
// NCCL's version as "2.32.3", or "not found: <why>" (never throws).
std::string NcclVersionString();

}  // namespace fusecomm

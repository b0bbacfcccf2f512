#include "transport/nccl/nccl_comm.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>
#include <thread>

#include "common/errors.h"
#include "transport/abort.h"
#include "transport/nccl/nccl_api.h"

namespace fusecomm {

namespace {

ncclDataType_t ToNcclType(DataType dtype) {
  switch (dtype) {
    case DataType::kUInt8: return ncclUint8;
    case DataType::kInt8: return ncclInt8;
    case DataType::kInt32: return ncclInt32;
    case DataType::kInt64: return ncclInt64;
    case DataType::kFloat16: return ncclFloat16;
    case DataType::kBFloat16: return ncclBfloat16;
    case DataType::kFloat32: return ncclFloat32;
    case DataType::kFloat64: return ncclFloat64;
    case DataType::kBool: return ncclUint8;  // 0/1 bytes: reduced with max (or) / min (and)
    case DataType::kInt16:
    case DataType::kUInt16:
      break;  // NCCL has no 16-bit integers: NativeReductionSupports says so to the engine
  }
  throw InvalidArgument("unknown data type");
}

ncclRedOp_t ToNcclOp(DataType dtype, ReduceOp op) {
  if (dtype == DataType::kBool) {
    // A sum of bytes would leave 2, 3, ... (and wrap to 0 at 256): or/and keep them 0/1.
    return op == ReduceOp::kSum || op == ReduceOp::kMax ? ncclMax : ncclMin;
  }
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAverage: return ncclSum;  // the engine scales averages
    case ReduceOp::kMin: return ncclMin;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kProduct: return ncclProd;
    case ReduceOp::kAdasum: break;  // not a NCCL reduction; the engine runs it on host memory
  }
  throw InvalidArgument("unknown reduce op");
}

ncclConfig_t NonBlockingConfig() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

// Polls with growing sleeps: microseconds for short operations, no spinning core for long ones.
class Backoff {
 public:
  void Pause() {
    if (++spins_ < 1000) return;
    std::this_thread::sleep_for(sleep_);
    if (sleep_ < std::chrono::microseconds(200)) sleep_ *= 2;
  }

 private:
  int spins_ = 0;
  std::chrono::microseconds sleep_{2};
};

class NoRequest : public CommRequest {
 public:
  void Wait() override {}
};

class QueuedRequest : public CommRequest {
 public:
  QueuedRequest(P2pGroups* groups, uint64_t id) : groups_(groups), id_(id) {}
  // Issuing is all the waiting needed: what the algorithm launches next on the stream runs
  // after the group.
  void Wait() override { groups_->Issue(id_); }

 private:
  P2pGroups* groups_;
  uint64_t id_;
};

void CheckCudaCall(cudaError_t status, const char* what) { CheckCuda(status, what); }

}  // namespace

NcclComm::NcclComm(ncclComm_t comm, CudaMemoryOps& memory)
    : comm_(comm), memory_(memory),
      groups_([this](const std::vector<P2pOp>& ops) { IssueGroup(ops); }) {}

std::unique_ptr<NcclComm> NcclComm::Create(Comm& host, CudaMemoryOps& memory) {
  const NcclApi& nccl = Nccl();
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (host.rank() == 0) {
    ncclResult_t result = nccl.ncclGetUniqueId(&id);
    if (result != ncclSuccess) {
      // Still broadcast (an all-zero id) so the other ranks fail too rather than wait.
      std::memset(&id, 0, sizeof(id));
    }
  }
  host.NativeBroadcast(&id, sizeof(id), 0);
  static const ncclUniqueId kZero{};
  if (std::memcmp(&id, &kZero, sizeof(id)) == 0) {
    throw CollectiveError("rank 0 could not create an NCCL unique id (ncclGetUniqueId failed)");
  }
  CheckCudaCall(cudaSetDevice(memory.device()), "cudaSetDevice");
  ncclConfig_t config = NonBlockingConfig();
  ncclComm_t comm = nullptr;
  ncclResult_t result =
      nccl.ncclCommInitRankConfig(&comm, host.size(), id, host.rank(), &config);
  std::unique_ptr<NcclComm> out(new NcclComm(comm, memory));
  out->rank_ = host.rank();
  out->size_ = host.size();
  if (comm == nullptr) {
    out->aborted_ = true;
    throw CollectiveError(std::string("ncclCommInitRankConfig failed: ") +
                          nccl.ncclGetErrorString(result));
  }
  out->Check(result, "ncclCommInitRankConfig");
  return out;
}

NcclComm::~NcclComm() {
  if (comm_ == nullptr) return;
  const NcclApi& nccl = Nccl();
  // With a failed peer a destroy could wait for it forever; abort never waits.
  if (aborted_ || TransportAborted()) {
    if (!aborted_) nccl.ncclCommAbort(comm_);
  } else {
    nccl.ncclCommDestroy(comm_);
  }
}

void NcclComm::Abort() {
  if (aborted_ || comm_ == nullptr) return;
  aborted_ = true;
  Nccl().ncclCommAbort(comm_);
}

void NcclComm::CheckHealth() {
  if (aborted_) throw CollectiveError("the NCCL communicator was aborted after an earlier error");
  if (TransportAborted()) {
    Abort();
    throw CollectiveError(TransportAbortReason());
  }
  const NcclApi& nccl = Nccl();
  ncclResult_t state = ncclSuccess;
  ncclResult_t result = nccl.ncclCommGetAsyncError(comm_, &state);
  if (result != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
    const ncclResult_t bad = result != ncclSuccess ? result : state;
    std::string detail = nccl.ncclGetLastError(comm_);
    Abort();
    throw CollectiveError(std::string("NCCL error: ") + nccl.ncclGetErrorString(bad) +
                          (detail.empty() ? "" : " (" + detail + ")"));
  }
}

void NcclComm::Check(ncclResult_t result, const char* call) {
  const NcclApi& nccl = Nccl();
  if (result != ncclSuccess && result != ncclInProgress) {
    std::string detail = nccl.ncclGetLastError(comm_);
    Abort();
    throw CollectiveError(std::string(call) + " failed: " + nccl.ncclGetErrorString(result) +
                          (detail.empty() ? "" : " (" + detail + ")"));
  }
  // A non-blocking communicator finishes the call (connection set-up, enqueueing) in the
  // background; it must not be used until then.
  Backoff backoff;
  while (true) {
    ncclResult_t state = ncclSuccess;
    CheckHealth();
    nccl.ncclCommGetAsyncError(comm_, &state);
    if (state != ncclInProgress) return;
    backoff.Pause();
  }
}

void NcclComm::IssueGroup(const std::vector<P2pOp>& ops) {
  const NcclApi& nccl = Nccl();
  Check(nccl.ncclGroupStart(), "ncclGroupStart");
  for (const P2pOp& op : ops) {
    ncclResult_t result =
        op.send ? nccl.ncclSend(op.buffer, op.bytes, ncclUint8, op.peer, comm_, stream())
                : nccl.ncclRecv(op.buffer, op.bytes, ncclUint8, op.peer, comm_, stream());
    if (result != ncclSuccess && result != ncclInProgress) {
      nccl.ncclGroupEnd();
      Check(result, op.send ? "ncclSend" : "ncclRecv");
    }
  }
  Check(nccl.ncclGroupEnd(), "ncclGroupEnd");
}

void NcclComm::Flush() { groups_.IssueAll(); }

std::unique_ptr<CommRequest> NcclComm::Isend(const void* buf, size_t bytes, int peer, int) {
  traffic_.messages_sent += 1;
  traffic_.bytes_sent += bytes;
  // An empty message is skipped on both sides alike (the receiver skips its empty receive).
  if (bytes == 0) return std::make_unique<NoRequest>();
  return std::make_unique<QueuedRequest>(
      &groups_, groups_.Add(true, const_cast<void*>(buf), bytes, peer));
}

std::unique_ptr<CommRequest> NcclComm::Irecv(void* buf, size_t bytes, int peer, int) {
  if (bytes == 0) return std::make_unique<NoRequest>();
  return std::make_unique<QueuedRequest>(&groups_, groups_.Add(false, buf, bytes, peer));
}

void NcclComm::Send(const void* buf, size_t bytes, int peer, int tag) {
  Isend(buf, bytes, peer, tag)->Wait();
}

void NcclComm::Recv(void* buf, size_t bytes, int peer, int tag) {
  Irecv(buf, bytes, peer, tag)->Wait();
}

void NcclComm::SendRecv(const void* sendbuf, size_t send_bytes, int dst, void* recvbuf,
                        size_t recv_bytes, int src, int tag) {
  auto recv = Irecv(recvbuf, recv_bytes, src, tag);
  auto send = Isend(sendbuf, send_bytes, dst, tag);
  recv->Wait();
  send->Wait();
}

std::unique_ptr<Comm> NcclComm::Split(int color, int key) {
  Flush();
  ncclConfig_t config = NonBlockingConfig();
  ncclComm_t sub = nullptr;
  Check(Nccl().ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub, &config),
        "ncclCommSplit");
  if (sub == nullptr) return nullptr;
  std::unique_ptr<NcclComm> out(new NcclComm(sub, memory_));
  out->Check(ncclSuccess, "ncclCommSplit");  // waits until the new communicator is ready
  out->Check(Nccl().ncclCommUserRank(sub, &out->rank_), "ncclCommUserRank");
  out->Check(Nccl().ncclCommCount(sub, &out->size_), "ncclCommCount");
  return out;
}

void NcclComm::NativeAllreduce(void* buf, size_t count, DataType dtype, ReduceOp op) {
  Flush();
  if (count == 0) return;
  Check(Nccl().ncclAllReduce(buf, buf, count, ToNcclType(dtype), ToNcclOp(dtype, op), comm_,
                             stream()),
        "ncclAllReduce");
}

void NcclComm::NativeBroadcast(void* buf, size_t bytes, int root) {
  Flush();
  if (bytes == 0) return;
  Check(Nccl().ncclBroadcast(buf, buf, bytes, ncclUint8, root, comm_, stream()), "ncclBroadcast");
}

void NcclComm::ExchangeBlocks(const char* send, const std::vector<size_t>& send_bytes, char* recv,
                              const std::vector<size_t>& recv_bytes) {
  Flush();
  std::vector<size_t> send_offset(size_, 0), recv_offset(size_, 0);
  std::partial_sum(send_bytes.begin(), send_bytes.end() - 1, send_offset.begin() + 1);
  std::partial_sum(recv_bytes.begin(), recv_bytes.end() - 1, recv_offset.begin() + 1);
  if (send_bytes[rank_] != recv_bytes[rank_]) {
    throw CollectiveError("internal error: this rank's own block changes size in an exchange");
  }
  if (send_bytes[rank_] > 0) {
    memory_.Copy(recv + recv_offset[rank_], send + send_offset[rank_], send_bytes[rank_]);
  }
  std::vector<P2pOp> ops;
  for (int q = 0; q < size_; ++q) {
    if (q == rank_) continue;
    // Empty blocks are skipped by both ends alike.
    if (send_bytes[q] > 0) {
      ops.push_back({true, const_cast<char*>(send) + send_offset[q], send_bytes[q], q, 0});
      traffic_.messages_sent += 1;
      traffic_.bytes_sent += send_bytes[q];
    }
    if (recv_bytes[q] > 0) ops.push_back({false, recv + recv_offset[q], recv_bytes[q], q, 0});
  }
  if (!ops.empty()) IssueGroup(ops);
}

void NcclComm::NativeAllgatherv(const void* send, size_t send_bytes, void* recv,
                                const std::vector<size_t>& recv_bytes) {
  const bool equal = std::all_of(recv_bytes.begin(), recv_bytes.end(),
                                 [&](size_t b) { return b == recv_bytes[0]; });
  if (equal) {
    Flush();
    if (send_bytes == 0) return;
    Check(Nccl().ncclAllGather(send, recv, send_bytes, ncclUint8, comm_, stream()),
          "ncclAllGather");
    return;
  }
  ExchangeBlocks(static_cast<const char*>(send), std::vector<size_t>(size_, send_bytes),
                 static_cast<char*>(recv), recv_bytes);
}

void NcclComm::NativeAlltoallv(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                               const std::vector<size_t>& recv_bytes) {
  ExchangeBlocks(static_cast<const char*>(send), send_bytes, static_cast<char*>(recv),
                 recv_bytes);
}

void NcclComm::NativeReduceScatterv(const void* send, void* recv,
                                    const std::vector<size_t>& recv_counts, DataType dtype,
                                    ReduceOp op) {
  Flush();
  const NcclApi& nccl = Nccl();
  const ncclDataType_t type = ToNcclType(dtype);
  const ncclRedOp_t nccl_op = ToNcclOp(dtype, op);
  const bool equal = std::all_of(recv_counts.begin(), recv_counts.end(),
                                 [&](size_t c) { return c == recv_counts[0]; });
  if (equal) {
    if (recv_counts[0] == 0) return;
    Check(nccl.ncclReduceScatter(send, recv, recv_counts[0], type, nccl_op, comm_, stream()),
          "ncclReduceScatter");
    return;
  }
  // Uneven blocks: one reduce to each block's owner, all in one group.
  const size_t elem = DataTypeSize(dtype);
  const char* base = static_cast<const char*>(send);
  Check(nccl.ncclGroupStart(), "ncclGroupStart");
  size_t offset = 0;
  for (int q = 0; q < size_; ++q) {
    if (recv_counts[q] > 0) {
      // recvbuff is read only on the root; elsewhere any valid pointer does.
      void* target = q == rank_ ? recv : const_cast<char*>(base);
      ncclResult_t result = nccl.ncclReduce(base + offset * elem, target, recv_counts[q], type,
                                            nccl_op, q, comm_, stream());
      if (result != ncclSuccess && result != ncclInProgress) {
        nccl.ncclGroupEnd();
        Check(result, "ncclReduce");
      }
    }
    offset += recv_counts[q];
  }
  Check(nccl.ncclGroupEnd(), "ncclGroupEnd");
}

void NcclComm::Barrier() {
  Flush();
  std::shared_ptr<void> token = memory_.Allocate(sizeof(int32_t));
  CheckCudaCall(cudaMemsetAsync(token.get(), 0, sizeof(int32_t), stream()), "cudaMemsetAsync");
  NativeAllreduce(token.get(), 1, DataType::kInt32, ReduceOp::kSum);
  WaitForStream(stream(), {this});
}

void WaitForStream(cudaStream_t stream, const std::vector<NcclComm*>& comms) {
  for (NcclComm* comm : comms) comm->Flush();
  cudaEvent_t event;
  CheckCuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
  std::unique_ptr<CUevent_st, cudaError_t (*)(cudaEvent_t)> owner(event, cudaEventDestroy);
  CheckCuda(cudaEventRecord(event, stream), "cudaEventRecord");
  Backoff backoff;
  while (true) {
    cudaError_t status = cudaEventQuery(event);
    if (status == cudaSuccess) return;
    if (status != cudaErrorNotReady) CheckCuda(status, "cudaEventQuery");
    try {
      for (NcclComm* comm : comms) comm->CheckHealth();
      if (comms.empty() && TransportAborted()) throw CollectiveError(TransportAbortReason());
    } catch (...) {
      for (NcclComm* comm : comms) comm->Abort();
      throw;
    }
    backoff.Pause();
  }
}

}  // namespace fusecomm

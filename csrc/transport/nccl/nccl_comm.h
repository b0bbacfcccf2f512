// Comm over an NCCL communicator: device buffers, every operation ordered on the device's engine
// stream (the stream of its CudaMemoryOps), so the algorithms' reductions and transfers follow
// each other without the host waiting. Point-to-point operations are grouped by P2pGroups so
// that the algorithms of csrc/collectives run unchanged; native collectives are NCCL's own.
//
// Communicators are non-blocking (ncclConfig_t::blocking = 0): every call that is still in
// progress is polled with ncclCommGetAsyncError while the liveness monitor is watched, so a dead
// peer is an error naming it, not a hang. A communicator that failed is aborted, not destroyed.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <memory>
#include <string>
#include <vector>

#include "transport/comm.h"
#include "transport/cuda_memory.h"
#include "transport/p2p_groups.h"

namespace fusecomm {

class NcclComm : public Comm {
 public:
  // Collective over `host`, a communicator of the same ranks in the same order (the process
  // set's MPI comm): rank 0 makes the unique id and broadcasts it over `host`. The device is
  // memory.device(); the stream is memory.stream(); `memory` outlives this and its splits.
  static std::unique_ptr<NcclComm> Create(Comm& host, CudaMemoryOps& memory);
  ~NcclComm() override;
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string transport_name() const override { return "nccl"; }
  MemoryOps& memory() override { return memory_; }
  cudaStream_t stream() const { return memory_.stream(); }

  void Send(const void* buf, size_t bytes, int peer, int tag) override;
  void Recv(void* buf, size_t bytes, int peer, int tag) override;
  void SendRecv(const void* sendbuf, size_t send_bytes, int dst, void* recvbuf, size_t recv_bytes,
                int src, int tag) override;
  // Queued; issued in a group when waited on (see transport/p2p_groups.h). Tags are not needed:
  // NCCL matches in order per pair, and the algorithms' rounds never interleave on one comm.
  std::unique_ptr<CommRequest> Isend(const void* buf, size_t bytes, int peer, int tag) override;
  std::unique_ptr<CommRequest> Irecv(void* buf, size_t bytes, int peer, int tag) override;
  // ncclCommSplit: collective over this comm.
  std::unique_ptr<Comm> Split(int color, int key) override;

  bool NativeReductionSupports(DataType dtype, ReduceOp op) const override {
    if (dtype == DataType::kInt16 || dtype == DataType::kUInt16) return false;
    // NCCL's float min/max (fminf/fmaxf, __hmin/__hmax) return the number when the other
    // operand is NaN; fusecomm propagates NaN on every path.
    return !(IsFloatingPoint(dtype) && (op == ReduceOp::kMin || op == ReduceOp::kMax));
  }
  void NativeAllreduce(void* buf, size_t count, DataType dtype, ReduceOp op) override;
  void NativeBroadcast(void* buf, size_t bytes, int root) override;
  void NativeAllgatherv(const void* send, size_t send_bytes, void* recv,
                        const std::vector<size_t>& recv_bytes) override;
  void NativeAlltoallv(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                       const std::vector<size_t>& recv_bytes) override;
  void NativeReduceScatterv(const void* send, void* recv, const std::vector<size_t>& recv_counts,
                            DataType dtype, ReduceOp op) override;
  // Returns when every rank's stream has reached it (and all earlier work here is done).
  void Barrier() override;

  // Issues every queued point-to-point operation.
  void Flush();
  // Throws CollectiveError if NCCL reported an asynchronous error (aborting the communicator)
  // or the liveness monitor declared a peer dead.
  void CheckHealth();
  // Aborts the communicator (pending operations end); later use throws.
  void Abort();

 private:
  NcclComm(ncclComm_t comm, CudaMemoryOps& memory);
  // Turns an NCCL result into CollectiveError; for a non-blocking call still in progress,
  // polls until it has finished.
  void Check(ncclResult_t result, const char* call);
  void IssueGroup(const std::vector<P2pOp>& ops);
  // Every rank sends send_bytes[q] at send + send_offset[q] to q and receives recv_bytes[q]
  // into recv + recv_offset[q] from q, in one group; this rank's own block is copied.
  void ExchangeBlocks(const char* send, const std::vector<size_t>& send_bytes, char* recv,
                      const std::vector<size_t>& recv_bytes);

  ncclComm_t comm_;
  CudaMemoryOps& memory_;
  int rank_ = 0;
  int size_ = 1;
  bool aborted_ = false;
  P2pGroups groups_;
};

// Blocks the host until the work queued so far on `stream` is done, polling (never a
// device-wide sync) and checking every comm's health meanwhile; on failure aborts them all and
// throws CollectiveError.
void WaitForStream(cudaStream_t stream, const std::vector<NcclComm*>& comms);

}  // namespace fusecomm

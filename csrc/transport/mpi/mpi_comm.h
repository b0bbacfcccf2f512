// Comm over an MPI communicator (host memory).
#pragma once

#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "transport/comm.h"
#include "transport/shared_segment.h"

namespace fusecomm {

// Throws CollectiveError naming the MPI call and MPI's own error string.
void CheckMpi(int rc, const char* call);
MPI_Datatype ToMpiType(DataType dtype);

class MpiComm : public Comm {
 public:
  // Takes ownership of `comm` (freed on destruction) when `owned`.
  MpiComm(MPI_Comm comm, bool owned);
  ~MpiComm() override;
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string transport_name() const override { return "mpi"; }
  MemoryOps& memory() override;
  MPI_Comm handle() const { return comm_; }

  void Send(const void* buf, size_t bytes, int peer, int tag) override;
  void Recv(void* buf, size_t bytes, int peer, int tag) override;
  void SendRecv(const void* sendbuf, size_t send_bytes, int dst, void* recvbuf, size_t recv_bytes,
                int src, int tag) override;
  std::unique_ptr<CommRequest> Isend(const void* buf, size_t bytes, int peer, int tag) override;
  std::unique_ptr<CommRequest> Irecv(void* buf, size_t bytes, int peer, int tag) override;
  std::unique_ptr<Comm> Split(int color, int key) override;

  void NativeAllreduce(void* buf, size_t count, DataType dtype, ReduceOp op) override;
  void NativeBroadcast(void* buf, size_t bytes, int root) override;
  void NativeAllgatherv(const void* send, size_t send_bytes, void* recv,
                        const std::vector<size_t>& recv_bytes) override;
  void NativeAlltoallv(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                       const std::vector<size_t>& recv_bytes) override;
  void NativeReduceScatterv(const void* send, void* recv, const std::vector<size_t>& recv_counts,
                            DataType dtype, ReduceOp op) override;
  void Barrier() override;
  SharedSegment* shared_segment() override { return shared_.get(); }
  // Collective over this comm: when every rank runs on this node, maps a SharedSegment with
  // slots of `slot_bytes` (MPI_Win_allocate_shared); otherwise leaves none. Messages of at
  // least `single_copy_min_bytes` are read from the peers' memory directly where every rank
  // can (SIZE_MAX: never).
  void AttachSharedSegment(size_t slot_bytes, size_t single_copy_min_bytes = SIZE_MAX);

 private:
  MPI_Comm comm_;
  MPI_Win window_ = MPI_WIN_NULL;
  std::unique_ptr<SharedSegment> shared_;
  bool owned_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace fusecomm

// A communicator as the algorithms see it: point-to-point moves of byte buffers plus the
// transport's native collectives. Algorithms in csrc/collectives are written against this
// interface only, never against MPI or NCCL directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/types.h"
#include "transport/memory.h"

namespace fusecomm {

class SharedSegment;

// An outstanding non-blocking send or receive.
class CommRequest {
 public:
  virtual ~CommRequest() = default;
  virtual void Wait() = 0;
};

// Counts what this rank put on the wire: how many sequential messages and how many bytes.
// Tests compare these with each algorithm's cost formula.
struct TrafficCounters {
  uint64_t messages_sent = 0;
  uint64_t bytes_sent = 0;
  // Sequential communication rounds this rank took part in. The transport never touches it:
  // the algorithms in csrc/collectives bump it once per round of their schedule (a pipelined
  // round of many segment messages counts once), so it can be checked against the α term.
  uint64_t steps = 0;
};

class Comm {
 public:
  virtual ~Comm() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string transport_name() const = 0;
  virtual MemoryOps& memory() = 0;

  // Blocking point-to-point. Any byte count (large ones are split internally).
  virtual void Send(const void* buf, size_t bytes, int peer, int tag) = 0;
  virtual void Recv(void* buf, size_t bytes, int peer, int tag) = 0;
  // Send to `dst` and receive from `src` at once (deadlock-free in rings and exchanges).
  virtual void SendRecv(const void* sendbuf, size_t send_bytes, int dst, void* recvbuf,
                        size_t recv_bytes, int src, int tag) = 0;
  // Non-blocking point-to-point for pipelined algorithms.
  virtual std::unique_ptr<CommRequest> Isend(const void* buf, size_t bytes, int peer, int tag) = 0;
  virtual std::unique_ptr<CommRequest> Irecv(void* buf, size_t bytes, int peer, int tag) = 0;

  // Sub-communicator of the ranks passing the same color, ordered by key. Collective over this
  // comm. color < 0 means "not a member": returns nullptr on that rank.
  virtual std::unique_ptr<Comm> Split(int color, int key) = 0;

  // Whether NativeAllreduce/NativeReduceScatterv can reduce `dtype` with `op` as the engine's
  // own kernels do (NCCL has no 16-bit integers, and its float Min/Max drop NaN); where not,
  // the engine runs its own algorithms over point-to-point instead.
  virtual bool NativeReductionSupports(DataType dtype, ReduceOp op) const {
    (void)dtype;
    (void)op;
    return true;
  }
  // Native collectives (in-place unless stated).
  virtual void NativeAllreduce(void* buf, size_t count, DataType dtype, ReduceOp op) = 0;
  virtual void NativeBroadcast(void* buf, size_t bytes, int root) = 0;
  // recv holds every rank's block back to back; recv_bytes[r] is rank r's block size.
  virtual void NativeAllgatherv(const void* send, size_t send_bytes, void* recv,
                                const std::vector<size_t>& recv_bytes) = 0;
  // send_bytes[r] goes to rank r, recv_bytes[r] comes from rank r; blocks are back to back.
  virtual void NativeAlltoallv(const void* send, const std::vector<size_t>& send_bytes,
                               void* recv, const std::vector<size_t>& recv_bytes) = 0;
  // Reduce `send` (sum(recv_counts) elements) and leave block r (recv_counts[r] elements) on rank r.
  virtual void NativeReduceScatterv(const void* send, void* recv,
                                    const std::vector<size_t>& recv_counts, DataType dtype,
                                    ReduceOp op) = 0;
  virtual void Barrier() = 0;
  // Memory every rank of this comm maps (all of them on one node), or null: what the
  // shared-memory all-reduce works in.
  virtual SharedSegment* shared_segment() { return nullptr; }

  TrafficCounters& traffic() { return traffic_; }

 protected:
  TrafficCounters traffic_;
};

}  // namespace fusecomm

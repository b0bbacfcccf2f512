#include "transport/mpi/mpi_comm.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <numeric>

#include "common/errors.h"
#include "transport/abort.h"
#include "reduce/cpu_reduce.h"
#include "transport/mpi/mpi_wait.h"

namespace fusecomm {

namespace {

// MPI counts are int: anything larger moves in pieces of at most this many bytes.
constexpr size_t kMaxMessageBytes = size_t{1} << 30;

// Variable-count collectives take int counts and displacements; beyond that they are not used.
int CheckedInt(size_t value, const char* what) {
  if (value > static_cast<size_t>(INT_MAX)) {
    throw CollectiveError(std::string(what) + " exceeds MPI's 2^31-1 element limit");
  }
  return static_cast<int>(value);
}

class MpiRequests : public CommRequest {
 public:
  // What the requests move, for error messages (built only when one is needed).
  MpiRequests(const char* kind, size_t bytes, int peer, int tag)
      : kind_(kind), bytes_(bytes), peer_(peer), tag_(tag) {}
  std::vector<MPI_Request> requests;
  void Wait() override {
    if (requests.empty()) return;
    if (!TransportAborted()) {
      // Fast path: most waits are done at the first test, with no message to build.
      int done = 0;
      MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done,
                  MPI_STATUSES_IGNORE);
      if (done) {
        requests.clear();
        return;
      }
    }
    WaitData(requests.data(), static_cast<int>(requests.size()), Describe());
    requests.clear();
  }
  ~MpiRequests() override {
    // Abandoned by an exception: the collective failed on this rank while its peers may still
    // be in it. Waiting here could hang, and a message left behind could match a later
    // collective's receive, so the transport is aborted instead (the peers learn of it).
    if (!requests.empty()) {
      AbortTransport("a collective failed on this rank with its " + Describe() +
                     " still pending");
    }
  }

 private:
  std::string Describe() const {
    return std::string(kind_) + " of " + std::to_string(bytes_) + " bytes " +
           (std::string(kind_) == "send" ? "to" : "from") + " rank " + std::to_string(peer_) +
           " (tag " + std::to_string(tag_) + ")";
  }
  const char* kind_;
  size_t bytes_;
  int peer_;
  int tag_;
};

// User-defined MPI ops: for the types MPI has no native reduction for (fp16, bf16), for bool
// semantics, and for float Min/Max, where MPI_MIN/MPI_MAX drop NaN while every other algorithm
// propagates it. One op per (dtype, ReduceOp), never freed. The table is a function-local
// static, so process sets' threads racing to first use create it exactly once.
template <DataType D, ReduceOp R>
void MpiUserReduce(void* in, void* inout, int* len, MPI_Datatype*) {
  CpuReduceInto(inout, in, static_cast<size_t>(*len), D, R);
}

template <DataType D>
MPI_Op UserOpFor(ReduceOp op) {
  static const std::array<MPI_Op, 5> ops = [] {
    MPI_User_function* fns[5] = {
        &MpiUserReduce<D, ReduceOp::kSum>, &MpiUserReduce<D, ReduceOp::kSum>,
        &MpiUserReduce<D, ReduceOp::kMin>, &MpiUserReduce<D, ReduceOp::kMax>,
        &MpiUserReduce<D, ReduceOp::kProduct>};
    std::array<MPI_Op, 5> created;
    for (int i = 0; i < 5; ++i) CheckMpi(MPI_Op_create(fns[i], 1, &created[i]), "MPI_Op_create");
    return created;
  }();
  return ops[static_cast<int>(op)];
}

MPI_Op ToMpiOp(DataType dtype, ReduceOp op) {
  if (op == ReduceOp::kAdasum) throw InvalidArgument("Adasum is not an MPI reduction");
  const bool min_max = op == ReduceOp::kMin || op == ReduceOp::kMax;
  switch (dtype) {
    case DataType::kFloat16: return UserOpFor<DataType::kFloat16>(op);
    case DataType::kBFloat16: return UserOpFor<DataType::kBFloat16>(op);
    case DataType::kBool: return UserOpFor<DataType::kBool>(op);
    case DataType::kFloat32:
      if (min_max) return UserOpFor<DataType::kFloat32>(op);
      break;
    case DataType::kFloat64:
      if (min_max) return UserOpFor<DataType::kFloat64>(op);
      break;
    default: break;
  }
  // Native ops: IEEE Sum and Product propagate NaN by themselves.
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAverage: return MPI_SUM;
    case ReduceOp::kMin: return MPI_MIN;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kProduct: return MPI_PROD;
    case ReduceOp::kAdasum: break;
  }
  throw InvalidArgument("unknown reduce op");
}

std::vector<int> Displacements(const std::vector<int>& counts) {
  std::vector<int> displs(counts.size(), 0);
  size_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    displs[i] = CheckedInt(total, "displacement");
    total += static_cast<size_t>(counts[i]);
  }
  return displs;
}

std::vector<int> ToIntCounts(const std::vector<size_t>& counts, const char* what) {
  std::vector<int> out(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) out[i] = CheckedInt(counts[i], what);
  return out;
}

}  // namespace

void CheckMpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw CollectiveError(std::string(call) + " failed: " + std::string(text, len));
}

MPI_Datatype ToMpiType(DataType dtype) {
  switch (dtype) {
    case DataType::kUInt8: return MPI_UINT8_T;
    case DataType::kInt8: return MPI_INT8_T;
    case DataType::kInt32: return MPI_INT32_T;
    case DataType::kInt64: return MPI_INT64_T;
    case DataType::kFloat16: return MPI_UINT16_T;   // reduced by a user op
    case DataType::kBFloat16: return MPI_UINT16_T;  // reduced by a user op
    case DataType::kFloat32: return MPI_FLOAT;
    case DataType::kFloat64: return MPI_DOUBLE;
    case DataType::kBool: return MPI_UINT8_T;       // reduced by a user op
    case DataType::kInt16: return MPI_INT16_T;
    case DataType::kUInt16: return MPI_UINT16_T;
  }
  throw InvalidArgument("unknown data type");
}

MpiComm::MpiComm(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
  CheckMpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  CheckMpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  // Errors come back as return codes so they become exceptions, not aborts.
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
}

MpiComm::~MpiComm() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  shared_.reset();
  // Freeing a window is collective: with a dead peer it could wait forever.
  if (window_ != MPI_WIN_NULL && !finalized && !TransportAborted()) MPI_Win_free(&window_);
  if (owned_ && !finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiComm::AttachSharedSegment(size_t slot_bytes, size_t single_copy_min_bytes) {
  if (size_ < 2) return;
  MPI_Comm node = MPI_COMM_NULL;
  CheckMpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
           "MPI_Comm_split_type");
  int node_size = 0;
  MPI_Comm_size(node, &node_size);
  // Every rank sees the same answer: either all of them share this node or none sees all.
  if (node_size != size_) {
    MPI_Comm_free(&node);
    return;
  }
  MPI_Comm_free(&node);
  // Rank 0 allocates the whole segment, so it is one contiguous mapping on every rank. An MPI
  // that cannot share memory here (no shared-memory window component) only means no segment,
  // but every rank must agree, since `auto` races the algorithm only where all ranks have it.
  const size_t bytes = SharedSegment::Bytes(size_, slot_bytes);
  char* mine = nullptr;
  char* base = nullptr;
  int mapped = MPI_Win_allocate_shared(rank_ == 0 ? static_cast<MPI_Aint>(bytes) : 0, 1,
                                       MPI_INFO_NULL, comm_, &mine, &window_) == MPI_SUCCESS;
  if (mapped) {
    MPI_Win_set_errhandler(window_, MPI_ERRORS_RETURN);
    MPI_Aint size = 0;
    int unit = 0;
    mapped = MPI_Win_shared_query(window_, 0, &size, &unit, &base) == MPI_SUCCESS &&
             static_cast<size_t>(size) >= bytes;
  }
  CheckMpi(MPI_Allreduce(MPI_IN_PLACE, &mapped, 1, MPI_INT, MPI_MIN, comm_), "MPI_Allreduce");
  if (!mapped) {
    if (window_ != MPI_WIN_NULL) MPI_Win_free(&window_);
    return;
  }
  shared_ = std::make_unique<SharedSegment>(base, rank_, size_, slot_bytes);
  // Cross-memory reads, where wanted: each rank publishes a value of its own and reads every
  // peer's. A kernel or sandbox that forbids them on any rank means slots only, on every rank.
  static const uint64_t kProbeValue = 0x66757365636f6d6dull;
  shared_->PublishAddress(&kProbeValue);
  if (single_copy_min_bytes != SIZE_MAX) SharedSegment::AllowPeerReads();
  // No rank may use the segment (or probe) before every rank has zeroed its counter.
  CheckMpi(MPI_Barrier(comm_), "MPI_Barrier");
  // Every rank must take the same path for the same message: the largest threshold wins, and
  // a rank that cannot read its peers makes it "never".
  uint64_t agreed = single_copy_min_bytes == SIZE_MAX || !shared_->ProbePeerReads(kProbeValue)
                        ? UINT64_MAX
                        : static_cast<uint64_t>(single_copy_min_bytes);
  CheckMpi(MPI_Allreduce(MPI_IN_PLACE, &agreed, 1, MPI_UINT64_T, MPI_MAX, comm_),
           "MPI_Allreduce");
  if (agreed != UINT64_MAX) shared_->set_single_copy_min_bytes(static_cast<size_t>(agreed));
}

MemoryOps& MpiComm::memory() { return HostMemory(); }

void MpiComm::Send(const void* buf, size_t bytes, int peer, int tag) {
  auto req = Isend(buf, bytes, peer, tag);
  req->Wait();
}

void MpiComm::Recv(void* buf, size_t bytes, int peer, int tag) {
  auto req = Irecv(buf, bytes, peer, tag);
  req->Wait();
}

void MpiComm::SendRecv(const void* sendbuf, size_t send_bytes, int dst, void* recvbuf,
                       size_t recv_bytes, int src, int tag) {
  auto recv = Irecv(recvbuf, recv_bytes, src, tag);
  auto send = Isend(sendbuf, send_bytes, dst, tag);
  recv->Wait();
  send->Wait();
}

std::unique_ptr<CommRequest> MpiComm::Isend(const void* buf, size_t bytes, int peer, int tag) {
  auto req = std::make_unique<MpiRequests>("send", bytes, peer, tag);
  const char* p = static_cast<const char*>(buf);
  // A zero-byte message is still sent so that the matching receive completes.
  size_t offset = 0;
  do {
    size_t n = std::min(kMaxMessageBytes, bytes - offset);
    MPI_Request r;
    CheckMpi(MPI_Isend(p + offset, static_cast<int>(n), MPI_BYTE, peer, tag, comm_, &r),
             "MPI_Isend");
    req->requests.push_back(r);
    offset += n;
  } while (offset < bytes);
  traffic_.messages_sent += 1;
  traffic_.bytes_sent += bytes;
  return req;
}

std::unique_ptr<CommRequest> MpiComm::Irecv(void* buf, size_t bytes, int peer, int tag) {
  auto req = std::make_unique<MpiRequests>("receive", bytes, peer, tag);
  char* p = static_cast<char*>(buf);
  size_t offset = 0;
  do {
    size_t n = std::min(kMaxMessageBytes, bytes - offset);
    MPI_Request r;
    CheckMpi(MPI_Irecv(p + offset, static_cast<int>(n), MPI_BYTE, peer, tag, comm_, &r),
             "MPI_Irecv");
    req->requests.push_back(r);
    offset += n;
  } while (offset < bytes);
  return req;
}

std::unique_ptr<Comm> MpiComm::Split(int color, int key) {
  MPI_Comm sub = MPI_COMM_NULL;
  CheckMpi(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub), "MPI_Comm_split");
  if (sub == MPI_COMM_NULL) return nullptr;
  return std::make_unique<MpiComm>(sub, true);
}

void MpiComm::NativeAllreduce(void* buf, size_t count, DataType dtype, ReduceOp op) {
  MPI_Datatype type = ToMpiType(dtype);
  MPI_Op mpi_op = ToMpiOp(dtype, op);
  const size_t elem = DataTypeSize(dtype);
  // A large buffer goes as several non-blocking all-reduces of kSegmentBytes in flight together:
  // one non-blocking all-reduce of 64 MiB took 2-3x MPI_Allreduce's time on two shared-memory
  // ranks, four segments of 1 MiB in flight 0.5-1.1x.
  constexpr size_t kSegmentBytes = size_t{1} << 20, kSegmentsInFlight = 4;
  const bool segmented = count * elem > kSegmentsInFlight * kSegmentBytes;
  const size_t max_count = (segmented ? kSegmentBytes : kMaxMessageBytes) / elem;
  const size_t in_flight = segmented ? kSegmentsInFlight : 1;
  char* p = static_cast<char*>(buf);
  MPI_Request requests[kSegmentsInFlight];
  for (size_t offset = 0; offset < count;) {
    int posted = 0;
    for (; static_cast<size_t>(posted) < in_flight && offset < count; ++posted) {
      const size_t n = std::min(max_count, count - offset);
      CheckMpi(MPI_Iallreduce(MPI_IN_PLACE, p + offset * elem, static_cast<int>(n), type, mpi_op,
                              comm_, &requests[posted]),
               "MPI_Iallreduce");
      offset += n;
    }
    WaitData(requests, posted, "MPI_Iallreduce");
  }
}

void MpiComm::NativeBroadcast(void* buf, size_t bytes, int root) {
  char* p = static_cast<char*>(buf);
  for (size_t offset = 0; offset < bytes; offset += kMaxMessageBytes) {
    size_t n = std::min(kMaxMessageBytes, bytes - offset);
    MPI_Request req;
    CheckMpi(MPI_Ibcast(p + offset, static_cast<int>(n), MPI_BYTE, root, comm_, &req),
             "MPI_Ibcast");
    WaitData(&req, 1, "MPI_Ibcast");
  }
}

void MpiComm::NativeAllgatherv(const void* send, size_t send_bytes, void* recv,
                               const std::vector<size_t>& recv_bytes) {
  // Every block goes straight to every peer, all messages in flight at once (not
  // MPI_Iallgatherv: on 2 ranks Open MPI's libnbc took 4.6-5.5x MPI_Allgatherv's time from
  // 64 KiB to 1 MiB a rank, this 0.99-1.09x; on 3-4 ranks this was the fastest of the three,
  // docs/performance.md "All-gather without libnbc"). A zero-byte block still sends its
  // message, so every receive completes.
  constexpr int kTagAllgatherv = 110;  // apart from the algorithms' 101-109 (pipeline.h)
  CheckedInt(send_bytes, "allgather block size");
  if (recv_bytes.size() != static_cast<size_t>(size_) || recv_bytes[rank_] != send_bytes) {
    throw CollectiveError("allgather: this rank's block is " + std::to_string(send_bytes) +
                          " bytes but its slot in the result is " +
                          std::to_string(recv_bytes.size() > static_cast<size_t>(rank_)
                                             ? recv_bytes[rank_] : 0) + " bytes");
  }
  std::vector<size_t> offsets(size_, 0);
  for (int q = 1; q < size_; ++q) offsets[q] = offsets[q - 1] + recv_bytes[q - 1];
  char* out = static_cast<char*>(recv);
  if (send_bytes != 0 && out + offsets[rank_] != send) {
    std::memmove(out + offsets[rank_], send, send_bytes);
  }
  std::vector<MPI_Request> requests;
  requests.reserve(2 * static_cast<size_t>(size_));
  for (int step = 1; step < size_; ++step) {
    const int from = (rank_ - step + size_) % size_, to = (rank_ + step) % size_;
    MPI_Request r;
    CheckMpi(MPI_Irecv(out + offsets[from], CheckedInt(recv_bytes[from], "allgather block size"),
                       MPI_BYTE, from, kTagAllgatherv, comm_, &r),
             "MPI_Irecv");
    requests.push_back(r);
    CheckMpi(MPI_Isend(send, static_cast<int>(send_bytes), MPI_BYTE, to, kTagAllgatherv, comm_,
                       &r),
             "MPI_Isend");
    requests.push_back(r);
  }
  if (!requests.empty()) {
    WaitData(requests.data(), static_cast<int>(requests.size()), "all-gather's point-to-point");
  }
}

void MpiComm::NativeAlltoallv(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                              const std::vector<size_t>& recv_bytes) {
  std::vector<int> scounts = ToIntCounts(send_bytes, "alltoall block size");
  std::vector<int> rcounts = ToIntCounts(recv_bytes, "alltoall block size");
  std::vector<int> sdispls = Displacements(scounts);
  std::vector<int> rdispls = Displacements(rcounts);
  MPI_Request req;
  CheckMpi(MPI_Ialltoallv(send, scounts.data(), sdispls.data(), MPI_BYTE, recv, rcounts.data(),
                          rdispls.data(), MPI_BYTE, comm_, &req),
           "MPI_Ialltoallv");
  WaitData(&req, 1, "MPI_Ialltoallv");
}

void MpiComm::NativeReduceScatterv(const void* send, void* recv,
                                   const std::vector<size_t>& recv_counts, DataType dtype,
                                   ReduceOp op) {
  // Every block goes straight to the rank that owns it, all messages in flight at once, and
  // the owner reduces what arrived (not MPI_Ireduce_scatter, which Open MPI's libnbc runs 1.2-3x
  // slower than its blocking form on 2 ranks; docs/performance.md "All-gather without libnbc").
  constexpr int kTagReduceScatterv = 111;  // apart from the algorithms' 101-109 (pipeline.h)
  if (recv_counts.size() != static_cast<size_t>(size_)) {
    throw CollectiveError("reducescatter: " + std::to_string(recv_counts.size()) +
                          " blocks for " + std::to_string(size_) + " ranks");
  }
  const size_t elem = DataTypeSize(dtype);
  std::vector<size_t> offsets(size_, 0);
  for (int q = 1; q < size_; ++q) offsets[q] = offsets[q - 1] + recv_counts[q - 1];
  const size_t mine_bytes = recv_counts[rank_] * elem;
  CheckedInt(mine_bytes, "reducescatter block");
  const char* in = static_cast<const char*>(send);
  std::vector<char> arrived(static_cast<size_t>(size_ - 1) * mine_bytes);
  std::vector<MPI_Request> requests;
  requests.reserve(2 * static_cast<size_t>(size_));
  for (int step = 1; step < size_; ++step) {
    const int from = (rank_ - step + size_) % size_, to = (rank_ + step) % size_;
    MPI_Request r;
    CheckMpi(MPI_Irecv(arrived.data() + (step - 1) * mine_bytes, static_cast<int>(mine_bytes),
                       MPI_BYTE, from, kTagReduceScatterv, comm_, &r),
             "MPI_Irecv");
    requests.push_back(r);
    CheckMpi(MPI_Isend(in + offsets[to] * elem,
                       CheckedInt(recv_counts[to] * elem, "reducescatter block"), MPI_BYTE, to,
                       kTagReduceScatterv, comm_, &r),
             "MPI_Isend");
    requests.push_back(r);
  }
  if (!requests.empty()) {
    WaitData(requests.data(), static_cast<int>(requests.size()),
             "reduce-scatter's point-to-point");
  }
  if (mine_bytes == 0) return;
  std::memmove(recv, in + offsets[rank_] * elem, mine_bytes);
  for (int step = 1; step < size_; ++step) {
    CpuReduceInto(recv, arrived.data() + (step - 1) * mine_bytes, recv_counts[rank_], dtype, op);
  }
}

void MpiComm::Barrier() {
  MPI_Request req;
  CheckMpi(MPI_Ibarrier(comm_, &req), "MPI_Ibarrier");
  WaitData(&req, 1, "MPI_Ibarrier");
}

}  // namespace fusecomm

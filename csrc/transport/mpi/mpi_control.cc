#include "transport/mpi/mpi_control.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <iomanip>
#include <sstream>
#include <thread>

#include "common/errors.h"
#include "transport/mpi/liveness.h"
#include "transport/mpi/mpi_comm.h"
#include "transport/mpi/mpi_wait.h"

namespace fusecomm {

void WaitWithBackoff(MPI_Request* request, const char* call) {
  WaitPolling(request, 1, call, /*max_sleep_us=*/1000);
}

namespace {
// MPI's side of AllreduceNegotiation: `len` whole messages of the contiguous type `type`, each
// a slot followed by words that are ANDed.
void CombineNegotiation(void* in, void* inout, int* len, MPI_Datatype* type) {
  int bytes = 0;
  MPI_Type_size(*type, &bytes);
  const size_t words = static_cast<size_t>(bytes) / sizeof(uint64_t);
  for (int e = 0; e < *len; ++e) {
    const uint64_t* a = static_cast<const uint64_t*>(in) + e * words;
    uint64_t* b = static_cast<uint64_t*>(inout) + e * words;
    NegotiationSlot sa, sb;
    std::memcpy(static_cast<void*>(&sa), a, sizeof(sa));
    std::memcpy(static_cast<void*>(&sb), b, sizeof(sb));
    CombineNegotiationSlots(sa, sb);
    std::memcpy(b, &sb, sizeof(sb));
    for (size_t i = NegotiationSlot::kWords; i < words; ++i) b[i] &= a[i];
  }
}

// The heartbeat's view of who is silent, as the slow-wait report's suspects.
std::string SilentPeersText(double seconds) {
  std::ostringstream out;
  for (const auto& [rank, silent] : LivenessMonitor::SilentPeers(seconds)) {
    out << (out.tellp() > 0 ? ", " : "") << "no heartbeat from rank " << rank << " for "
        << std::fixed << std::setprecision(1) << silent << " s";
  }
  return out.str();
}
}  // namespace

void MpiControlChannel::Wait(MPI_Request* request, const char* call) {
  if (!slow_report_ || slow_after_seconds_ <= 0) return WaitWithBackoff(request, call);
  using Clock = std::chrono::steady_clock;
  const auto slice = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(slow_after_seconds_));
  const auto start = Clock::now();
  auto report_at = start + slice;
  int done = 0;
  // Spins first like WaitPolling (a negotiation is usually microseconds), then sleeps.
  constexpr int kSpinIterations = 2000;
  auto sleep = std::chrono::microseconds(1);
  for (int i = 0;; ++i) {
    if (TransportAborted()) throw CollectiveError(TransportAbortReason());
    CheckMpi(MPI_Test(request, &done, MPI_STATUS_IGNORE), call);
    if (done) return;
    if (i < kSpinIterations) continue;
    const auto now = Clock::now();
    if (now >= report_at) {
      slow_report_(std::chrono::duration<double>(now - start).count(),
                   SilentPeersText(slow_after_seconds_));
      report_at = now + slice;
    }
    std::this_thread::sleep_for(sleep);
    // A peer's engine starts its next cycle within a cycle time (1 ms), so the first
    // milliseconds sleep at most 100 us (a 1 ms sleep made a negotiation late by up to 1 ms);
    // a wait that goes on (a frozen or busy peer) backs off to 1 ms.
    const auto cap = now - start < std::chrono::milliseconds(10) ? std::chrono::microseconds(100)
                                                                 : std::chrono::microseconds(1000);
    sleep = std::min(sleep * 2, cap);
  }
}

MpiControlChannel::MpiControlChannel(MPI_Comm comm) : comm_(comm) {
  CheckMpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  CheckMpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  CheckMpi(MPI_Op_create(&CombineNegotiation, /*commute=*/1, &negotiation_op_), "MPI_Op_create");
}

MpiControlChannel::~MpiControlChannel() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (auto& [total, type] : negotiation_types_) MPI_Type_free(&type);
  if (negotiation_op_ != MPI_OP_NULL) MPI_Op_free(&negotiation_op_);
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiControlChannel::AllreduceNegotiation(std::vector<uint64_t>& words, NegotiationSlot& slot) {
  const size_t total = NegotiationSlot::kWords + words.size();
  if (total > INT_MAX) throw CollectiveError("negotiation message too long");
  auto found = negotiation_types_.find(static_cast<int>(total));
  if (found == negotiation_types_.end()) {
    MPI_Datatype made;
    CheckMpi(MPI_Type_contiguous(static_cast<int>(total), MPI_UINT64_T, &made),
             "MPI_Type_contiguous");
    CheckMpi(MPI_Type_commit(&made), "MPI_Type_commit");
    found = negotiation_types_.emplace(static_cast<int>(total), made).first;
  }
  const MPI_Datatype type = found->second;
  negotiation_buffer_.resize(total);
  std::memcpy(negotiation_buffer_.data(), &slot, sizeof(slot));
  std::copy(words.begin(), words.end(), negotiation_buffer_.begin() + NegotiationSlot::kWords);
  MPI_Request req;
  CheckMpi(MPI_Iallreduce(MPI_IN_PLACE, negotiation_buffer_.data(), 1, type, negotiation_op_,
                          comm_, &req),
           "MPI_Iallreduce");
  Wait(&req, "MPI_Iallreduce");
  std::memcpy(static_cast<void*>(&slot), negotiation_buffer_.data(), sizeof(slot));
  std::copy(negotiation_buffer_.begin() + NegotiationSlot::kWords, negotiation_buffer_.end(),
            words.begin());
}

std::vector<std::vector<char>> MpiControlChannel::GatherToRoot(const std::vector<char>& mine) {
  int my_size = static_cast<int>(mine.size());
  std::vector<int> sizes(rank_ == 0 ? size_ : 0);
  MPI_Request req;
  CheckMpi(MPI_Igather(&my_size, 1, MPI_INT, sizes.data(), 1, MPI_INT, 0, comm_, &req),
           "MPI_Igather");
  Wait(&req, "MPI_Igather");
  std::vector<int> displs;
  std::vector<char> all;
  if (rank_ == 0) {
    displs.resize(size_);
    long long total = 0;
    for (int r = 0; r < size_; ++r) {
      displs[r] = static_cast<int>(total);
      total += sizes[r];
    }
    if (total > INT_MAX) throw CollectiveError("negotiation message exceeds 2 GiB");
    all.resize(static_cast<size_t>(total));
  }
  CheckMpi(MPI_Igatherv(mine.data(), my_size, MPI_BYTE, all.data(), sizes.data(), displs.data(),
                        MPI_BYTE, 0, comm_, &req),
           "MPI_Igatherv");
  Wait(&req, "MPI_Igatherv");
  std::vector<std::vector<char>> out;
  if (rank_ == 0) {
    for (int r = 0; r < size_; ++r) {
      out.emplace_back(all.begin() + displs[r], all.begin() + displs[r] + sizes[r]);
    }
  }
  return out;
}

void MpiControlChannel::BroadcastFromRoot(std::vector<char>& bytes) {
  long long n = static_cast<long long>(bytes.size());
  MPI_Request req;
  CheckMpi(MPI_Ibcast(&n, 1, MPI_LONG_LONG, 0, comm_, &req), "MPI_Ibcast");
  Wait(&req, "MPI_Ibcast");
  if (n > INT_MAX) throw CollectiveError("negotiation message exceeds 2 GiB");
  bytes.resize(static_cast<size_t>(n));
  CheckMpi(MPI_Ibcast(bytes.data(), static_cast<int>(n), MPI_BYTE, 0, comm_, &req), "MPI_Ibcast");
  Wait(&req, "MPI_Ibcast");
}

int64_t MpiControlChannel::AllreduceMin(int64_t value) {
  MPI_Request req;
  CheckMpi(MPI_Iallreduce(MPI_IN_PLACE, &value, 1, MPI_INT64_T, MPI_MIN, comm_, &req),
           "MPI_Iallreduce");
  Wait(&req, "MPI_Iallreduce");
  return value;
}

}  // namespace fusecomm

#include "transport/mpi/mpi_control.h"

#include <algorithm>
#include <chrono>
#include <climits>
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
}

MpiControlChannel::~MpiControlChannel() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiControlChannel::AllreduceBitwiseAnd(std::vector<uint64_t>& words) {
  MPI_Request req;
  CheckMpi(MPI_Iallreduce(MPI_IN_PLACE, words.data(), static_cast<int>(words.size()),
                          MPI_UINT64_T, MPI_BAND, comm_, &req),
           "MPI_Iallreduce");
  Wait(&req, "MPI_Iallreduce");
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

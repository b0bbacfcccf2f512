#include "transport/mpi/mpi_wait.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

#include "common/errors.h"
#include "transport/mpi/mpi_comm.h"

namespace fusecomm {

namespace {
using Clock = std::chrono::steady_clock;

// Polls until every request is done. Spinning keeps small messages at microseconds; then the
// thread sleeps so an oversubscribed or busy rank gets its core back. Returns false when
// `timeout_seconds` > 0 passed with no request completing (each completion restarts the clock,
// so a long transfer that keeps moving is never cut off).
bool Poll(MPI_Request* requests, int count, const char* call, int max_sleep_us,
          double timeout_seconds) {
  constexpr int kSpinIterations = 2000;
  const auto limit = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(timeout_seconds));
  std::vector<int> indices(static_cast<size_t>(count));
  auto last_progress = Clock::now();
  auto sleep = std::chrono::microseconds(2);
  for (int i = 0;; ++i) {
    if (TransportAborted()) throw CollectiveError(TransportAbortReason());
    int completed = 0;
    // Completed requests become MPI_REQUEST_NULL; MPI_UNDEFINED: none is left.
    CheckMpi(MPI_Testsome(count, requests, &completed, indices.data(), MPI_STATUSES_IGNORE),
             call);
    if (completed == MPI_UNDEFINED) return true;
    if (completed > 0) {
      last_progress = Clock::now();
      continue;
    }
    if (i < kSpinIterations) continue;
    if (timeout_seconds > 0 && Clock::now() - last_progress > limit) return false;
    std::this_thread::sleep_for(sleep);
    if (sleep.count() < max_sleep_us) sleep *= 2;
  }
}
}  // namespace

void WaitPolling(MPI_Request* requests, int count, const char* call, int max_sleep_us) {
  Poll(requests, count, call, max_sleep_us, 0);
}

void WaitData(MPI_Request* requests, int count, const std::string& what) {
  const double timeout = DataWaitBound();
  std::string reason;
  try {
    if (Poll(requests, count, "MPI_Testsome", /*max_sleep_us=*/50, timeout)) return;
    char seconds[32];
    std::snprintf(seconds, sizeof(seconds), "%g", timeout);
    reason = what + ": nothing arrived or left for " + seconds +
             " s (FUSECOMM_DATA_TIMEOUT_SECONDS): the peer is not taking part in this "
             "collective (it failed, hung, or is running a different one)";
  } catch (const CollectiveError& e) {
    if (TransportAborted()) throw;
    reason = what + ": " + e.what();
  }
  AbortTransport(reason);
  throw CollectiveError(reason);
}

}  // namespace fusecomm

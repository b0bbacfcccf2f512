#include "transport/mpi/mpi_wait.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <vector>

#include "common/errors.h"
#include "common/wait_backoff.h"
#include "transport/mpi/mpi_comm.h"

namespace fusecomm {

namespace {
using Clock = std::chrono::steady_clock;

// Polls until every request is done. Returns false when `timeout_seconds` > 0 passed with no
// request completing (each completion restarts the clock, so a long transfer that keeps moving
// is never cut off). A non-blocking collective only advances while this thread tests it, so
// the wait tests without sleeping while it may be close (a wait that slept from the start
// made `mpi` through the engine take 2.5x MPI_Allreduce's time at 16-64 MiB); past a few
// milliseconds without a completion it naps between tests (WaitBackoff says why). The
// negotiation's waits, which may wait long for a peer's next cycle, back off sooner
// (MpiControlChannel::WaitUntil).
bool Poll(MPI_Request* requests, int count, const char* call, double timeout_seconds) {
  constexpr int kSpinIterations = 2000;
  constexpr int kMaxInlineRequests = 8;  // no allocation for the usual one or two requests
  const auto limit = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(timeout_seconds));
  int inline_indices[kMaxInlineRequests];
  std::vector<int> more_indices(count > kMaxInlineRequests ? static_cast<size_t>(count) : 0);
  int* indices = count > kMaxInlineRequests ? more_indices.data() : inline_indices;
  auto last_progress = Clock::now();
  WaitBackoff backoff(kSpinIterations);
  for (;;) {
    if (TransportAborted()) throw CollectiveError(TransportAbortReason());
    int completed = 0;
    // Completed requests become MPI_REQUEST_NULL; MPI_UNDEFINED: none is left.
    CheckMpi(MPI_Testsome(count, requests, &completed, indices, MPI_STATUSES_IGNORE), call);
    if (completed == MPI_UNDEFINED) return true;
    if (completed > 0) {
      last_progress = Clock::now();
      backoff.Progress();
      continue;
    }
    if (timeout_seconds > 0 && backoff.CheckDeadlineNow() &&
        Clock::now() - last_progress > limit) {
      return false;
    }
    backoff.Pause();
  }
}
}  // namespace

void WaitData(MPI_Request* requests, int count, const std::string& what) {
  const double timeout = DataWaitBound();
  std::string reason;
  try {
    if (Poll(requests, count, "MPI_Testsome", timeout)) return;
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

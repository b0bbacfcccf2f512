#include "transport/mpi/mpi_wait.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "common/errors.h"
#include "transport/mpi/mpi_comm.h"

namespace fusecomm {

namespace {
std::atomic<bool> g_aborted{false};
std::mutex g_reason_mutex;
std::string g_reason;
}  // namespace

void AbortTransport(const std::string& reason) {
  std::lock_guard<std::mutex> lock(g_reason_mutex);
  if (g_aborted) return;  // the first cause is the one worth reporting
  g_reason = reason;
  g_aborted = true;
}

bool TransportAborted() { return g_aborted.load(std::memory_order_relaxed); }

std::string TransportAbortReason() {
  std::lock_guard<std::mutex> lock(g_reason_mutex);
  return g_reason;
}

void WaitPolling(MPI_Request* requests, int count, const char* call, int max_sleep_us) {
  // Spinning keeps small messages at microseconds; then the thread sleeps so an oversubscribed
  // or busy rank gets its core back.
  constexpr int kSpinIterations = 2000;
  int done = 0;
  auto sleep = std::chrono::microseconds(2);
  for (int i = 0;; ++i) {
    if (TransportAborted()) throw CollectiveError(TransportAbortReason());
    CheckMpi(MPI_Testall(count, requests, &done, MPI_STATUSES_IGNORE), call);
    if (done) return;
    if (i < kSpinIterations) continue;
    std::this_thread::sleep_for(sleep);
    if (sleep.count() < max_sleep_us) sleep *= 2;
  }
}

}  // namespace fusecomm

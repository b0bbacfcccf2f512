#include "transport/abort.h"

#include <atomic>
#include <mutex>

namespace fusecomm {

namespace {
std::atomic<bool> g_aborted{false};
std::mutex g_reason_mutex;
std::string g_reason;
thread_local double t_data_timeout_seconds = 0;
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

void BoundDataWaits(double seconds) { t_data_timeout_seconds = seconds; }

double DataWaitBound() { return t_data_timeout_seconds; }

}  // namespace fusecomm

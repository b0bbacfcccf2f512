#include "transport/shared_segment.h"

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "common/errors.h"
#include "transport/abort.h"

namespace fusecomm {

namespace {
// Each counter on a cache line of its own, so one rank's store does not disturb the others'.
constexpr size_t kCounterStride = 64;
constexpr size_t kSlotAlignment = 64;
constexpr int kSpinRounds = 4000;
using Clock = std::chrono::steady_clock;

size_t CountersBytes(int ranks) {
  return (static_cast<size_t>(ranks) * kCounterStride + kSlotAlignment - 1) / kSlotAlignment *
         kSlotAlignment;
}
}  // namespace

size_t SharedSegment::Bytes(int ranks, size_t slot_bytes) {
  return CountersBytes(ranks) + 2 * static_cast<size_t>(ranks) * slot_bytes;
}

SharedSegment::SharedSegment(char* base, int rank, int size, size_t slot_bytes)
    : base_(base), rank_(rank), size_(size), slot_bytes_(slot_bytes) {
  __atomic_store_n(counter(rank_), 0, __ATOMIC_RELEASE);
}

uint64_t* SharedSegment::counter(int rank) const {
  return reinterpret_cast<uint64_t*>(base_ + static_cast<size_t>(rank) * kCounterStride);
}

char* SharedSegment::slot(int set, int rank) const {
  return base_ + CountersBytes(size_) +
         (static_cast<size_t>(set) * size_ + static_cast<size_t>(rank)) * slot_bytes_;
}

uint64_t SharedSegment::Arrive() {
  __atomic_store_n(counter(rank_), ++phase_, __ATOMIC_RELEASE);
  return phase_;
}

bool SharedSegment::AllArrived(uint64_t phase) const {
  for (int q = 0; q < size_; ++q) {
    if (__atomic_load_n(counter(q), __ATOMIC_ACQUIRE) < phase) return false;
  }
  return true;
}

void SharedSegment::Synchronize(const char* what) {
  const uint64_t phase = Arrive();
  const double bound = DataWaitBound();
  for (int q = 0; q < size_; ++q) {
    const uint64_t* theirs = counter(q);
    auto since = Clock::now();
    for (int round = 0; __atomic_load_n(theirs, __ATOMIC_ACQUIRE) < phase; ++round) {
      if (round < kSpinRounds) continue;
      if (TransportAborted()) throw CollectiveError(TransportAbortReason());
      // Reading the clock costs more than a load: only every 64th round once yielding.
      if (bound > 0 && round % 64 == 0 &&
          std::chrono::duration<double>(Clock::now() - since).count() > bound) {
        char seconds[32];
        std::snprintf(seconds, sizeof(seconds), "%g", bound);
        const std::string reason =
            std::string(what) + ": rank " + std::to_string(q) + " did not reach phase " +
            std::to_string(phase) + " of the shared-memory segment in " + seconds +
            " s (FUSECOMM_DATA_TIMEOUT_SECONDS): it is not taking part in this collective "
            "(it failed, hung, or is running a different one)";
        AbortTransport(reason);
        throw CollectiveError(reason);
      }
      // Ranks may outnumber the cores: the one this rank waits for may need this core.
      std::this_thread::yield();
    }
  }
}

}  // namespace fusecomm

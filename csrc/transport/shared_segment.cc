#include "transport/shared_segment.h"

#include <sys/uio.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/errors.h"
#include "common/wait_backoff.h"
#include "transport/abort.h"

namespace fusecomm {

namespace {
// Each rank's line: its phase counter, process id and published address, on a cache line of
// its own, so one rank's store does not disturb the others'.
constexpr size_t kCounterStride = 64;
constexpr size_t kProcessIdOffset = 8, kPublishedOffset = 16;
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
  __atomic_store_n(process_id(rank_), static_cast<int64_t>(getpid()), __ATOMIC_RELAXED);
  __atomic_store_n(published(rank_), 0, __ATOMIC_RELAXED);
  __atomic_store_n(counter(rank_), 0, __ATOMIC_RELEASE);
}

uint64_t* SharedSegment::counter(int rank) const {
  return reinterpret_cast<uint64_t*>(base_ + static_cast<size_t>(rank) * kCounterStride);
}

int64_t* SharedSegment::process_id(int rank) const {
  return reinterpret_cast<int64_t*>(base_ + static_cast<size_t>(rank) * kCounterStride +
                                    kProcessIdOffset);
}

uint64_t* SharedSegment::published(int rank) const {
  return reinterpret_cast<uint64_t*>(base_ + static_cast<size_t>(rank) * kCounterStride +
                                     kPublishedOffset);
}

void SharedSegment::PublishAddress(const void* address) {
  // Relaxed: the release of this rank's next Arrive carries it to the others.
  __atomic_store_n(published(rank_), reinterpret_cast<uintptr_t>(address), __ATOMIC_RELAXED);
}

namespace {
// The bytes read; -1 with errno set.
ssize_t ReadProcessMemory(int64_t pid, uint64_t address, void* out, size_t bytes) {
#ifdef __linux__
  iovec local{out, bytes};
  iovec remote{reinterpret_cast<void*>(address), bytes};
  return process_vm_readv(static_cast<pid_t>(pid), &local, 1, &remote, 1, 0);
#else
  (void)pid, (void)address, (void)out, (void)bytes;
  errno = ENOSYS;
  return -1;
#endif
}
}  // namespace

void SharedSegment::ReadPeer(int peer, size_t offset, void* out, size_t bytes,
                             const char* what) const {
  const int64_t pid = __atomic_load_n(process_id(peer), __ATOMIC_RELAXED);
  const uint64_t address = __atomic_load_n(published(peer), __ATOMIC_RELAXED) + offset;
  char* to = static_cast<char*>(out);
  for (size_t done = 0; done < bytes;) {  // the kernel may copy less than asked
    const ssize_t got = ReadProcessMemory(pid, address + done, to + done, bytes - done);
    if (got > 0) {
      done += static_cast<size_t>(got);
      continue;
    }
    if (got < 0 && errno == EINTR) continue;
    const std::string process = "rank " + std::to_string(peer) + "'s process (" +
                                std::to_string(pid) + ")";
    const std::string reason =
        got < 0 && errno == ESRCH
            ? std::string(what) + ": " + process + " is gone: it died or was killed"
            : std::string(what) + ": cannot read the buffer of " + process + ": " +
                  (got < 0 ? std::strerror(errno) : "no bytes copied");
    AbortTransport(reason);
    throw CollectiveError(reason);
  }
}

void SharedSegment::AllowPeerReads() {
#if defined(__linux__) && defined(PR_SET_PTRACER)
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);  // fails harmlessly without Yama
#endif
}

bool SharedSegment::ProbePeerReads(uint64_t expected) const {
  for (int q = 0; q < size_; ++q) {
    if (q == rank_) continue;
    uint64_t value = 0;
    if (ReadProcessMemory(__atomic_load_n(process_id(q), __ATOMIC_RELAXED),
                          __atomic_load_n(published(q), __ATOMIC_RELAXED), &value,
                          sizeof(value)) != static_cast<ssize_t>(sizeof(value)) ||
        value != expected) {
      return false;
    }
  }
  return true;
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
  // Ranks may outnumber the cores: the one this rank waits for may need this core.
  WaitBackoff backoff(kSpinRounds);
  for (int q = 0; q < size_; ++q) {
    const uint64_t* theirs = counter(q);
    auto since = Clock::now();
    while (__atomic_load_n(theirs, __ATOMIC_ACQUIRE) < phase) {
      backoff.Pause();
      if (!backoff.CheckDeadlineNow()) continue;
      if (TransportAborted()) throw CollectiveError(TransportAbortReason());
      if (bound > 0 && std::chrono::duration<double>(Clock::now() - since).count() > bound) {
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
    }
    backoff.Progress();
  }
}

}  // namespace fusecomm

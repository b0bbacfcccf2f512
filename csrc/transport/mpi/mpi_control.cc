#include "transport/mpi/mpi_control.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <iomanip>
#include <sstream>
#include <thread>
#include <utility>

#include "common/errors.h"
#include "transport/mpi/liveness.h"
#include "transport/mpi/mpi_comm.h"
#include "transport/mpi/mpi_wait.h"
#include "transport/shared_segment.h"

namespace fusecomm {

namespace {
// inout = in combined with inout, for two negotiation messages of `words` words each: a slot,
// then words that are ANDed.
void CombineNegotiationMessages(const uint64_t* in, uint64_t* inout, size_t words) {
  NegotiationSlot theirs, mine;
  std::memcpy(static_cast<void*>(&theirs), in, sizeof(theirs));
  std::memcpy(static_cast<void*>(&mine), inout, sizeof(mine));
  CombineNegotiationSlots(theirs, mine);
  std::memcpy(inout, &mine, sizeof(mine));
  for (size_t i = NegotiationSlot::kWords; i < words; ++i) inout[i] &= in[i];
}

// Tag of the negotiation's point-to-point messages (the control communicator carries no other).
constexpr int kNegotiationTag = 0x6e67;

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

template <typename Done>
void MpiControlChannel::WaitUntil(Done done, const char* call) {
  using Clock = std::chrono::steady_clock;
  const bool reporting = slow_report_ && slow_after_seconds_ > 0;
  const auto slice = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(reporting ? slow_after_seconds_ : 0));
  const auto start = Clock::now();
  auto report_at = start + slice;
  // Spinning is timed, not counted: a shared-memory test takes nanoseconds, an MPI test a
  // fraction of a microsecond. Past the first tests each one yields the core (ranks may
  // outnumber cores, and the peer being waited for may need this one).
  constexpr int kPureSpins = 100;
  constexpr auto kSpinTime = std::chrono::microseconds(250);
  auto sleep = std::chrono::microseconds(1);
  for (int i = 0;; ++i) {
    if (TransportAborted()) throw CollectiveError(TransportAbortReason());
    if (done()) return;
    if (i < kPureSpins) continue;
    const auto now = Clock::now();
    if (now - start < kSpinTime) {
      std::this_thread::yield();
      continue;
    }
    if (reporting && now >= report_at) {
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
  (void)call;
}

void MpiControlChannel::Wait(MPI_Request* request, const char* call, int count) {
  WaitUntil(
      [&] {
        int all_done = 0;
        CheckMpi(MPI_Testall(count, request, &all_done, MPI_STATUSES_IGNORE), call);
        return all_done != 0;
      },
      call);
}

MpiControlChannel::MpiControlChannel(MPI_Comm comm) : comm_(comm) {
  CheckMpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  CheckMpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
}

MpiControlChannel::~MpiControlChannel() {
  shared_.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiControlChannel::AttachSharedSegment(size_t slot_bytes) {
  MPI_Comm dup = MPI_COMM_NULL;
  CheckMpi(MPI_Comm_dup(comm_, &dup), "MPI_Comm_dup");
  auto shared = std::make_unique<MpiComm>(dup, true);
  shared->AttachSharedSegment(slot_bytes);
  if (shared->shared_segment() != nullptr) shared_ = std::move(shared);
}

bool MpiControlChannel::AllreduceNegotiationShared(std::vector<uint64_t>& words,
                                                   NegotiationSlot& slot) {
  SharedSegment& segment = *shared_->shared_segment();
  const size_t total = NegotiationSlot::kWords + words.size();
  // The same on every rank: every rank's message has the same length.
  if (total * sizeof(uint64_t) > segment.slot_bytes()) return false;
  const int set = static_cast<int>(segment.pieces++ % 2);
  uint64_t* mine = reinterpret_cast<uint64_t*>(segment.slot(set, rank_));
  std::memcpy(mine, &slot, sizeof(slot));
  std::copy(words.begin(), words.end(), mine + NegotiationSlot::kWords);
  // One synchronization suffices with two slot sets: a rank that writes this set again two
  // negotiations on has passed the next one's synchronization, which every rank reached only
  // after reading this one.
  const uint64_t phase = segment.Arrive();
  WaitUntil([&] { return segment.AllArrived(phase); }, "negotiation in shared memory");
  // Every rank combines the messages in rank order, so every rank gets the same bits.
  negotiation_buffer_.resize(total);
  uint64_t* combined = negotiation_buffer_.data();
  std::memcpy(combined, segment.slot(set, 0), total * sizeof(uint64_t));
  for (int q = 1; q < size_; ++q) {
    CombineNegotiationMessages(reinterpret_cast<const uint64_t*>(segment.slot(set, q)), combined,
                               total);
  }
  std::memcpy(static_cast<void*>(&slot), combined, sizeof(slot));
  std::copy(combined + NegotiationSlot::kWords, combined + total, words.begin());
  return true;
}

void MpiControlChannel::AllreduceNegotiation(std::vector<uint64_t>& words, NegotiationSlot& slot) {
  if (shared_ && AllreduceNegotiationShared(words, slot)) return;
  // Recursive doubling on point-to-point messages, not MPI_Iallreduce: libnbc builds a schedule
  // for every call, and on 2 ranks its all-reduce of this message took 0.64 us (1.3 us with
  // mpi_yield_when_idle) where one Isend/Irecv pair takes 0.21 us (0.53 us). Both partners of a
  // step combine the same two messages, and the combination is commutative, so every rank ends
  // with the same bits, and the same slot payload to the last bit.
  const size_t total = NegotiationSlot::kWords + words.size();
  if (total > INT_MAX) throw CollectiveError("negotiation message too long");
  negotiation_buffer_.resize(2 * total);
  uint64_t* mine = negotiation_buffer_.data();
  uint64_t* theirs = mine + total;
  std::memcpy(mine, &slot, sizeof(slot));
  std::copy(words.begin(), words.end(), mine + NegotiationSlot::kWords);
  const int count = static_cast<int>(total);
  auto exchange = [&](int peer, bool send, bool receive) {
    MPI_Request requests[2];
    int n = 0;
    if (receive) {
      CheckMpi(MPI_Irecv(theirs, count, MPI_UINT64_T, peer, kNegotiationTag, comm_,
                         &requests[n++]), "MPI_Irecv");
    }
    if (send) {
      CheckMpi(MPI_Isend(mine, count, MPI_UINT64_T, peer, kNegotiationTag, comm_,
                         &requests[n++]), "MPI_Isend");
    }
    Wait(requests, "negotiation exchange", n);
    if (receive && send) CombineNegotiationMessages(theirs, mine, total);
  };
  // Rank counts that are not a power of two: of the first 2 * rem ranks, each even one hands
  // its message to the odd one after it, waits, and gets the result back.
  int pow2 = 1;
  while (pow2 * 2 <= size_) pow2 *= 2;
  const int rem = size_ - pow2;
  if (rank_ < 2 * rem && rank_ % 2 == 0) {
    exchange(rank_ + 1, /*send=*/true, /*receive=*/false);
    exchange(rank_ + 1, /*send=*/false, /*receive=*/true);
    std::swap(mine, theirs);  // the result arrived in `theirs`
  } else {
    if (rank_ < 2 * rem) {
      exchange(rank_ - 1, /*send=*/false, /*receive=*/true);
      CombineNegotiationMessages(theirs, mine, total);
    }
    const int virtual_rank = rank_ < 2 * rem ? rank_ / 2 : rank_ - rem;
    for (int mask = 1; mask < pow2; mask <<= 1) {
      const int virtual_peer = virtual_rank ^ mask;
      exchange(virtual_peer < rem ? 2 * virtual_peer + 1 : virtual_peer + rem, true, true);
    }
    if (rank_ < 2 * rem) exchange(rank_ - 1, /*send=*/true, /*receive=*/false);
  }
  std::memcpy(static_cast<void*>(&slot), mine, sizeof(slot));
  std::copy(mine + NegotiationSlot::kWords, mine + total, words.begin());
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

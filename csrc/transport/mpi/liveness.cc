#include "transport/mpi/liveness.h"

#include <sstream>

#include "common/logging.h"
#include "transport/mpi/mpi_wait.h"

namespace fusecomm {

namespace {
// Message kinds (the tag); the payload is one int (the dead rank for kAbort).
constexpr int kHeartbeat = 1, kBye = 2, kAbort = 3;
using Clock = std::chrono::steady_clock;

// The running monitor, for SilentPeers (one per process: the global set's).
std::mutex g_active_mutex;
LivenessMonitor* g_active = nullptr;

std::string Seconds(std::chrono::duration<double> d) {
  std::ostringstream out;
  out.precision(3);
  out << d.count() << " s";
  return out.str();
}
}  // namespace

LivenessMonitor::LivenessMonitor(MPI_Comm comm, double interval_seconds, double timeout_seconds)
    : interval_(interval_seconds), timeout_(timeout_seconds) {
  // Duplicated even when disabled: MPI_Comm_dup is collective, and a rank whose timeout
  // differs from its peers' must still reach init()'s settings agreement in step with them.
  MPI_Comm_dup(comm, &comm_);
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  last_heard_.assign(size_, Clock::now());
  departed_.assign(size_, false);
  payloads_ = new int[size_];
  for (int r = 0; r < size_; ++r) payloads_[r] = r;
  if (timeout_seconds > 0 && size_ > 1) {
    thread_ = std::thread([this] { Loop(); });
    std::lock_guard<std::mutex> lock(g_active_mutex);
    g_active = this;
  }
}

LivenessMonitor::~LivenessMonitor() { Stop(); }

void LivenessMonitor::Stop() {
  {
    std::lock_guard<std::mutex> lock(g_active_mutex);
    if (g_active == this) g_active = nullptr;
  }
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void LivenessMonitor::StopSilently() {
  say_goodbye_ = false;
  Stop();
}

std::vector<std::pair<int, double>> LivenessMonitor::SilentPeers(double seconds) {
  std::vector<std::pair<int, double>> silent;
  std::lock_guard<std::mutex> active(g_active_mutex);
  if (!g_active) return silent;
  LivenessMonitor& m = *g_active;
  std::lock_guard<std::mutex> lock(m.heard_mutex_);
  const auto now = Clock::now();
  for (int r = 0; r < m.size_; ++r) {
    const bool watched = m.rank_ == 0 ? r != 0 : r == 0;
    const std::chrono::duration<double> quiet = now - m.last_heard_[r];
    if (watched && !m.departed_[r] && quiet.count() >= seconds) silent.emplace_back(r, quiet.count());
  }
  return silent;
}

void LivenessMonitor::Declare(const std::string& reason) {
  FUSECOMM_LOG(kError, reason);
  AbortTransport(reason);
}

void LivenessMonitor::Loop() {
  // Every rank keeps one receive posted for whatever comes next (from rank 0, or at rank 0
  // from anyone) and sends a heartbeat each interval: rank 0 to all, the others to rank 0.
  const int expected_peers = rank_ == 0 ? size_ - 1 : 1;
  std::vector<Clock::time_point>& last_heard = last_heard_;
  std::vector<bool>& departed = departed_;
  int payload = 0;
  MPI_Request recv = MPI_REQUEST_NULL;
  MPI_Status status;
  auto post = [&] {
    MPI_Irecv(&payload, 1, MPI_INT, rank_ == 0 ? MPI_ANY_SOURCE : 0, MPI_ANY_TAG, comm_, &recv);
  };
  auto send = [&](int peer, int kind, int value) {
    MPI_Request r;
    if (MPI_Isend(&payloads_[value], 1, MPI_INT, peer, kind, comm_, &r) == MPI_SUCCESS) {
      // Small sends complete eagerly; a send to a dead peer may never, so it is not waited on.
      MPI_Request_free(&r);
    }
  };
  post();
  auto next_beat = Clock::now();
  int departed_count = 0;
  auto last_tick = Clock::now();
  while (!stop_ && !TransportAborted() && departed_count < expected_peers) {
    // This thread not running for longer than the timeout means the whole process was not (a
    // SIGSTOP, a suspended VM): the peers have given up on this rank, which must not blame
    // them for the silence it sees now.
    const auto tick = Clock::now();
    if (tick - last_tick > timeout_) {
      Declare("this rank (" + std::to_string(rank_) + ") was frozen for " +
              Seconds(tick - last_tick) + " (its process was stopped, e.g. SIGSTOP, or not "
              "scheduled), longer than the liveness timeout of " + Seconds(timeout_) +
              ": the other ranks have given up on it and the job went on without it");
      break;
    }
    last_tick = tick;
    int arrived = 0;
    MPI_Test(&recv, &arrived, &status);
    if (arrived) {
      const int from = status.MPI_SOURCE;
      std::lock_guard<std::mutex> lock(heard_mutex_);
      last_heard[from] = Clock::now();
      if (status.MPI_TAG == kBye && !departed[from]) {
        departed[from] = true;
        ++departed_count;
      } else if (status.MPI_TAG == kAbort) {
        Declare("rank " + std::to_string(payload) +
                " stopped responding (its process died, hung or was stopped); rank 0 gave up "
                "on it after " + Seconds(timeout_));
        break;
      }
      post();
      continue;
    }
    const auto now = Clock::now();
    if (now >= next_beat) {
      if (rank_ == 0) {
        for (int r = 1; r < size_; ++r) {
          if (!departed[r]) send(r, kHeartbeat, 0);
        }
      } else {
        send(0, kHeartbeat, 0);
      }
      next_beat = now + std::chrono::duration_cast<Clock::duration>(interval_);
    }
    for (int r = 0; r < size_; ++r) {
      const bool watched = rank_ == 0 ? r != 0 : r == 0;
      if (!watched || departed[r] || now - last_heard[r] < timeout_) continue;
      if (rank_ == 0) {
        for (int q = 1; q < size_; ++q) {
          if (q != r && !departed[q]) send(q, kAbort, r);
        }
      }
      Declare("rank " + std::to_string(r) + " stopped responding (its process died, hung or " +
              "was stopped): no heartbeat for " + Seconds(now - last_heard[r]));
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!TransportAborted() && say_goodbye_) {
    // A clean exit: say goodbye so the peers do not take the silence for a death.
    if (rank_ == 0) {
      for (int r = 1; r < size_; ++r) send(r, kBye, 0);
    } else {
      send(0, kBye, 0);
    }
    if (recv != MPI_REQUEST_NULL) {
      MPI_Cancel(&recv);
      MPI_Wait(&recv, MPI_STATUS_IGNORE);
    }
  }
}

}  // namespace fusecomm

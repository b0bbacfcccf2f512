#include "transport/mpi/liveness.h"

#include <sstream>

#include "common/logging.h"
#include "transport/mpi/mpi_wait.h"

namespace fusecomm {

namespace {
// Message kinds (the tag); the payload is one int (the dead rank for kAbort).
constexpr int kHeartbeat = 1, kBye = 2, kAbort = 3;
using Clock = std::chrono::steady_clock;

std::string Seconds(std::chrono::duration<double> d) {
  std::ostringstream out;
  out.precision(3);
  out << d.count() << " s";
  return out.str();
}
}  // namespace

LivenessMonitor::LivenessMonitor(MPI_Comm comm, double interval_seconds, double timeout_seconds)
    : interval_(interval_seconds), timeout_(timeout_seconds) {
  if (timeout_seconds <= 0) return;
  MPI_Comm_dup(comm, &comm_);
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  if (size_ > 1) thread_ = std::thread([this] { Loop(); });
}

LivenessMonitor::~LivenessMonitor() { Stop(); }

void LivenessMonitor::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void LivenessMonitor::StopSilently() {
  say_goodbye_ = false;
  Stop();
}

void LivenessMonitor::Declare(const std::string& reason) {
  FUSECOMM_LOG(kError, reason);
  AbortTransport(reason);
}

void LivenessMonitor::Loop() {
  // Every rank keeps one receive posted for whatever comes next (from rank 0, or at rank 0
  // from anyone) and sends a heartbeat each interval: rank 0 to all, the others to rank 0.
  const int expected_peers = rank_ == 0 ? size_ - 1 : 1;
  std::vector<Clock::time_point> last_heard(size_, Clock::now());
  std::vector<bool> departed(size_, false);
  int payload = 0;
  MPI_Request recv = MPI_REQUEST_NULL;
  MPI_Status status;
  auto post = [&] {
    MPI_Irecv(&payload, 1, MPI_INT, rank_ == 0 ? MPI_ANY_SOURCE : 0, MPI_ANY_TAG, comm_, &recv);
  };
  auto send = [&](int peer, int kind, int value) {
    MPI_Request r;
    if (MPI_Isend(&value, 1, MPI_INT, peer, kind, comm_, &r) == MPI_SUCCESS) {
      // Small sends complete eagerly; a send to a dead peer may never, so it is not waited on.
      MPI_Request_free(&r);
    }
  };
  post();
  auto next_beat = Clock::now();
  int departed_count = 0;
  while (!stop_ && !TransportAborted() && departed_count < expected_peers) {
    int arrived = 0;
    MPI_Test(&recv, &arrived, &status);
    if (arrived) {
      const int from = status.MPI_SOURCE;
      last_heard[from] = Clock::now();
      if (status.MPI_TAG == kBye && !departed[from]) {
        departed[from] = true;
        ++departed_count;
      } else if (status.MPI_TAG == kAbort) {
        Declare("rank " + std::to_string(payload) +
                " stopped responding (its process died or hung); rank 0 gave up on it after " +
                Seconds(timeout_));
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
      Declare("rank " + std::to_string(r) + " stopped responding (its process died or hung): " +
              "no heartbeat for " + Seconds(now - last_heard[r]));
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

// Detects a rank that died (killed, crashed, exited without shutting down) without relying on
// the launcher: a thread per rank exchanges heartbeats with rank 0 on its own communicator.
// Rank 0 notices a silent rank and tells everyone; every rank notices a silent rank 0. Either
// way the transport is aborted with a message naming the rank, so every blocked wait throws.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <utility>
#include <thread>
#include <vector>

#include "transport/bootstrap.h"

namespace fusecomm {

class LivenessMonitor : public Liveness {
 public:
  // Duplicates `comm`. timeout_seconds <= 0 disables the monitor.
  LivenessMonitor(MPI_Comm comm, double interval_seconds, double timeout_seconds);
  ~LivenessMonitor() override;
  // Tells the peers this rank leaves on purpose (no alarm), then stops the thread.
  void Stop() override;
  // Stops the thread without the goodbye: for a rank whose init failed alone, so peers still
  // waiting for it in init take its silence for a failure (and name it) instead of waiting on.
  void StopSilently() override;

  // The peers the running monitor has not heard from for at least `seconds`, as (rank in the
  // global set, seconds silent): rank 0 watches every rank, the others watch rank 0. Empty when
  // no monitor runs. A frozen (SIGSTOP) or hung process is silent; a busy one is not.
  static std::vector<std::pair<int, double>> SilentPeers(double seconds);

 private:
  void Loop();
  void Declare(const std::string& reason);

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  std::chrono::duration<double> interval_;
  std::chrono::duration<double> timeout_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> say_goodbye_{true};
  std::mutex heard_mutex_;  // guards last_heard_ (read by SilentPeers from other threads)
  std::vector<std::chrono::steady_clock::time_point> last_heard_;
  std::vector<bool> departed_;
  // 0..size-1: every payload sent (a heartbeat's 0, an abort's rank) points in here, since a
  // freed send request may still read its buffer after MPI_Isend returns, and even after this
  // monitor is gone (a goodbye at shutdown): never freed, a few bytes per monitor.
  int* payloads_ = nullptr;
  std::thread thread_;
};

}  // namespace fusecomm

// MPI start-up and the communicators of a process set: a control channel, a data-plane comm
// and the topology sub-communicators, all built once.
#pragma once

#include <mpi.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collectives/topology.h"
#include "common/config.h"
#include "engine/process_set_worker.h"

namespace fusecomm {

// Initializes MPI with MPI_THREAD_MULTIPLE unless someone (mpi4py) already did; in that case
// checks the thread level and leaves finalizing to the owner.
void EnsureMpiInitialized();
// Finalizes MPI at process exit if fusecomm initialized it.
void FinalizeMpiIfOwned();
std::string MpiLibraryVersion();

// Bounds init(). MPI_Init and the first communicator duplications wait inside MPI for every
// rank, where no error can reach them: a rank that never calls init(), or dies before the
// heartbeat runs, would hold the others there forever. Until HeartbeatStarted(), the watchdog
// ends the process as soon as `fusecomm run` reports a failed rank (launcher_status.h), naming
// it, or after init_timeout_seconds (<= 0: no time limit); after it, a rank is only given up
// when the heartbeat declares a peer dead (the process ends if init cannot throw within a
// grace period, naming that peer).
// liveness_timeout_seconds <= 0 (liveness off) disables the watchdog. Destruction disarms it.
class InitWatchdog {
 public:
  // Exit status of a process the watchdog ends.
  static constexpr int kExitStatus = 1;

  InitWatchdog(double liveness_timeout_seconds, double init_timeout_seconds);
  ~InitWatchdog();
  InitWatchdog(const InitWatchdog&) = delete;
  InitWatchdog& operator=(const InitWatchdog&) = delete;
  void HeartbeatStarted();

 private:
  void Loop(double limit_seconds, const std::string& rank, const std::string& launcher);

  std::mutex mutex_;
  std::condition_variable wake_;
  bool done_ = false;
  bool heartbeat_ = false;
  std::thread thread_;
};

// Every rank's init outcome, agreed: `mine` is this rank's error ("" when it succeeded). Returns
// "" when every rank succeeded, else one message naming each failing rank and its error, the
// same on every rank. Collective over `comm`; its wait gives up when the heartbeat declares a
// peer dead (CollectiveError).
std::string AgreeOnInitErrors(MPI_Comm comm, const std::string& mine);

// The communicator for the global process set: a duplicate of `base` (MPI_COMM_WORLD, the
// caller's mpi4py communicator, or the group of `ranks` of MPI_COMM_WORLD).
MPI_Comm MakeGlobalComm(MPI_Comm base, const std::vector<int>& ranks);

// Builds a worker for the process set whose members call this with `comm` (which is duplicated,
// not taken). Collective over `comm`.
std::unique_ptr<ProcessSetWorker> MakeWorker(int id, MPI_Comm comm, const Config& config,
                                             Timeline* timeline);

}  // namespace fusecomm

// The MPI transport's Bootstrap: MPI start-up (bounded by a watchdog), the groups of process
// sets as MPI communicators, and their control channels, data comms and heartbeats.
#pragma once

#include <mpi.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "transport/bootstrap.h"

namespace fusecomm {

// Initializes MPI with MPI_THREAD_MULTIPLE unless someone (mpi4py) already did; in that case
// checks the thread level and leaves finalizing to the owner.
void EnsureMpiInitialized();
// Finalizes MPI at process exit if fusecomm initialized it.
void FinalizeMpiIfOwned();
std::string MpiLibraryVersion();
// Open MPI's libnbc all-reduce algorithm (coll_libnbc_iallreduce_algorithm: 0 its own choice,
// 1 ring, ...), which init() sets to the ring unless the user chose; -1 for an MPI without it.
int MpiNonBlockingAllreduceAlgorithm();
// Whether this MPI moves device memory itself: "yes", "no", "yes (compile time)" (asked before
// MPI_Init) or "unknown" (an MPI that cannot tell).
std::string MpiCudaAwareness();

// Bounds init(). MPI_Init and the first communicator duplications wait inside MPI for every
// rank, where no error can reach them: a rank that never calls init(), or dies before the
// heartbeat runs, would hold the others there forever. Until HeartbeatStarted(), the watchdog
// ends the process as soon as `fusecomm run` reports a failed rank (launcher_status.h), naming
// it, or after init_timeout_seconds (<= 0: no time limit); after it, a rank is only given up
// when the heartbeat declares a peer dead (the process ends if init cannot throw within a
// grace period, naming that peer).
// liveness_timeout_seconds <= 0 (liveness off) disables the watchdog. Destruction disarms it.
class InitWatchdog : public StartupWatch {
 public:
  // Exit status of a process the watchdog ends.
  static constexpr int kExitStatus = 1;

  InitWatchdog(double liveness_timeout_seconds, double init_timeout_seconds);
  ~InitWatchdog() override;
  InitWatchdog(const InitWatchdog&) = delete;
  InitWatchdog& operator=(const InitWatchdog&) = delete;
  void HeartbeatStarted() override;

 private:
  void Loop(double limit_seconds, const std::string& rank, const std::string& launcher);

  std::mutex mutex_;
  std::condition_variable wake_;
  bool done_ = false;
  bool heartbeat_ = false;
  std::thread thread_;
};

// The ranks of a process set as an MPI communicator (owned; freed unless MPI is finalized or
// a dead peer could hold the free).
class MpiProcessGroup : public ProcessGroup {
 public:
  explicit MpiProcessGroup(MPI_Comm comm);
  ~MpiProcessGroup() override;
  MpiProcessGroup(const MpiProcessGroup&) = delete;
  MpiProcessGroup& operator=(const MpiProcessGroup&) = delete;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::unique_ptr<ControlChannel> NewControlChannel() override;
  std::unique_ptr<Comm> NewDataComm() override;
  std::vector<int> NodeOfEachRank(int local_size) override;
  std::unique_ptr<ProcessGroup> Subgroup(const std::vector<int>& ranks) override;
  std::unique_ptr<Liveness> StartLiveness(double timeout_seconds) override;

 private:
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
};

// Starts on `base` (MPI_COMM_WORLD, or the caller's mpi4py communicator), restricted to `ranks`
// of it when not empty; ranks outside take no part.
class MpiBootstrap : public Bootstrap {
 public:
  MpiBootstrap(MPI_Comm base, std::vector<int> ranks) : base_(base), ranks_(std::move(ranks)) {}
  std::unique_ptr<StartupWatch> WatchStartup(double liveness_timeout_seconds,
                                             double init_timeout_seconds) override;
  std::unique_ptr<ProcessGroup> Start() override;

 private:
  MPI_Comm base_;
  std::vector<int> ranks_;
};

}  // namespace fusecomm

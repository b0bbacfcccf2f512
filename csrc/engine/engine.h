// The process-wide engine: start-up, process sets, submission and handles. This is the whole
// surface the Python bindings wrap.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/config.h"
#include "engine/process_set_worker.h"
#include "engine/request.h"
#include "timeline/timeline.h"
#include "transport/bootstrap.h"

namespace fusecomm {

// The transport's entries (mpi_version, cuda_aware_mpi) are filled by whoever knows the
// transport (the bindings); GetBuildInfo fills the rest.
struct BuildInfo {
  std::string mpi_version;
  bool cuda = false;
  bool nccl = false;
  // CUDA builds: versions found at run time ("none"/"not found: ..." where absent).
  std::string cuda_runtime_version;
  std::string cuda_driver_version;
  std::string nccl_version;
  std::string cuda_aware_mpi;
};
BuildInfo GetBuildInfo();

class Engine {
 public:
  static Engine& Get();

  // Starts on the transport `bootstrap` brings up (which also decides which ranks take part).
  void Init(Bootstrap& bootstrap);
  // at_exit: the process is exiting (peers are told so).
  void Shutdown(bool at_exit = false);
  bool initialized();
  // Initialized, but the global set's worker has stopped by itself (a stall shutdown) while
  // every peer is alive: every call fails until init() starts the engine again.
  bool stopped();

  int rank();
  int size();
  int local_rank();
  int local_size();
  int cross_rank();
  int cross_size();
  bool is_homogeneous();
  const Config& config();

  // Collective over the global process set: every rank calls with the same ranks (global
  // ranks). Returns the new set's id (the same on every rank).
  int AddProcessSet(const std::vector<int>& ranks);
  void RemoveProcessSet(int id);
  std::vector<int> ProcessSetRanks(int id);
  std::vector<int> ProcessSetIds();
  // Rank of this process inside set `id`, or -1 when not a member.
  int ProcessSetRank(int id);

  // The algorithm `auto` picks for a buffer of `bytes` of `dtype` in the global set, and the
  // cost model.
  std::string AutoAlgorithm(size_t bytes, DataType dtype);
  // What `auto` has measured so far in the global set (empty with FUSECOMM_AUTOTUNE=0).
  std::vector<TunedClass> TunedClasses();
  // The cost model's predicted seconds for `algorithm` ("auto" = what auto would pick).
  double PredictSeconds(const std::string& algorithm, size_t bytes);
  std::string CostModelText();
  // The fusion plan a process set's engine follows now (FUSECOMM_FUSION_PLAN).
  FusionPlanState FusionPlanOf(int process_set);
  ProcessSetWorker::HandOffCounts HandOffCountsOf(int process_set);

  // Chrome-trace timeline of this rank's engine (rank 0's is the one Horovod users expect; any
  // rank may write one). Stop() finishes the file.
  void StartTimeline(const std::string& path, bool mark_cycles);
  void StopTimeline();

  // Validates and queues; returns a handle id.
  int64_t Submit(int process_set, Request request);
  // Requests submitted to `process_set` between these are queued together (see
  // ProcessSetWorker::BeginGroup).
  void BeginGroup(int process_set);
  void EndGroup(int process_set);
  std::shared_ptr<HandleState> GetHandle(int64_t id);
  void ReleaseHandle(int64_t id);

 private:
  Engine() = default;
  ProcessSetWorker& WorkerFor(int process_set);
  // The worker of `process_set`, kept alive past the engine lock (takes the lock).
  std::shared_ptr<ProcessSetWorker> SharedWorker(int process_set);
  void CheckInitialized();
  void Validate(const ProcessSetWorker& worker, const Request& request);
  // A request that failed Validate on this rank is still negotiated, marked with `error`, so
  // the ranks that submitted the same name fail with a message naming this rank, not stall.
  void ReportRejected(ProcessSetWorker& worker, const TensorSpec& spec, const std::string& error);

  std::mutex mutex_;
  Timeline timeline_;
  bool initialized_ = false;
  Config config_;
  struct ProcessSet {
    std::vector<int> ranks;  // global ranks
    std::shared_ptr<ProcessSetWorker> worker;  // null on non-members
  };
  std::map<int, ProcessSet> process_sets_;
  int next_process_set_ = 1;
  std::unique_ptr<Liveness> liveness_;
  std::unique_ptr<ProcessGroup> global_group_;  // the global set's ranks, for creating sub-sets
  std::map<int64_t, std::shared_ptr<HandleState>> handles_;
  int64_t next_handle_ = 1;
  int device_ = -1;  // the CUDA device this process's device tensors are on (one per process)
};

}  // namespace fusecomm

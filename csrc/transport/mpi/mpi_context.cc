#include "transport/mpi/mpi_context.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>  // Open MPI: MPIX_CUDA_AWARE_SUPPORT, MPIX_Query_cuda_support
#endif

#include "common/config.h"
#include "common/errors.h"
#include "common/launcher_status.h"
#include "common/logging.h"
#include "transport/mpi/liveness.h"
#include "transport/mpi/mpi_comm.h"
#include "transport/mpi/mpi_control.h"
#include "transport/mpi/mpi_wait.h"

namespace fusecomm {

namespace {
bool g_we_initialized = false;

const char* ThreadLevelName(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    default: return "MPI_THREAD_MULTIPLE";
  }
}

MPI_Comm Dup(MPI_Comm comm) {
  MPI_Comm out;
  CheckMpi(MPI_Comm_dup(comm, &out), "MPI_Comm_dup");
  return out;
}

// The launcher's rank number, for messages written before MPI can tell it.
std::string LauncherRank() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"}) {
    const char* value = std::getenv(name);
    if (value && *value) return value;
  }
  return "?";
}

[[noreturn]] void EndInit(const std::string& rank, const std::string& message) {
  std::fprintf(stderr, "[fusecomm] rank %s: %s\n", rank.c_str(), message.c_str());
  std::fflush(stderr);
  std::_Exit(InitWatchdog::kExitStatus);
}

// The communicator of `ranks` of `base` (all of it when empty): MPI_COMM_NULL on the ranks
// outside. Collective over `base`.
MPI_Comm MakeGlobalComm(MPI_Comm base, const std::vector<int>& ranks) {
  if (ranks.empty()) return Dup(base);
  int world_size = 0;
  MPI_Comm_size(base, &world_size);
  std::vector<bool> seen(world_size, false);
  for (int r : ranks) {
    if (r < 0 || r >= world_size) {
      throw InvalidArgument("rank " + std::to_string(r) + " is not in MPI_COMM_WORLD of size " +
                            std::to_string(world_size));
    }
    if (seen[r]) throw InvalidArgument("rank " + std::to_string(r) + " is listed twice");
    seen[r] = true;
  }
  MPI_Group world_group, group;
  CheckMpi(MPI_Comm_group(base, &world_group), "MPI_Comm_group");
  CheckMpi(MPI_Group_incl(world_group, static_cast<int>(ranks.size()), ranks.data(), &group),
           "MPI_Group_incl");
  MPI_Comm out;
  CheckMpi(MPI_Comm_create(base, group, &out), "MPI_Comm_create");
  MPI_Group_free(&group);
  MPI_Group_free(&world_group);
  return out;  // MPI_COMM_NULL on ranks outside `ranks`
}

}  // namespace

InitWatchdog::InitWatchdog(double liveness_timeout_seconds, double init_timeout_seconds) {
  if (liveness_timeout_seconds <= 0) return;
  const double limit = init_timeout_seconds;
  // The environment is read here, before MPI_Init writes to it from this thread.
  thread_ = std::thread([this, limit, rank = LauncherRank(), launcher = LauncherStatusAddress()] {
    Loop(limit, rank, launcher);
  });
}

InitWatchdog::~InitWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    done_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void InitWatchdog::HeartbeatStarted() {
  std::lock_guard<std::mutex> lock(mutex_);
  heartbeat_ = true;
}

void InitWatchdog::Loop(double limit_seconds, const std::string& rank,
                        const std::string& launcher) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(limit_seconds));
  // After the heartbeat declared a peer dead, init gets this long to throw by itself (a
  // polling wait does); a blocking MPI call never returns, so the process ends here.
  constexpr auto kGrace = std::chrono::seconds(3);
  // Under `fusecomm run` the launcher knows at once when a rank has failed; asking it this
  // often ends a start-up that waits for a dead rank in about a second, naming that rank.
  constexpr auto kAskEvery = std::chrono::seconds(1);
  auto next_ask = Clock::now() + kAskEvery;
  // Only a peer that dies during this init counts (a failed earlier run leaves the flag set,
  // and init then raises by itself).
  const bool aborted_before = TransportAborted();
  Clock::time_point aborted_at{};
  std::unique_lock<std::mutex> lock(mutex_);
  while (!done_) {
    wake_.wait_for(lock, std::chrono::milliseconds(50));
    if (done_) break;
    const auto now = Clock::now();
    if (!aborted_before && TransportAborted()) {
      if (aborted_at == Clock::time_point{}) aborted_at = now;
      if (now - aborted_at >= kGrace) {
        EndInit(rank, "init() cannot complete: " + TransportAbortReason());
      }
      continue;
    }
    if (heartbeat_) continue;  // from here the heartbeat names a dead peer
    if (!launcher.empty() && now >= next_ask) {
      lock.unlock();  // the question may take a second; HeartbeatStarted() must not wait
      const std::string failed = LauncherReportedFailure(launcher);
      lock.lock();
      next_ask = Clock::now() + kAskEvery;
      if (!failed.empty() && !done_ && !heartbeat_) {
        EndInit(rank, "init() cannot complete: " + failed +
                " (reported by fusecomm run) while this rank waited for every rank in MPI "
                "start-up");
      }
    }
    if (limit_seconds > 0 && now >= deadline) {
      char seconds[32];
      std::snprintf(seconds, sizeof(seconds), "%.0f", limit_seconds);
      EndInit(rank, std::string("init() gave up after ") + seconds +
              " s waiting for the other ranks: MPI start-up needs every rank, and at least one "
              "never arrived (it exited or was killed before or during init(), or has not "
              "called init()). If ranks legitimately reach init() this far apart, raise "
              "FUSECOMM_INIT_TIMEOUT_SECONDS (0 disables this limit)");
    }
  }
}

namespace {

constexpr char kLibnbcAllreduceVariable[] = "coll_libnbc_iallreduce_algorithm";

// The shared-memory all-reduce moves a buffer in pieces of up to this many bytes a rank; the
// segment holds two pieces of every rank (4 MiB for 2 ranks).
constexpr size_t kSharedSlotBytes = size_t{1} << 20;
// From this size up, the shared-memory all-reduce reads its peers' buffers directly (one copy)
// where the kernel allows it; FUSECOMM_SHM_SINGLE_COPY_MIN_BYTES changes it (negative: never).
// Measured at 2 ranks it beat the slots from 1 MiB (1.4x -> 1.2x MPI_Allreduce) and tied them
// at 256 KiB; at 4 ranks on 2 cores its three synchronizations lost at 256 KiB.
constexpr int64_t kSingleCopyMinBytes = int64_t{1} << 20;
// A negotiation message through shared memory: the slot and one bit per cached response (4 KiB
// holds 31,744 bits); a longer message goes point-to-point.
constexpr size_t kNegotiationSlotBytes = 4096;

// Runs `use` on libnbc's all-reduce algorithm variable; false if this MPI has none.
template <typename Use>
bool WithLibnbcAllreduceVariable(Use use) {
  int provided = 0;
  if (MPI_T_init_thread(MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) return false;
  bool found = false;
  int index = -1, count = 0;
  MPI_T_cvar_handle handle;
  if (MPI_T_cvar_get_index(kLibnbcAllreduceVariable, &index) == MPI_SUCCESS &&
      MPI_T_cvar_handle_alloc(index, nullptr, &handle, &count) == MPI_SUCCESS) {
    found = count == 1;
    if (found) use(handle);
    MPI_T_cvar_handle_free(&handle);
  }
  MPI_T_finalize();
  return found;
}

// Open MPI's non-blocking all-reduce (libnbc) picks a binomial reduce-then-broadcast for every
// in-place call and for fewer than 4 ranks, whatever the size: on 2 ranks that took 1.6-2.6x
// MPI_Allreduce's time from 64 KiB to 16 MiB, and its ring took 0.95-1.05x (docs/performance.md,
// "MPI's own all-reduce through the engine"). The engine's `mpi` algorithm is that call, so the
// ring is chosen here, once, before any collective. The variable is process-wide and every rank
// sets the same value, so the ranks of a collective always build the same schedule. A user's
// own OMPI_MCA_coll_libnbc_iallreduce_algorithm is left as it is; other MPIs lack the variable.
void PreferRingForNonBlockingAllreduce() {
  if (std::getenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm") != nullptr) return;
  WithLibnbcAllreduceVariable([](MPI_T_cvar_handle handle) {
    int algorithm = 0;
    constexpr int kRing = 1;
    if (MPI_T_cvar_read(handle, &algorithm) == MPI_SUCCESS && algorithm == 0) {
      MPI_T_cvar_write(handle, &kRing);
    }
  });
}

}  // namespace

void EnsureMpiInitialized() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) throw NotInitialized("MPI has already been finalized in this process");
  if (!initialized) {
    int provided = 0;
    CheckMpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided),
             "MPI_Init_thread");
    g_we_initialized = true;
    if (provided < MPI_THREAD_MULTIPLE) {
      throw NotInitialized(std::string("this MPI provides only ") + ThreadLevelName(provided) +
                           "; fusecomm needs MPI_THREAD_MULTIPLE");
    }
    PreferRingForNonBlockingAllreduce();
    return;
  }
  int provided = 0;
  MPI_Query_thread(&provided);
  if (provided < MPI_THREAD_MULTIPLE) {
    throw NotInitialized(std::string("MPI was initialized with ") + ThreadLevelName(provided) +
                         "; fusecomm's engine thread needs MPI_THREAD_MULTIPLE (with mpi4py, "
                         "leave mpi4py.rc.thread_level at its default 'multiple')");
  }
  PreferRingForNonBlockingAllreduce();
}

void FinalizeMpiIfOwned() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  // MPI_Finalize is collective in practice: with a dead peer it could hang, so it is skipped
  // (the launcher reports the job as failed, which it has).
  if (!g_we_initialized || finalized || TransportAborted()) return;
  // A peer that left without finalizing (os._exit) would hold this rank here forever: a
  // watchdog ends the process instead. Live ranks also reach MPI_Finalize at different times
  // (one still tearing down a framework on a loaded node), so the limit is init()'s generous
  // one for ranks that have not arrived, or the liveness timeout if longer.
  const double limit =
      std::max({5.0, EnvDouble("FUSECOMM_LIVENESS_TIMEOUT_SECONDS", 15.0),
                EnvDouble("FUSECOMM_INIT_TIMEOUT_SECONDS", 60.0)});
  std::thread([limit] {
    std::this_thread::sleep_for(std::chrono::duration<double>(limit));
    std::fprintf(stderr,
                 "[fusecomm] MPI_Finalize did not complete in %.0f s (a peer left without "
                 "finalizing); exiting without it\n", limit);
    std::fflush(stderr);
    std::_Exit(1);
  }).detach();
  MPI_Finalize();
}

int MpiNonBlockingAllreduceAlgorithm() {
  int algorithm = -1;
  WithLibnbcAllreduceVariable(
      [&](MPI_T_cvar_handle handle) { MPI_T_cvar_read(handle, &algorithm); });
  return algorithm;
}

std::string MpiLibraryVersion() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(text, &len);
  std::string s(text, len);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
  return s;
}

std::string MpiCudaAwareness() {
#if defined(MPIX_CUDA_AWARE_SUPPORT)
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return MPIX_Query_cuda_support() ? "yes" : "no";
  return MPIX_CUDA_AWARE_SUPPORT ? "yes (compile time)" : "no";
#else
  return "unknown";
#endif
}

MpiProcessGroup::MpiProcessGroup(MPI_Comm comm) : comm_(comm) {
  CheckMpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  CheckMpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

MpiProcessGroup::~MpiProcessGroup() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  // With a dead peer, freeing a communicator may wait for it forever.
  if (!finalized && !TransportAborted() && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::unique_ptr<ControlChannel> MpiProcessGroup::NewControlChannel() {
  auto channel = std::make_unique<MpiControlChannel>(Dup(comm_));
  channel->AttachSharedSegment(kNegotiationSlotBytes);
  return channel;
}

std::unique_ptr<Comm> MpiProcessGroup::NewDataComm() {
  auto comm = std::make_unique<MpiComm>(Dup(comm_), true);
  const int64_t single_copy = EnvInt("FUSECOMM_SHM_SINGLE_COPY_MIN_BYTES", kSingleCopyMinBytes);
  comm->AttachSharedSegment(kSharedSlotBytes,
                            single_copy < 0 ? SIZE_MAX : static_cast<size_t>(single_copy));
  return comm;
}

std::vector<int> MpiProcessGroup::NodeOfEachRank(int local_size) {
  // Consecutive virtual nodes of FUSECOMM_LOCAL_SIZE ranks, or the real shared-memory node
  // (identified by its lowest rank).
  int node_id;
  if (local_size > 0) {
    node_id = rank_ / local_size * local_size;
  } else {
    MPI_Comm shared;
    CheckMpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &shared),
             "MPI_Comm_split_type");
    MpiComm node(shared, true);
    node_id = rank_;
    node.NativeAllreduce(&node_id, 1, DataType::kInt32, ReduceOp::kMin);
  }
  MpiComm group(comm_, false);
  std::vector<int> node_of(size_);
  group.NativeAllgatherv(&node_id, sizeof(int), node_of.data(),
                         std::vector<size_t>(size_, sizeof(int)));
  return node_of;
}

std::unique_ptr<ProcessGroup> MpiProcessGroup::Subgroup(const std::vector<int>& ranks) {
  MPI_Comm sub = MakeGlobalComm(comm_, ranks);
  if (sub == MPI_COMM_NULL) return nullptr;
  return std::make_unique<MpiProcessGroup>(sub);
}

std::unique_ptr<Liveness> MpiProcessGroup::StartLiveness(double timeout_seconds) {
  // A beat well inside the timeout, so one late beat is no alarm.
  return std::make_unique<LivenessMonitor>(comm_, std::min(1.0, timeout_seconds / 5),
                                           timeout_seconds);
}

std::unique_ptr<StartupWatch> MpiBootstrap::WatchStartup(double liveness_timeout_seconds,
                                                         double init_timeout_seconds) {
  return std::make_unique<InitWatchdog>(liveness_timeout_seconds, init_timeout_seconds);
}

std::unique_ptr<ProcessGroup> MpiBootstrap::Start() {
  EnsureMpiInitialized();
  MPI_Comm global = MakeGlobalComm(base_, ranks_);
  if (global == MPI_COMM_NULL) {
    throw InvalidArgument("this rank is not among the ranks given to init()");
  }
  return std::make_unique<MpiProcessGroup>(global);
}

}  // namespace fusecomm

#include "transport/mpi/mpi_context.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include "common/config.h"
#include "common/errors.h"
#include "common/launcher_status.h"
#include "common/logging.h"
#include "transport/mpi/mpi_comm.h"
#include "transport/mpi/mpi_control.h"
#include "transport/mpi/mpi_wait.h"
#include "transport/split_topology.h"

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

Topology BuildTopology(MpiComm& global, const Config& config) {
  const int rank = global.rank(), size = global.size();
  // Node of each rank: consecutive virtual nodes of FUSECOMM_LOCAL_SIZE ranks, or the real
  // shared-memory node (identified by its lowest global rank).
  int node_id;
  if (config.local_size > 0) {
    node_id = rank / config.local_size;
  } else {
    MPI_Comm shared;
    CheckMpi(MPI_Comm_split_type(global.handle(), MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL,
                                 &shared),
             "MPI_Comm_split_type");
    MpiComm node(shared, true);
    node_id = rank;
    node.NativeAllreduce(&node_id, 1, DataType::kInt32, ReduceOp::kMin);
  }
  std::vector<int> node_of(size);
  global.NativeAllgatherv(&node_id, sizeof(int), node_of.data(),
                          std::vector<size_t>(size, sizeof(int)));
  return SplitTopology(global, node_of, config.torus_x);
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

std::string AgreeOnInitErrors(MPI_Comm comm, const std::string& mine) {
  // Fixed-size slots keep this one collective; a longer message is cut (the failing rank's own
  // exception has it in full).
  constexpr size_t kSlot = 512;
  MpiComm agree(comm, false);
  const int size = agree.size();
  std::vector<char> own(kSlot, 0), all(kSlot * static_cast<size_t>(size), 0);
  std::memcpy(own.data(), mine.data(), std::min(mine.size(), kSlot - 1));
  agree.NativeAllgatherv(own.data(), kSlot, all.data(), std::vector<size_t>(size, kSlot));
  std::string failures;
  int failed = 0;
  for (int r = 0; r < size; ++r) {
    const char* text = all.data() + static_cast<size_t>(r) * kSlot;
    if (*text == 0) continue;
    failures += (failed++ ? "; rank " : "rank ") + std::to_string(r) + ": " +
                std::string(text, strnlen(text, kSlot));
  }
  return failed ? "init() failed on " + failures : std::string();
}

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
    return;
  }
  int provided = 0;
  MPI_Query_thread(&provided);
  if (provided < MPI_THREAD_MULTIPLE) {
    throw NotInitialized(std::string("MPI was initialized with ") + ThreadLevelName(provided) +
                         "; fusecomm's engine thread needs MPI_THREAD_MULTIPLE (with mpi4py, "
                         "leave mpi4py.rc.thread_level at its default 'multiple')");
  }
}

void FinalizeMpiIfOwned() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  // MPI_Finalize is collective in practice: with a dead peer it could hang, so it is skipped
  // (the launcher reports the job as failed, which it has).
  if (!g_we_initialized || finalized || TransportAborted()) return;
  // A peer that left without finalizing (os._exit) would hold this rank here forever: a
  // watchdog ends the process after the liveness timeout instead.
  const double limit = std::max(5.0, EnvDouble("FUSECOMM_LIVENESS_TIMEOUT_SECONDS", 15.0));
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

std::string MpiLibraryVersion() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(text, &len);
  std::string s(text, len);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
  return s;
}

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

// The cost model: from the cache file when rank 0 finds one, else measured now (and cached
// by rank 0 when a file is named). Rank 0 decides for everyone, so all ranks do the same.
// The file describes the global process set (its MPI_Allreduce times depend on the rank
// count); other process sets measure their own.
CostModel LoadOrCalibrate(int process_set_id, Topology& topo, const Config& config) {
  Comm& comm = *topo.global;
  if (!config.calibrate) return CostModel{};
  const std::string file = process_set_id == 0 ? config.calibration_file : std::string();
  std::vector<char> text(4096, 0);
  if (comm.rank() == 0 && !file.empty()) {
    std::ifstream in(file);
    in.read(text.data(), static_cast<std::streamsize>(text.size() - 1));
  }
  comm.NativeBroadcast(text.data(), text.size(), 0);
  CostModel model;
  if (CostModel::FromText(text.data(), &model)) return model;
  model = CalibrateCostModel(topo);
  if (comm.rank() == 0 && !file.empty()) {
    std::ofstream out(file);
    out << model.ToText();
    // Checked at init (Config::ValidateForJob); a failure now is only worth a warning.
    if (!out) FUSECOMM_LOG(kWarning, "could not write the calibration file '" << file << "'");
  }
  return model;
}

std::unique_ptr<ProcessSetWorker> MakeWorker(int id, MPI_Comm comm, const Config& config,
                                             Timeline* timeline) {
  auto control = std::make_unique<MpiControlChannel>(Dup(comm));
  auto data = std::make_unique<MpiComm>(Dup(comm), true);
  Topology topo = BuildTopology(*data, config);
  topo.global = data.get();
  topo.cost_model = LoadOrCalibrate(id, topo, config);
  if (config.autotune) topo.tuner = std::make_shared<AutoTuner>();
  return std::make_unique<ProcessSetWorker>(id, std::move(control), std::move(data),
                                            std::move(topo), config, timeline);
}

}  // namespace fusecomm

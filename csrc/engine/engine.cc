#include "engine/engine.h"

#include <algorithm>
#include <set>

#include "collectives/dispatch.h"
#include "common/errors.h"
#include "common/logging.h"
#include "engine/bootstrap.h"
#include "engine/settings_agreement.h"
#include "transport/abort.h"
#if FUSECOMM_WITH_CUDA
#include "engine/device_executor.h"
#endif

namespace fusecomm {

BuildInfo GetBuildInfo() {
  BuildInfo info;
#if FUSECOMM_WITH_CUDA
  // NCCL is part of every CUDA build (loaded at run time; nccl_version says whether it is there).
  info.cuda = true;
  info.nccl = true;
  CudaBuildInfo cuda = GetCudaBuildInfo();
  info.cuda_runtime_version = cuda.runtime_version;
  info.cuda_driver_version = cuda.driver_version;
  info.nccl_version = cuda.nccl_version;
#endif
  return info;
}

Engine& Engine::Get() {
  static Engine* engine = new Engine();  // never destroyed: threads may outlive static teardown
  return *engine;
}

void Engine::Init(Bootstrap& bootstrap) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (initialized_) return;  // like Horovod, a second init is a no-op
  // A rank that fails init must not leave the others waiting for it inside the transport: its
  // error is kept until every rank can hear of it (AgreeOnInitErrors), and until then the
  // start-up watch bounds every wait that no error could interrupt.
  std::string local_error;
  Config config;
  try {
    config = Config::FromEnvironment();
    SetLogLevel(config.log_level);
  } catch (const InvalidArgument& e) {
    local_error = e.what();
    config = Config();
  }
  std::unique_ptr<StartupWatch> watch =
      bootstrap.WatchStartup(config.liveness_timeout_seconds, config.init_timeout_seconds);
  std::unique_ptr<ProcessGroup> global = bootstrap.Start();
  const int size = global->size(), rank = global->rank();
  SetLogRank(rank);
  // The heartbeat starts before any work a peer could die in.
  std::unique_ptr<Liveness> liveness = global->StartLiveness(config.liveness_timeout_seconds);
  watch->HeartbeatStarted();
  std::string failure, disagreement;
  try {
    if (local_error.empty()) {
      try {
        config.ValidateForJob(rank, size);
        if (!config.timeline_path.empty() && rank == 0) {
          timeline_.Start(config.timeline_path, config.timeline_mark_cycles, rank);
        }
      } catch (const InvalidArgument& e) {
        local_error = e.what();
      }
    }
    std::unique_ptr<ControlChannel> agreement = global->NewControlChannel();
    failure = AgreeOnInitErrors(*agreement, local_error);
    // Once every rank's own settings are valid, those that must match are compared, before
    // anything collective depends on them (calibration, the worker).
    if (failure.empty()) disagreement = AgreeOnSettings(*agreement, config);
  } catch (...) {
    timeline_.Stop();
    liveness->StopSilently();
    throw;
  }
  if (!failure.empty() || !disagreement.empty()) {
    // Every rank fails here together, so each says goodbye and frees what it made.
    timeline_.Stop();
    liveness->Stop();
    if (!failure.empty()) throw InvalidArgument(failure);
    throw CollectiveError(disagreement);
  }
  std::vector<int> all(size);
  for (int r = 0; r < size; ++r) all[r] = r;
  std::shared_ptr<ProcessSetWorker> worker;
  try {
    worker = StartProcessSet(0, *global, config, &timeline_);
  } catch (...) {
    // Possibly this rank alone: its silence tells the peers (see StopSilently).
    timeline_.Stop();
    liveness->StopSilently();
    throw;
  }
  config_ = config;
  global_group_ = std::move(global);
  liveness_ = std::move(liveness);
  process_sets_.clear();
  process_sets_[0] = ProcessSet{all, worker};
  next_process_set_ = 1;
  initialized_ = true;
  FUSECOMM_LOG(kDebug, "initialized: rank " << rank << " of " << size);
}

void Engine::Shutdown(bool at_exit) {
  std::map<int, ProcessSet> sets;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!initialized_) return;
    initialized_ = false;
    sets.swap(process_sets_);
  }
  // Sub-sets first, the global set last: its shutdown is the one every rank agrees on.
  for (auto it = sets.rbegin(); it != sets.rend(); ++it) {
    if (it->second.worker) it->second.worker->Shutdown(at_exit);
  }
  sets.clear();
  timeline_.Stop();
  // After the agreed shutdown, so no peer takes this rank's silence for a death.
  if (liveness_) liveness_->Stop();
  liveness_.reset();
  global_group_.reset();
}

bool Engine::initialized() {
  std::lock_guard<std::mutex> lock(mutex_);
  return initialized_;
}

bool Engine::stopped() {
  std::lock_guard<std::mutex> lock(mutex_);
  // Not after a peer died (transport aborted): a new start would wait for it forever.
  if (TransportAborted()) return false;
  auto it = process_sets_.find(0);
  return initialized_ && it != process_sets_.end() && it->second.worker &&
         it->second.worker->stopped();
}

void Engine::CheckInitialized() {
  if (!initialized_) {
    throw NotInitialized("fusecomm has not been initialized; call init() first");
  }
}

ProcessSetWorker& Engine::WorkerFor(int process_set) {
  CheckInitialized();
  auto it = process_sets_.find(process_set);
  if (it == process_sets_.end()) {
    throw InvalidArgument("process set " + std::to_string(process_set) + " does not exist");
  }
  if (!it->second.worker) {
    throw InvalidArgument("this rank is not a member of process set " +
                          std::to_string(process_set));
  }
  return *it->second.worker;
}

#define FUSECOMM_GLOBAL_QUERY(method, expr)         \
  int Engine::method() {                            \
    std::lock_guard<std::mutex> lock(mutex_);       \
    ProcessSetWorker& w = WorkerFor(0);             \
    return expr;                                    \
  }
FUSECOMM_GLOBAL_QUERY(rank, w.rank())
FUSECOMM_GLOBAL_QUERY(size, w.size())
FUSECOMM_GLOBAL_QUERY(local_rank, w.topology().local_rank())
FUSECOMM_GLOBAL_QUERY(local_size, w.topology().local_size())
FUSECOMM_GLOBAL_QUERY(cross_rank, w.topology().cross_rank())
FUSECOMM_GLOBAL_QUERY(cross_size, w.topology().cross_size())
#undef FUSECOMM_GLOBAL_QUERY

std::string Engine::AutoAlgorithm(size_t bytes, DataType dtype) {
  std::lock_guard<std::mutex> lock(mutex_);
  const ProcessSetWorker& global = WorkerFor(0);
  return AllreduceAlgorithmName(global.selector().Preview(global.topology(), bytes, dtype));
}

std::vector<TunedClass> Engine::TunedClasses() {
  std::lock_guard<std::mutex> lock(mutex_);
  return WorkerFor(0).selector().TunedClasses();
}

void Engine::StartTimeline(const std::string& path, bool mark_cycles) {
  int rank;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    rank = WorkerFor(0).rank();
  }
  if (rank == 0) timeline_.Start(path, mark_cycles, rank);
}

void Engine::StopTimeline() { timeline_.Stop(); }

double Engine::PredictSeconds(const std::string& algorithm, size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  const ProcessSetWorker& global = WorkerFor(0);
  return global.selector().PredictSeconds(global.topology(), ParseAllreduceAlgorithm(algorithm),
                                          bytes);
}

std::string Engine::CostModelText() {
  std::lock_guard<std::mutex> lock(mutex_);
  const CostModel& model = WorkerFor(0).selector().cost_model();
  return (model.calibrated ? "calibrated\n" : "defaults\n") + model.ToText();
}

ProcessSetWorker::HandOffCounts Engine::HandOffCountsOf(int process_set) {
  std::lock_guard<std::mutex> lock(mutex_);
  return WorkerFor(process_set).hand_off_counts();
}

FusionPlanState Engine::FusionPlanOf(int process_set) {
  std::lock_guard<std::mutex> lock(mutex_);
  return WorkerFor(process_set).fusion_plan();
}

bool Engine::is_homogeneous() {
  std::lock_guard<std::mutex> lock(mutex_);
  return WorkerFor(0).topology().homogeneous;
}

const Config& Engine::config() {
  std::lock_guard<std::mutex> lock(mutex_);
  CheckInitialized();
  return config_;
}

int Engine::AddProcessSet(const std::vector<int>& ranks) {
  std::lock_guard<std::mutex> lock(mutex_);
  ProcessSetWorker& global = WorkerFor(0);
  std::vector<int> sorted = ranks;
  std::sort(sorted.begin(), sorted.end());
  if (sorted.empty()) throw InvalidArgument("a process set needs at least one rank");
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    throw InvalidArgument("a process set lists a rank twice");
  }
  for (int r : sorted) {
    if (r < 0 || r >= global.size()) {
      throw InvalidArgument("rank " + std::to_string(r) + " is out of range for " +
                            std::to_string(global.size()) + " ranks");
    }
  }
  for (const auto& [id, set] : process_sets_) {
    if (set.ranks == sorted) {
      throw InvalidArgument("a process set with these ranks already exists (id " +
                            std::to_string(id) + ")");
    }
  }
  std::unique_ptr<ProcessGroup> group = global_group_->Subgroup(sorted);
  int id = next_process_set_++;
  std::shared_ptr<ProcessSetWorker> worker;
  if (group) worker = StartProcessSet(id, *group, config_, &timeline_);
  process_sets_[id] = ProcessSet{sorted, worker};
  return id;
}

void Engine::RemoveProcessSet(int id) {
  std::shared_ptr<ProcessSetWorker> worker;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    CheckInitialized();
    if (id == 0) throw InvalidArgument("the global process set cannot be removed");
    auto it = process_sets_.find(id);
    if (it == process_sets_.end()) {
      throw InvalidArgument("process set " + std::to_string(id) + " does not exist");
    }
    worker = it->second.worker;
    process_sets_.erase(it);
  }
  if (worker) worker->Shutdown();
}

std::vector<int> Engine::ProcessSetRanks(int id) {
  std::lock_guard<std::mutex> lock(mutex_);
  CheckInitialized();
  auto it = process_sets_.find(id);
  if (it == process_sets_.end()) {
    throw InvalidArgument("process set " + std::to_string(id) + " does not exist");
  }
  return it->second.ranks;
}

std::vector<int> Engine::ProcessSetIds() {
  std::lock_guard<std::mutex> lock(mutex_);
  CheckInitialized();
  std::vector<int> ids;
  for (const auto& [id, set] : process_sets_) ids.push_back(id);
  return ids;
}

int Engine::ProcessSetRank(int id) {
  std::lock_guard<std::mutex> lock(mutex_);
  CheckInitialized();
  auto it = process_sets_.find(id);
  if (it == process_sets_.end()) {
    throw InvalidArgument("process set " + std::to_string(id) + " does not exist");
  }
  return it->second.worker ? it->second.worker->rank() : -1;
}

void Engine::Validate(const ProcessSetWorker& worker, const Request& request) {
  const TensorSpec& spec = request.spec;
  if (spec.op_type == OpType::kJoin) return;
  if (spec.name.empty()) throw InvalidArgument("a collective needs a name");
  if (spec.name[0] == '\x01') throw InvalidArgument("names starting with \\x01 are reserved");
  // Sizes stay far from int64/size_t overflow (2^50 bytes is already beyond any buffer).
  constexpr int64_t kMaxBytes = int64_t{1} << 50;
  int64_t elements = 1;
  for (int64_t d : spec.shape) {
    if (d < 0) throw InvalidArgument("negative dimension in shape " + ShapeString(spec.shape));
    if (d > 0 && elements > kMaxBytes / d) {
      throw InvalidArgument("tensor '" + spec.name + "' of shape " + ShapeString(spec.shape) +
                            " is too large");
    }
    elements *= d;
  }
#if !FUSECOMM_WITH_CUDA
  if (spec.device >= 0) {
    throw InvalidArgument("fusecomm was built without CUDA: tensor '" + spec.name +
                          "' is on cuda:" + std::to_string(spec.device) +
                          " (rebuild with FUSECOMM_WITH_CUDA=1, or move it to the CPU)");
  }
#else
  if (spec.device >= 0 && device_ >= 0 && spec.device != device_) {
    throw InvalidArgument("tensor '" + spec.name + "' is on cuda:" + std::to_string(spec.device) +
                          " but this process's tensors are on cuda:" + std::to_string(device_) +
                          "; fusecomm uses one GPU per process (torch.cuda.set_device(local_rank))");
  }
#endif
  const bool reduces = spec.op_type == OpType::kAllreduce || spec.op_type == OpType::kReducescatter;
  if (reduces && !ReduceOpSupported(spec.dtype, spec.reduce_op)) {
    throw InvalidArgument(std::string(ReduceOpName(spec.reduce_op)) + " is not defined for " +
                          DataTypeName(spec.dtype) + " tensors");
  }
  if (spec.reduce_op == ReduceOp::kAdasum && spec.op_type == OpType::kReducescatter) {
    throw InvalidArgument("Adasum is an allreduce op: reducescatter takes Sum, Average, Min, Max "
                          "or Product");
  }
  if (reduces && spec.dtype == DataType::kBool &&
      (spec.prescale != 1.0 || spec.postscale != 1.0)) {
    throw InvalidArgument("bool tensors cannot be scaled");
  }
  const int n = worker.size();
  if (spec.op_type == OpType::kBroadcast && (spec.root < 0 || spec.root >= n)) {
    throw InvalidArgument("root rank " + std::to_string(spec.root) + " is out of range for " +
                          std::to_string(n) + " ranks");
  }
  const bool needs_rows = spec.op_type == OpType::kAllgather ||
                          spec.op_type == OpType::kAlltoall ||
                          spec.op_type == OpType::kReducescatter;
  if (needs_rows && spec.shape.empty()) {
    throw InvalidArgument(std::string(OpTypeName(spec.op_type)) +
                          " needs a tensor with at least one dimension");
  }
  if (spec.op_type == OpType::kAlltoall) {
    const int64_t rows = spec.shape[0];
    if (request.splits.empty()) {
      if (rows % n != 0) {
        throw InvalidArgument("alltoall without splits needs the first dimension (" +
                              std::to_string(rows) + ") to divide by the number of ranks (" +
                              std::to_string(n) + ")");
      }
    } else {
      if (static_cast<int>(request.splits.size()) != n) {
        throw InvalidArgument("alltoall splits has " + std::to_string(request.splits.size()) +
                              " entries; expected one per rank (" + std::to_string(n) + ")");
      }
      int64_t sum = 0;
      for (int64_t s : request.splits) {
        if (s < 0) throw InvalidArgument("alltoall splits must not be negative");
        if (s > rows) {
          throw InvalidArgument("alltoall split " + std::to_string(s) +
                                " exceeds the first dimension " + std::to_string(rows));
        }
        sum += s;  // each term <= rows < 2^50: no overflow
      }
      if (sum != rows) {
        throw InvalidArgument("alltoall splits sum to " + std::to_string(sum) +
                              " but the first dimension is " + std::to_string(rows));
      }
    }
  }
  const bool caller_output = spec.op_type == OpType::kAllreduce || spec.op_type == OpType::kBroadcast;
  if (spec.num_elements() > 0 && (request.input == nullptr && spec.op_type != OpType::kBarrier)) {
    throw InvalidArgument("tensor '" + spec.name + "' has no data pointer");
  }
  if (caller_output && spec.num_elements() > 0 && request.output == nullptr) {
    throw InvalidArgument("tensor '" + spec.name + "' has no output buffer");
  }
}

void Engine::ReportRejected(ProcessSetWorker& worker, const TensorSpec& spec,
                            const std::string& error) {
  // Without a usable name the peers cannot tell which of their requests it concerns; alone,
  // there are no peers (and the name stays free for an immediate retry).
  if (worker.size() == 1 || spec.op_type == OpType::kJoin || spec.name.empty() ||
      spec.name[0] == '\x01') {
    return;
  }
  Request marker;
  marker.spec = spec;
  marker.spec.argument_error = error;
  marker.spec.shape.clear();  // may be what was wrong; the coordinator only needs the name
  marker.handle = std::make_shared<HandleState>();  // nobody waits: this rank raised already
  try {
    worker.Submit(std::move(marker));
  } catch (const std::exception&) {
    // The name is in flight already or the engine stopped: the caller's error stands alone.
  }
}

int64_t Engine::Submit(int process_set, Request request) {
  std::shared_ptr<ProcessSetWorker> worker;
  int64_t id;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    WorkerFor(process_set);
    worker = process_sets_[process_set].worker;
    try {
      Validate(*worker, request);
    } catch (const InvalidArgument& e) {
      ReportRejected(*worker, request.spec, e.what());
      throw;
    }
#if FUSECOMM_WITH_CUDA
    if (request.spec.device >= 0 && request.spec.num_elements() > 0) {
      // Ordered after everything the caller queued on its stream before submitting.
      request.ready_event = RecordSubmitEvent(request.spec.device, request.stream);
    }
    if (request.spec.device >= 0) device_ = request.spec.device;
#endif
    id = next_handle_++;
    request.handle = std::make_shared<HandleState>();
    request.handle->waiters = worker->wait_counter();
    request.handle->driver = worker;
    handles_[id] = request.handle;
  }
  try {
    worker->Submit(std::move(request));
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    handles_.erase(id);
    throw;
  }
  return id;
}

std::shared_ptr<ProcessSetWorker> Engine::SharedWorker(int process_set) {
  std::lock_guard<std::mutex> lock(mutex_);
  WorkerFor(process_set);
  return process_sets_[process_set].worker;
}

void Engine::BeginGroup(int process_set) { SharedWorker(process_set)->BeginGroup(); }

void Engine::EndGroup(int process_set) { SharedWorker(process_set)->EndGroup(); }

std::shared_ptr<HandleState> Engine::GetHandle(int64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = handles_.find(id);
  if (it == handles_.end()) {
    throw InvalidArgument("unknown handle " + std::to_string(id) +
                          " (already synchronized, or never returned by an *_async call)");
  }
  return it->second;
}

void Engine::ReleaseHandle(int64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  handles_.erase(id);
}

}  // namespace fusecomm

#include "engine/process_set_worker.h"

#include <algorithm>
#include <chrono>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "common/errors.h"
#include "common/logging.h"
#include "transport/abort.h"

namespace fusecomm {

namespace {
// How long the engine thread leaves new work to its submitter (see Loop).
constexpr std::chrono::microseconds kHandOffGrace{50};
Topology WithGlobal(Topology topology, Comm* global) {
  topology.global = global;
  return topology;
}
}  // namespace

ProcessSetWorker::ProcessSetWorker(int id, std::unique_ptr<ControlChannel> control,
                                   std::unique_ptr<Comm> data_comm, Topology topology,
                                   AllreduceSelector selector, const Config& config,
                                   Timeline* timeline)
    : id_(id),
      config_(config),
      data_comm_(std::move(data_comm)),
      topology_(WithGlobal(std::move(topology), data_comm_.get())),
      selector_(std::move(selector)),
      controller_(std::move(control), config.cache_capacity,
                  StallSettings{config.stall_warning_seconds, config.stall_shutdown_seconds,
                                config.deadlock_seconds}),
      timeline_(timeline),
      executor_(topology_, selector_, config.fusion_threshold_bytes, config.allreduce_algorithm,
                [this](const std::string& name) { ReleaseName(name); }, timeline,
                config.fusion_plan, config.cycle_time_ms) {
  thread_ = std::thread([this] { Loop(); });
}

ProcessSetWorker::~ProcessSetWorker() { Shutdown(); }

void ProcessSetWorker::Submit(Request request) {
  bool caller_drives = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopped_ || shutdown_requested_) {
      throw NotInitialized(stop_reason_.empty() ? "fusecomm has been shut down" : stop_reason_);
    }
    if (request.spec.op_type == OpType::kJoin) {
      if (join_handle_) throw InvalidArgument("join() is already in progress on this rank");
      join_handle_ = request.handle;
    } else {
      if (join_handle_) {
        throw InvalidArgument("this rank has called join(); it cannot submit '" +
                              request.spec.name + "' until every rank has joined");
      }
      const std::string& name = request.spec.name;
      if (!in_flight_.insert(name).second) {
        if (rejected_.count(name)) {
          throw InvalidArgument("a collective named '" + name + "' was rejected on this rank "
                                "and stays in flight until the other ranks submit '" + name +
                                "' (so that they fail too, not stall); use another name");
        }
        throw InvalidArgument("a collective named '" + name +
                              "' is already in flight on this rank; wait for it or use another "
                              "name");
      }
      if (!request.spec.argument_error.empty()) rejected_.insert(name);
      if (request.spec.device >= 0) device_seen_ = true;
      caller_drives = request.caller_waits && !device_seen_;
      // MG-WFBP's ready time: when the caller submitted (the engine thread may take several
      // submissions in at once when it wakes late).
      request.submitted = std::chrono::steady_clock::now();
      if (group_depth_ > 0) {
        held_.push_back(std::move(request));
        return;
      }
      Enqueue(std::move(request));
    }
  }
  if (caller_drives && size() > 1) return;  // its wait drives the cycle (Request::caller_waits)
  Wake();
}

void ProcessSetWorker::Wake() {
  // Alone in the set, nothing is negotiated: the submitting thread completes the request at
  // once, and the engine thread stays asleep (it would compete with the caller's compute).
  if (size() == 1 && DriveCycle(nullptr, std::chrono::milliseconds(0))) return;
  ++wakeups_;
  wake_.notify_one();
}

void ProcessSetWorker::Enqueue(Request request) {
  if (queue_.empty()) queue_fresh_until_ = std::chrono::steady_clock::now() + kHandOffGrace;
  queue_.push_back(std::move(request));
}

bool ProcessSetWorker::QueueFresh(std::chrono::steady_clock::time_point now) const {
  return !queue_.empty() && now < queue_fresh_until_ && !shutdown_requested_ && !stopped_;
}

void ProcessSetWorker::BeginGroup() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++group_depth_;
}

void ProcessSetWorker::EndGroup() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (group_depth_ == 0) throw InvalidArgument("EndGroup without BeginGroup");
    if (--group_depth_ > 0 || held_.empty()) return;
    for (Request& request : held_) Enqueue(std::move(request));
    held_.clear();
  }
  Wake();
}

void ProcessSetWorker::ReleaseName(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  in_flight_.erase(name);
  rejected_.erase(name);
}

void ProcessSetWorker::Shutdown(bool at_exit) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!shutdown_requested_) shutdown_requested_ = at_exit ? 2 : 1;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

bool ProcessSetWorker::Blocked(const PendingTable& pending) const {
  if (config_.deadlock_seconds <= 0) return false;
  const int waiting = waiters_->waiting.load();
  if (waiting == 0 || waiting != ThreadsWaitingOnAnySet()) return false;
  const bool awaits_peers = controller_.joined() ||
                           std::any_of(pending.begin(), pending.end(), [](const auto& entry) {
                             return entry.second.request.spec.argument_error.empty();
                           });
  if (!awaits_peers) return false;
  const std::chrono::duration<double> quiet = std::chrono::steady_clock::now() - last_activity_;
  return quiet.count() >= config_.deadlock_seconds;
}

bool ProcessSetWorker::WorkQueued() const {
  return !queue_.empty() || shutdown_requested_ || (join_handle_ && !join_taken_);
}

bool ProcessSetWorker::DriveCycle(HandleState* waiting, std::chrono::milliseconds max_wait) {
  if (device_seen_.load(std::memory_order_relaxed)) return false;
  std::unique_lock<std::timed_mutex> cycle_lock(cycle_mutex_, std::defer_lock);
  if (!(max_wait.count() > 0 ? cycle_lock.try_lock_for(max_wait) : cycle_lock.try_lock()) ||
      stopped_) {
    return false;
  }
  // The engine thread's cycle may have completed it while this thread waited for the lock.
  if (waiting && waiting->Done()) return true;
  BoundDataWaits(config_.data_timeout_seconds);
  ++cycles_by_callers_;
  CycleOnce();
  return true;
}

std::chrono::microseconds ProcessSetWorker::CycleTime() const {
  return std::chrono::microseconds(static_cast<int64_t>(config_.cycle_time_ms * 1000));
}

void ProcessSetWorker::Loop() {
#ifdef __linux__
  // Its negotiation waits sleep in steps of microseconds, which the default 50 us timer slack
  // would stretch to 50 us each.
  prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
#endif
  // Every rank of the set is running by now, so a data wait that sees no progress for this
  // long is a collective a peer is not in: a named error instead of a hang.
  BoundDataWaits(config_.data_timeout_seconds);
  const auto cycle = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double, std::milli>(config_.cycle_time_ms));
  auto next_cycle = std::chrono::steady_clock::now() + cycle;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      auto woken = [this] { return WorkQueued() || stopped_; };
      if (size() == 1) {
        // Alone, nobody waits for this rank's cycles: sleep until there is work.
        wake_.wait(lock, woken);
      } else {
        // A submission wakes the cycle at once; otherwise run one every cycle time so peers
        // waiting on this rank's bits make progress.
        wake_.wait_until(lock, next_cycle, woken);
      }
      // Woken by a submission: the submitting thread usually waits on it next and drives the
      // cycle itself (DriveCycle); a short grace lets it, so this thread does not race it for
      // the core and the cycle. Asynchronous work still starts within the grace.
      if (QueueFresh(std::chrono::steady_clock::now())) {
        wake_.wait_until(lock, queue_fresh_until_, [this] { return queue_.empty() || stopped_ ||
                                                                   shutdown_requested_; });
        if (queue_.empty() && !stopped_ && !shutdown_requested_) {
          // A caller's cycle took it. Not taking the cycle lock now keeps that caller from
          // having to wake this thread when it releases the lock.
          next_cycle = std::chrono::steady_clock::time_point(
                           std::chrono::steady_clock::duration(last_cycle_ticks_.load())) +
                       cycle;
          continue;
        }
      }
    }
    std::lock_guard<std::timed_mutex> cycle_lock(cycle_mutex_);
    if (stopped_) return;
    bool queued, fresh;
    {
      // After the cycle lock: a caller's cycle may have taken the queue that woke this thread
      // (an extra cycle here would keep the peers waiting for it to be matched), and the
      // caller may have submitted its next request meanwhile, which is its own to drive too:
      // taking it would make the caller wait for this thread's cycle and a wake-up.
      std::lock_guard<std::mutex> lock(mutex_);
      queued = WorkQueued();
      fresh = QueueFresh(std::chrono::steady_clock::now());
    }
    // A caller may have run the cycle meanwhile (DriveCycle): the next idle cycle is due a cycle
    // time after the last one, whoever ran it.
    next_cycle = last_cycle_ + cycle;
    if (fresh) continue;
    if (!queued && std::chrono::steady_clock::now() < next_cycle) continue;
    ++cycles_by_engine_thread_;
    if (!CycleOnce()) return;
    next_cycle = last_cycle_ + cycle;
  }
}

bool ProcessSetWorker::CycleOnce() {
  last_cycle_ = std::chrono::steady_clock::now();
  last_cycle_ticks_.store(last_cycle_.time_since_epoch().count());
  std::string reason;
  try {
    int shutdown_requested;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (Request& request : queue_) {
        PendingEntry entry;
        entry.sequence = next_sequence_++;
        entry.submitted = last_cycle_;
        std::string name = request.spec.name;
        if (timeline_->active()) {
          timeline_->ActivityStart(name, std::string("NEGOTIATE_") +
                                             OpTypeName(request.spec.op_type));
        }
        entry.request = std::move(request);
        pending_.emplace(std::move(name), std::move(entry));
      }
      if (!queue_.empty() || (join_handle_ && !controller_.joined())) last_activity_ = last_cycle_;
      queue_.clear();
      shutdown_requested = shutdown_requested_;
      if (join_handle_) {
        controller_.Join();
        join_taken_ = true;
      }
    }
    if (timeline_->active()) timeline_->MarkCycle();
    CycleResult result = controller_.RunCycle(pending_, shutdown_requested, Blocked(pending_));
    if (result.shutdown) {
      reason = result.shutdown_rank == rank()
                   ? "fusecomm has been shut down"
                   : "fusecomm was shut down by rank " + std::to_string(result.shutdown_rank) +
                         (result.shutdown_at_exit ? " (its process exited)" : " (it called shutdown())") +
                         (id_ ? " in process set " + std::to_string(id_) : std::string());
      Stop(reason);
      return false;
    }
    if (!result.stall_error.empty()) {
      FUSECOMM_LOG(kError, result.stall_error);
      Stop(result.stall_error);
      return false;
    }
    if (!result.responses.empty()) {
      FUSECOMM_LOG(kTrace, "process set " << id_ << ": " << result.responses.size()
                                          << " response(s) this cycle");
    }
    if (result.all_joined) {
      std::shared_ptr<HandleState> handle;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        handle.swap(join_handle_);
        join_taken_ = false;
      }
      if (handle) {
        handle->last_joined_rank = result.last_joined_rank;
        handle->Complete();
      }
      return true;
    }
    for (const Response& response : result.responses) {
      if (response.reduced_in_negotiation) ++in_negotiation_;
    }
    executor_.Execute(result.responses, pending_, controller_.joined());
    if (!result.responses.empty()) last_activity_ = std::chrono::steady_clock::now();
    return true;
  } catch (const std::exception& e) {
    reason = std::string("fusecomm stopped: ") + e.what();
    FUSECOMM_LOG(kError, reason);
  }
  Stop(reason);
  return false;
}

void ProcessSetWorker::Stop(const std::string& reason) {
  // Stop accepting work first, then fail what is left, so no request is stranded.
  std::vector<Request> leftover;
  std::shared_ptr<HandleState> join_handle;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_reason_ = reason;
    stopped_ = true;
    leftover.swap(queue_);
    for (Request& request : held_) leftover.push_back(std::move(request));
    held_.clear();
    join_handle.swap(join_handle_);
  }
  wake_.notify_one();  // the engine thread ends when a caller's cycle stopped the set
  if (join_handle) join_handle->Fail(reason);
  for (Request& request : leftover) {
    PendingEntry entry;
    std::string name = request.spec.name;
    entry.request = std::move(request);
    pending_.emplace(std::move(name), std::move(entry));
  }
  executor_.FailAll(pending_, reason);
}

}  // namespace fusecomm

// One process set's engine: a queue the caller submits to and a background thread that
// negotiates and executes. Each process set has its own thread and communicators, so
// collectives on disjoint sets run concurrently. A cycle (take the queue, negotiate, execute)
// runs on whichever thread holds the cycle lock: the engine thread, or a caller waiting on one
// of the set's handles while the engine thread is idle (CycleDriver), which saves the hand-off's
// two thread wake-ups. Alone in its set, a rank runs each submission's cycle at once on the
// submitting thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "collectives/dispatch.h"
#include "common/config.h"
#include "engine/controller.h"
#include "engine/executor.h"
#include "engine/request.h"
#include "transport/topology.h"

namespace fusecomm {

class ProcessSetWorker : public CycleDriver {
 public:
  ProcessSetWorker(int id, std::unique_ptr<ControlChannel> control,
                   std::unique_ptr<Comm> data_comm, Topology topology,
                   AllreduceSelector selector, const Config& config, Timeline* timeline);
  ~ProcessSetWorker();

  int id() const { return id_; }
  int rank() const { return data_comm_->rank(); }
  int size() const { return data_comm_->size(); }
  const Topology& topology() const { return topology_; }
  const AllreduceSelector& selector() const { return selector_; }
  // Counts the threads waiting on this set's handles (Engine::Submit hands it to each handle).
  const std::shared_ptr<WaitCounter>& wait_counter() const { return waiters_; }

  // Queues a request. Throws InvalidArgument for a name already in flight and NotInitialized
  // once the worker has stopped.
  void Submit(Request request);
  // Between BeginGroup and EndGroup (nested: the outermost pair counts) submitted requests are
  // held back and then queued at once, so the negotiation sees a group's members all together
  // or not at all, and they fuse as one (Horovod's grouped collectives).
  void BeginGroup();
  void EndGroup();
  // Asks every rank to stop; returns after this rank's thread has stopped.
  void Shutdown(bool at_exit = false);
  bool stopped() const { return stopped_; }
  FusionPlanState fusion_plan() const { return executor_.fusion_plan(); }
  // Who ran this set's cycles, and how often a submission woke the engine thread: what the
  // hand-off costs (docs/performance.md, "Engine hand-off").
  struct HandOffCounts {
    uint64_t cycles_by_engine_thread = 0;
    uint64_t cycles_by_callers = 0;
    uint64_t engine_thread_wakeups = 0;
    uint64_t allreduces_in_negotiation = 0;  // completed by the negotiation's slot
  };
  HandOffCounts hand_off_counts() const {
    return {cycles_by_engine_thread_.load(), cycles_by_callers_.load(), wakeups_.load(),
            in_negotiation_.load()};
  }

  bool DriveCycle(HandleState* waiting, std::chrono::milliseconds max_wait) override;
  std::chrono::microseconds CycleTime() const override;

 private:
  void Loop();
  // Queued work the engine thread should start a cycle for (mutex_ held).
  bool WorkQueued() const;
  // Wakes a thread to run a cycle for new work: this one when the rank is alone in the set.
  void Wake();
  // Appends to the queue (mutex_ held), starting the hand-off grace when it was empty.
  void Enqueue(Request request);
  // The queue holds work still left to its submitter (mutex_ held).
  bool QueueFresh(std::chrono::steady_clock::time_point now) const;
  // One cycle: takes the queue, negotiates, executes (cycle_mutex_ held, not stopped). Returns
  // false when the set stopped in it.
  bool CycleOnce();
  // Fails everything left with `reason`; the set accepts nothing more (cycle_mutex_ held).
  void Stop(const std::string& reason);
  void ReleaseName(const std::string& name);
  // For the deadlock detector: this rank can only wait. Some thread waits on this set's
  // handles and none on another set's (whose completion could lead to a submission here), it
  // has requests pending (or has joined), and nothing was submitted or completed for the
  // quiet time. A rank computing in Python has no waiting thread, so it is never blocked.
  bool Blocked(const PendingTable& pending) const;

  const int id_;
  const Config config_;
  std::unique_ptr<Comm> data_comm_;
  Topology topology_;
  const AllreduceSelector selector_;
  Controller controller_;
  Timeline* timeline_;
  Executor executor_;

  // Held for a whole cycle; guards pending_, controller_, executor_, last_activity_ and
  // last_cycle_. Taken before mutex_, never while holding it.
  std::timed_mutex cycle_mutex_;
  PendingTable pending_;
  std::chrono::steady_clock::time_point last_cycle_ = std::chrono::steady_clock::now();
  // last_cycle_ for the engine thread's pace outside the cycle lock.
  std::atomic<std::chrono::steady_clock::rep> last_cycle_ticks_{
      last_cycle_.time_since_epoch().count()};
  std::atomic<uint64_t> cycles_by_engine_thread_{0}, cycles_by_callers_{0}, wakeups_{0},
      in_negotiation_{0};
  std::atomic<bool> device_seen_{false};  // a device tensor was submitted: the engine thread only

  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<Request> queue_;
  // Until when the queue's work is left to its submitter, who usually waits on it next and
  // drives the cycle itself (set when the queue becomes non-empty; see Loop).
  std::chrono::steady_clock::time_point queue_fresh_until_;
  std::vector<Request> held_;  // submitted inside a group, not yet queued
  int group_depth_ = 0;
  std::unordered_set<std::string> in_flight_;
  std::unordered_set<std::string> rejected_;  // in flight as a rejected request's marker
  std::string stop_reason_;
  int shutdown_requested_ = 0;  // 0 no, 1 shutdown(), 2 the process is exiting
  std::atomic<bool> stopped_{false};
  uint64_t next_sequence_ = 0;
  std::shared_ptr<HandleState> join_handle_;  // set while this rank's join() waits
  bool join_taken_ = false;  // a cycle has told the controller about join_handle_
  std::shared_ptr<WaitCounter> waiters_ = std::make_shared<WaitCounter>();
  // The engine thread's last submission taken in or response executed.
  std::chrono::steady_clock::time_point last_activity_ = std::chrono::steady_clock::now();
  std::thread thread_;
};

}  // namespace fusecomm

// What a rank asks the engine for, and what the ranks agree to do.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/types.h"

namespace fusecomm {

// The part of a request every rank must agree on. It travels to the coordinator.
struct TensorSpec {
  std::string name;
  OpType op_type = OpType::kAllreduce;
  DataType dtype = DataType::kFloat32;
  ReduceOp reduce_op = ReduceOp::kSum;
  std::vector<int64_t> shape;
  int32_t root = 0;
  double prescale = 1.0;
  double postscale = 1.0;
  int32_t device = -1;  // -1: host memory; >= 0: CUDA device ordinal
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::kAuto;
  // Non-empty: this rank's request was invalid (it raised there). It is still negotiated so
  // that the ranks waiting for the name fail too, instead of stalling.
  std::string argument_error;

  int64_t num_elements() const;
  size_t num_bytes() const { return static_cast<size_t>(num_elements()) * DataTypeSize(dtype); }
  // Elements in one row (product of shape[1:]); 1 for scalars.
  int64_t row_elements() const;
};

std::string ShapeString(const std::vector<int64_t>& shape);

// Memory owned by the engine: outputs whose size only the collective decides, stand-ins.
// Host memory, or (device >= 0) memory of that CUDA device, allocated by the device's context.
struct EngineBuffer {
  // Host memory, 64-byte aligned.
  explicit EngineBuffer(size_t bytes);
  EngineBuffer(std::shared_ptr<void> data, size_t bytes, int device)
      : data(std::move(data)), bytes(bytes), device(device) {}
  std::shared_ptr<void> data;
  size_t bytes;
  int device = -1;
};

// Threads of this process blocked in HandleState::Wait on one process set's handles. The
// deadlock detector counts a rank as stuck only while it waits (a rank that computes may still
// submit), and only while it waits on that set alone.
struct WaitCounter {
  std::atomic<int> waiting{0};
};
// Threads blocked in HandleState::Wait on any process set's handles.
int ThreadsWaitingOnAnySet();

class HandleState;

// A process set's engine as a thread waiting on one of its handles sees it: while the engine
// thread is idle, the waiting thread runs the negotiation and the collective itself, so its
// request completes without two thread wake-ups (submit -> engine thread -> caller).
class CycleDriver {
 public:
  virtual ~CycleDriver() = default;
  // Runs one engine cycle on the calling thread for `waiting` (nothing once it is done),
  // waiting up to `max_wait` for a cycle another thread runs. False when it cannot: the wait
  // ran out, the set has stopped, or the set runs device tensors (their streams belong to the
  // engine thread).
  virtual bool DriveCycle(HandleState* waiting, std::chrono::milliseconds max_wait) = 0;
  // The engine thread's pace while requests wait for peers (the cycle time).
  virtual std::chrono::microseconds CycleTime() const = 0;
};

// Completion state of one submitted request, shared by the engine thread and the caller.
class HandleState {
 public:
  static constexpr std::chrono::milliseconds kWakePeriod{50};

  bool Done();
  // Blocks until done; throws CollectiveError with the failure message. Every `period` it
  // calls `between_waits` (when set), which may throw to abandon the wait (a Python signal
  // handler raising KeyboardInterrupt): the request then stays in flight.
  void Wait(const std::function<void()>& between_waits = {},
            std::chrono::milliseconds period = kWakePeriod);
  void Complete();
  void Fail(const std::string& message);

  // Filled by the engine before Complete() for outputs it allocates.
  std::shared_ptr<EngineBuffer> output;
  std::vector<int64_t> output_shape;
  // alltoall: rows received from each rank
  std::vector<int64_t> received_splits;
  // join: the rank that joined last
  int last_joined_rank = -1;
  // The process set's count of waiting threads (set at submission; may be null).
  std::shared_ptr<WaitCounter> waiters;
  // The process set's engine, which Wait drives while its thread is idle (may be unset).
  std::weak_ptr<CycleDriver> driver;

 private:
  std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  std::string error_;
};

struct Request {
  TensorSpec spec;
  const void* input = nullptr;
  // Caller-provided output of the input's size (allreduce, broadcast); the engine allocates the
  // output of allgather, reducescatter and alltoall into handle->output instead.
  void* output = nullptr;
  std::vector<int64_t> splits;  // alltoall: rows sent to each rank (empty: equal)
  std::shared_ptr<HandleState> handle;
  // Device tensors: the caller's CUDA stream (0: the legacy default stream), and an event
  // recorded on it at submission, which the engine's stream waits for before touching the data.
  uintptr_t stream = 0;
  std::shared_ptr<void> ready_event;
  // A joined rank's zero contribution (buffers made by the engine, not the caller).
  bool stand_in = false;
  // When the caller submitted it: a gradient's ready time for MG-WFBP (the engine thread may
  // take several submissions in at once when it wakes late).
  std::chrono::steady_clock::time_point submitted;
  // The submitting thread waits on it at once (a synchronous call) and drives the cycle itself:
  // the engine thread is not woken for it (a wake-up per call cost a core's worth of context
  // switches on a busy node). Should the caller not drive it, the engine thread's next cycle
  // (within the cycle time) runs it.
  bool caller_waits = false;
};

// Agreed by all ranks of a process set: run `spec`, or fail everybody's request with `error`.
struct Response {
  TensorSpec spec;
  std::string error;  // non-empty: an error response
  // This cycle's negotiation has already reduced it into the request's output (slot_allreduce.h).
  // Never sent or cached.
  bool reduced_in_negotiation = false;
};

}  // namespace fusecomm

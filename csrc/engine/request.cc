#include "engine/request.h"

#include <algorithm>
#include <cstdlib>
#include <sstream>

#include "common/errors.h"

namespace fusecomm {

int64_t TensorSpec::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t TensorSpec::row_elements() const {
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

EngineBuffer::EngineBuffer(size_t n) : bytes(n) {
  // 64-byte alignment keeps the vectorised kernels on aligned loads; malloc(0) may return null.
  void* p = std::aligned_alloc(64, ((n + 63) / 64) * 64 + 64);
  if (!p) throw CollectiveError("out of host memory allocating " + std::to_string(n) + " bytes");
  data = std::shared_ptr<void>(p, std::free);
}

bool HandleState::Done() {
  std::lock_guard<std::mutex> lock(mutex_);
  return done_;
}

namespace {
std::atomic<int> g_threads_waiting{0};

// Counts the calling thread as waiting for as long as it is in scope.
class WaitingScope {
 public:
  explicit WaitingScope(WaitCounter* set) : set_(set) {
    if (set_) ++set_->waiting;
    ++g_threads_waiting;
  }
  ~WaitingScope() {
    --g_threads_waiting;
    if (set_) --set_->waiting;
  }
  WaitingScope(const WaitingScope&) = delete;
  WaitingScope& operator=(const WaitingScope&) = delete;

 private:
  WaitCounter* set_;
};
}  // namespace

int ThreadsWaitingOnAnySet() { return g_threads_waiting.load(); }

void HandleState::Wait(const std::function<void()>& between_waits,
                       std::chrono::milliseconds period) {
  using Clock = std::chrono::steady_clock;
  WaitingScope scope(waiters.get());
  std::shared_ptr<CycleDriver> engine = driver.lock();
  std::unique_lock<std::mutex> lock(mutex_);
  auto next_check = Clock::now() + period;
  int fruitless_cycles = 0;
  while (!done_) {
    // Drives the cycles itself, or waits for the engine thread's cycle to end and drives the
    // next; a set it cannot drive completes on the engine thread.
    lock.unlock();
    const bool drove = engine && engine->DriveCycle(this, period);
    lock.lock();
    auto until = next_check;
    if (drove && ++fruitless_cycles >= 2) {
      // Some peer has not submitted it yet: from the second fruitless cycle on, the engine
      // thread's pace (back-to-back cycles would keep the ranks' MPI progress busy and starve
      // their heartbeat threads on a crowded node).
      until = std::min(until, Clock::now() + engine->CycleTime());
    } else if (drove) {
      continue;  // one more at once: the cycle may have met a peer's idle cycle
    }
    done_cv_.wait_until(lock, until, [this] { return done_; });
    if (done_ || !between_waits || Clock::now() < next_check) continue;
    lock.unlock();
    between_waits();
    lock.lock();
    next_check = Clock::now() + period;
  }
  if (!error_.empty()) throw CollectiveError(error_);
}

void HandleState::Complete() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    done_ = true;
  }
  done_cv_.notify_all();
}

void HandleState::Fail(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = message.empty() ? "collective failed" : message;
    done_ = true;
  }
  done_cv_.notify_all();
}

}  // namespace fusecomm

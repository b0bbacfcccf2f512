#include "engine/request.h"

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

void HandleState::Wait() {
  std::unique_lock<std::mutex> lock(mutex_);
  done_cv_.wait(lock, [this] { return done_; });
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

#include "timeline/timeline.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>

#include "common/errors.h"

namespace fusecomm {

namespace {

// The writer wakes when this many events are queued, or after kWakeInterval at the latest.
constexpr size_t kWakeBatch = 8192;
constexpr auto kWakeInterval = std::chrono::milliseconds(50);
// The file is flushed to the OS at least this often while running.
constexpr auto kFlushInterval = std::chrono::milliseconds(1000);

const char kHexDigits[] = "0123456789abcdef";

void AppendInt(std::string* out, int64_t value) { out->append(std::to_string(value)); }

}  // namespace

Timeline::~Timeline() { Stop(); }

void Timeline::AppendJsonEscaped(std::string* out, const std::string& text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      switch (c) {
        case '"': out->append("\\\""); break;
        case '\\': out->append("\\\\"); break;
        case '\b': out->append("\\b"); break;
        case '\f': out->append("\\f"); break;
        case '\n': out->append("\\n"); break;
        case '\r': out->append("\\r"); break;
        case '\t': out->append("\\t"); break;
        default:
          if (c < 0x20 || c == 0x7f) {
            out->append("\\u00");
            out->push_back(kHexDigits[c >> 4]);
            out->push_back(kHexDigits[c & 0xf]);
          } else {
            out->push_back(static_cast<char>(c));
          }
      }
      ++i;
      continue;
    }
    // Multi-byte UTF-8: copy a well-formed sequence as is, replace anything else by U+FFFD
    // (one replacement per bad byte), so the file stays valid UTF-8 JSON.
    size_t len = 0;
    uint32_t code = 0;
    uint32_t min_code = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2, code = c & 0x1F, min_code = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, code = c & 0x0F, min_code = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, code = c & 0x07, min_code = 0x10000;
    }
    bool valid = len != 0 && i + len <= n;
    for (size_t k = 1; valid && k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) {
        valid = false;
      } else {
        code = (code << 6) | (p[i + k] & 0x3F);
      }
    }
    valid = valid && code >= min_code && code <= 0x10FFFF && !(code >= 0xD800 && code <= 0xDFFF);
    if (valid) {
      out->append(text, i, len);
      i += len;
    } else {
      out->append("\\ufffd");
      ++i;
    }
  }
}

void Timeline::Start(const std::string& path, bool mark_cycles, int rank) {
  std::lock_guard<std::mutex> life(lifecycle_mutex_);
  StopLocked();

  std::FILE* file = std::fopen(path.c_str(), "w");
  if (file == nullptr) {
    const int err = errno;
    throw InvalidArgument("cannot open the timeline file '" + path + "' for writing: " +
                          std::strerror(err));
  }
  file_ = file;
  mark_cycles_.store(mark_cycles, std::memory_order_relaxed);
  rank_ = rank;
  first_record_ = true;
  write_failed_ = false;
  tids_.clear();
  open_depth_.clear();
  dropped_.store(0, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(info_mutex_);
    path_ = path;
    error_.clear();
  }

  // Header: the array, the process' name and the engine row (tid 0).
  std::string header = "[\n";
  AppendRecordPrefix(&header);
  header.append("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":");
  AppendInt(&header, rank_);
  header.append(",\"tid\":0,\"args\":{\"name\":\"fusecomm rank ");
  AppendInt(&header, rank_);
  header.append("\"}}");
  AppendRecordPrefix(&header);
  header.append("{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":");
  AppendInt(&header, rank_);
  header.append(",\"tid\":0,\"args\":{\"sort_index\":");
  AppendInt(&header, rank_);
  header.append("}}");
  AppendRecordPrefix(&header);
  header.append("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":");
  AppendInt(&header, rank_);
  header.append(",\"tid\":0,\"args\":{\"name\":\"fusecomm engine\"}}");
  WriteOut(header);

  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    queue_.clear();
    stop_requested_ = false;
    start_time_ = std::chrono::steady_clock::now();
    accepting_ = true;
  }
  try {
    writer_ = std::thread(&Timeline::WriterLoop, this);
  } catch (const std::system_error& e) {
    {
      std::lock_guard<std::mutex> lock(queue_mutex_);
      accepting_ = false;
      queue_.clear();
    }
    std::fclose(file_);
    file_ = nullptr;
    throw InvalidArgument(std::string("cannot start the timeline writer thread: ") + e.what());
  }
  active_.store(true, std::memory_order_release);
}

void Timeline::Stop() {
  std::lock_guard<std::mutex> life(lifecycle_mutex_);
  StopLocked();
}

void Timeline::StopLocked() {
  if (!writer_.joinable()) return;
  active_.store(false, std::memory_order_release);
  int64_t stop_ns = 0;
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    accepting_ = false;
    stop_requested_ = true;
    stop_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                  std::chrono::steady_clock::now() - start_time_).count();
  }
  queue_cv_.notify_one();
  writer_.join();  // the writer drained the queue before returning

  std::string tail;
  // Close activities still open, so every row's B/E events balance.
  std::vector<std::pair<int, int>> open(open_depth_.begin(), open_depth_.end());
  std::sort(open.begin(), open.end());
  for (const auto& [tid, depth] : open) {
    for (int k = 0; k < depth; ++k) {
      AppendRecordPrefix(&tail);
      tail.append("{\"ph\":\"E\",\"pid\":");
      AppendInt(&tail, rank_);
      tail.append(",\"tid\":");
      AppendInt(&tail, tid);
      tail.append(",\"ts\":");
      AppendTs(&tail, stop_ns);
      tail.append(",\"args\":{\"closed_at_stop\":true}}");
    }
  }
  open_depth_.clear();
  const uint64_t dropped = dropped_.load(std::memory_order_relaxed);
  if (dropped > 0) {
    AppendRecordPrefix(&tail);
    tail.append("{\"name\":\"timeline events dropped (writer fell behind)\",\"ph\":\"i\",\"s\":\"p\","
                "\"pid\":");
    AppendInt(&tail, rank_);
    tail.append(",\"tid\":0,\"ts\":");
    AppendTs(&tail, stop_ns);
    tail.append(",\"args\":{\"dropped\":");
    tail.append(std::to_string(dropped));
    tail.append("}}");
  }
  tail.append("\n]\n");
  WriteOut(tail);
  if (std::fclose(file_) != 0 && !write_failed_) {
    SetError(std::string("closing the timeline file failed: ") + std::strerror(errno));
  }
  file_ = nullptr;
  tids_.clear();
}

std::string Timeline::path() const {
  std::lock_guard<std::mutex> lock(info_mutex_);
  return path_;
}

std::string Timeline::last_error() const {
  std::lock_guard<std::mutex> lock(info_mutex_);
  return error_;
}

void Timeline::ActivityStart(const std::string& tensor_name, const std::string& activity,
                             const std::string& args_json) {
  if (!active()) return;
  Push(Phase::kBegin, tensor_name, activity, args_json);
}

void Timeline::ActivityEnd(const std::string& tensor_name, const std::string& args_json) {
  if (!active()) return;
  Push(Phase::kEnd, tensor_name, std::string(), args_json);
}

void Timeline::MarkCycle() {
  if (!active() || !mark_cycles_.load(std::memory_order_relaxed)) return;
  Push(Phase::kCycle, std::string(), std::string(), std::string());
}

void Timeline::Instant(const std::string& name, const std::string& args_json) {
  if (!active()) return;
  Push(Phase::kInstant, std::string(), name, args_json);
}

void Timeline::Push(Phase phase, const std::string& tensor, const std::string& name,
                    const std::string& args) {
  // Copies happen before the lock; under it only the timestamp and a move.
  Event event{phase, 0, tensor, name, args};
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    if (!accepting_) return;
    if (queue_.size() >= kMaxQueuedEvents) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    event.ts_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now() - start_time_).count();
    queue_.push_back(std::move(event));
    wake = queue_.size() == kWakeBatch;
  }
  if (wake) queue_cv_.notify_one();
}

void Timeline::WriterLoop() {
  std::vector<Event> batch;
  std::string text;
  auto last_flush = std::chrono::steady_clock::now();
  for (;;) {
    bool stopping = false;
    {
      std::unique_lock<std::mutex> lock(queue_mutex_);
      queue_cv_.wait_for(lock, kWakeInterval,
                         [this] { return stop_requested_ || queue_.size() >= kWakeBatch; });
      batch.swap(queue_);  // queue_ gets batch's (empty) storage back: capacity is recycled
      stopping = stop_requested_;
    }
    text.clear();
    for (const Event& event : batch) FormatEvent(event, &text);
    batch.clear();
    WriteOut(text);
    if (stopping) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_flush >= kFlushInterval) {
      if (!write_failed_ && std::fflush(file_) != 0) {
        write_failed_ = true;
        SetError(std::string("flushing the timeline file failed: ") + std::strerror(errno));
      }
      last_flush = now;
    }
  }
}

void Timeline::AppendRecordPrefix(std::string* out) {
  if (!first_record_) out->append(",\n");
  first_record_ = false;
}

void Timeline::AppendTs(std::string* out, int64_t ts_ns) const {
  // Microseconds with nanosecond decimals: "12.345".
  if (ts_ns < 0) ts_ns = 0;
  AppendInt(out, ts_ns / 1000);
  const int frac = static_cast<int>(ts_ns % 1000);
  out->push_back('.');
  out->push_back(static_cast<char>('0' + frac / 100));
  out->push_back(static_cast<char>('0' + frac / 10 % 10));
  out->push_back(static_cast<char>('0' + frac % 10));
}

void Timeline::AppendArgs(std::string* out, const std::string& args) const {
  if (args.empty()) return;
  const size_t first = args.find_first_not_of(" \t\r\n");
  const size_t last = args.find_last_not_of(" \t\r\n");
  out->append(",\"args\":");
  if (first != std::string::npos && args[first] == '{' && args[last] == '}') {
    out->append(args, first, last - first + 1);
  } else {
    out->append("{\"value\":\"");
    AppendJsonEscaped(out, args);
    out->append("\"}");
  }
}

int Timeline::TidFor(const std::string& tensor, std::string* out) {
  auto it = tids_.find(tensor);
  if (it != tids_.end()) return it->second;
  const int tid = static_cast<int>(tids_.size()) + 1;  // tid 0 is the engine row
  tids_.emplace(tensor, tid);
  AppendRecordPrefix(out);
  out->append("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":");
  AppendInt(out, rank_);
  out->append(",\"tid\":");
  AppendInt(out, tid);
  out->append(",\"args\":{\"name\":\"");
  AppendJsonEscaped(out, tensor);
  out->append("\"}}");
  // Rows in the order tensors first appeared.
  AppendRecordPrefix(out);
  out->append("{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":");
  AppendInt(out, rank_);
  out->append(",\"tid\":");
  AppendInt(out, tid);
  out->append(",\"args\":{\"sort_index\":");
  AppendInt(out, tid);
  out->append("}}");
  return tid;
}

void Timeline::FormatEvent(const Event& event, std::string* out) {
  int tid = 0;
  switch (event.phase) {
    case Phase::kBegin:
      tid = TidFor(event.tensor, out);
      ++open_depth_[tid];
      AppendRecordPrefix(out);
      out->append("{\"name\":\"");
      AppendJsonEscaped(out, event.name);
      out->append("\",\"ph\":\"B\"");
      break;
    case Phase::kEnd: {
      auto it = tids_.find(event.tensor);
      if (it == tids_.end()) return;  // nothing was begun on this row
      auto depth = open_depth_.find(it->second);
      if (depth == open_depth_.end() || depth->second == 0) return;  // unmatched end
      tid = it->second;
      if (--depth->second == 0) open_depth_.erase(depth);
      AppendRecordPrefix(out);
      out->append("{\"ph\":\"E\"");
      break;
    }
    case Phase::kInstant:
      AppendRecordPrefix(out);
      out->append("{\"name\":\"");
      AppendJsonEscaped(out, event.name);
      out->append("\",\"ph\":\"i\",\"s\":\"t\"");
      break;
    case Phase::kCycle:
      AppendRecordPrefix(out);
      out->append("{\"name\":\"CYCLE\",\"ph\":\"i\",\"s\":\"p\"");
      break;
  }
  out->append(",\"pid\":");
  AppendInt(out, rank_);
  out->append(",\"tid\":");
  AppendInt(out, tid);
  out->append(",\"ts\":");
  AppendTs(out, event.ts_ns);
  AppendArgs(out, event.args);
  out->push_back('}');
}

void Timeline::WriteOut(const std::string& text) {
  if (file_ == nullptr || text.empty() || write_failed_) return;
  if (std::fwrite(text.data(), 1, text.size(), file_) != text.size()) {
    write_failed_ = true;
    SetError(std::string("writing the timeline file failed: ") + std::strerror(errno));
  }
}

void Timeline::SetError(const std::string& message) {
  std::lock_guard<std::mutex> lock(info_mutex_);
  if (error_.empty()) error_ = message;
}

}  // namespace fusecomm

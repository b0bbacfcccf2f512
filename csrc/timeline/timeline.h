// Chrome trace-event (Perfetto, chrome://tracing) writer: what the engine did to every tensor,
// one row per tensor name, on a time axis in microseconds since Start().
//
// The file is a JSON array of trace events:
//   [
//   {"name":"process_name","ph":"M","pid":R,"tid":0,"args":{"name":"fusecomm rank R"}},
//   {"name":"thread_name","ph":"M","pid":R,"tid":T,"args":{"name":"<tensor>"}},
//   {"name":"NEGOTIATE","ph":"B","pid":R,"tid":T,"ts":12.345,"args":{...}},
//   {"ph":"E","pid":R,"tid":T,"ts":20.000},
//   ...
//   ]
// pid is the rank, so the files of several ranks can be loaded together. Row (tid) 0 is the
// engine's own row: Instant() events and cycle marks go there.
//
// Callers stay off the I/O path: every event call takes its timestamp and appends to an
// in-memory queue under a short mutex; a background thread formats the queue into the file and
// flushes it periodically. Callers should test active() (one relaxed atomic load) before building
// names or argument strings. All methods are thread-safe.
//
// Robustness: an ActivityEnd with no open activity on its row is dropped; activities still open
// at Stop() are closed at the stop time; if the writer falls behind by more than
// kMaxQueuedEvents, further events are dropped and counted (reported as an instant at Stop()).
// Names are JSON-escaped (invalid UTF-8 becomes U+FFFD). The file is valid JSON after Stop(),
// and Chrome/Perfetto also open it mid-run (both accept an unterminated array).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace fusecomm {

class Timeline {
 public:
  // Events beyond this many waiting for the writer are dropped (and counted).
  static constexpr size_t kMaxQueuedEvents = 1u << 20;

  Timeline() = default;
  ~Timeline();  // Stop()s a running timeline, so the file is valid JSON
  Timeline(const Timeline&) = delete;
  Timeline& operator=(const Timeline&) = delete;

  // Opens (truncates) `path` and starts the writer. Throws InvalidArgument when the file cannot
  // be opened. On a running timeline, first Stop()s it (its file is completed), then restarts.
  void Start(const std::string& path, bool mark_cycles, int rank);
  // Writes what is queued, closes open activities, terminates the JSON array and closes the file.
  // No-op when not running. Never throws.
  void Stop();
  bool active() const { return active_.load(std::memory_order_relaxed); }

  // `args_json` is a JSON object literal such as {"bytes":4096} (empty: no args). Anything that
  // is not braced like an object is recorded as {"value":"<escaped text>"}.
  void ActivityStart(const std::string& tensor_name, const std::string& activity,
                     const std::string& args_json = "");
  void ActivityEnd(const std::string& tensor_name, const std::string& args_json = "");
  // A process-wide instant event "CYCLE" on the engine row; only when started with mark_cycles.
  void MarkCycle();
  // A named instant event on the engine row.
  void Instant(const std::string& name, const std::string& args_json = "");

  // Path of the running (or last) timeline, and the first write error seen ("" if none).
  std::string path() const;
  std::string last_error() const;
  // Events dropped because the queue was full, in the current (or last) run.
  uint64_t dropped_events() const { return dropped_.load(std::memory_order_relaxed); }

  // Exposed for tests: appends `text` to `out` as the body of a JSON string (no quotes).
  static void AppendJsonEscaped(std::string* out, const std::string& text);

 private:
  enum class Phase : char { kBegin = 'B', kEnd = 'E', kInstant = 'i', kCycle = 'c' };
  struct Event {
    Phase phase;
    int64_t ts_ns;
    std::string tensor;    // row (empty: the engine row)
    std::string name;      // activity / instant name
    std::string args;      // JSON object text or ""
  };

  void StopLocked();
  void Push(Phase phase, const std::string& tensor, const std::string& name,
            const std::string& args);
  void WriterLoop();
  // Writer-side formatting (writer thread, or Stop() after the writer joined).
  void FormatEvent(const Event& event, std::string* out);
  int TidFor(const std::string& tensor, std::string* out);
  void AppendRecordPrefix(std::string* out);
  void AppendTs(std::string* out, int64_t ts_ns) const;
  void AppendArgs(std::string* out, const std::string& args) const;
  void WriteOut(const std::string& text);
  void SetError(const std::string& message);

  std::atomic<bool> active_{false};
  std::atomic<uint64_t> dropped_{0};

  std::mutex lifecycle_mutex_;  // serializes Start/Stop

  // Queue shared by callers and the writer.
  std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::vector<Event> queue_;
  bool accepting_ = false;       // events are queued only while true
  bool stop_requested_ = false;
  std::chrono::steady_clock::time_point start_time_;

  // Writer state (touched only by the writer thread while it runs, and by Start/Stop otherwise).
  std::thread writer_;
  std::FILE* file_ = nullptr;
  std::atomic<bool> mark_cycles_{false};
  int rank_ = 0;
  bool first_record_ = true;
  bool write_failed_ = false;
  std::unordered_map<std::string, int> tids_;
  std::unordered_map<int, int> open_depth_;  // tid -> activities begun and not ended

  mutable std::mutex info_mutex_;  // path_ and error_
  std::string path_;
  std::string error_;
};

}  // namespace fusecomm

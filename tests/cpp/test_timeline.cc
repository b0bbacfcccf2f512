// Standalone test of the Chrome-trace writer (csrc/timeline/timeline.h): events from several
// threads, Start/Stop cycles, destructor without Stop, escaping, and a parse of every file
// written with a small strict JSON parser.
// Build: g++ -std=c++17 -O2 -Wall -Wextra -pthread -Icsrc csrc/timeline/timeline.cc
//        csrc/common/types.cc tests/cpp/test_timeline.cc -o /tmp/test_timeline
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/errors.h"
#include "timeline/timeline.h"
#include "test_check.h"

using fusecomm::InvalidArgument;
using fusecomm::Timeline;

namespace {

using fusecomm_test::Check;

// ---- a small strict JSON parser ----------------------------------------------------------------

struct Json {
  enum Type { kNull, kBool, kNumber, kString, kArray, kObject } type = kNull;
  bool boolean = false;
  double number = 0;
  std::string str;
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> members;

  const Json* Get(const std::string& key) const {
    for (const auto& m : members) {
      if (m.first == key) return &m.second;
    }
    return nullptr;
  }
  std::string GetString(const std::string& key) const {
    const Json* v = Get(key);
    return v != nullptr && v->type == kString ? v->str : std::string("<missing>");
  }
  double GetNumber(const std::string& key, double fallback = -1) const {
    const Json* v = Get(key);
    return v != nullptr && v->type == kNumber ? v->number : fallback;
  }
};

class Parser {
 public:
  explicit Parser(const std::string& text) : s_(text) {}

  Json ParseDocument() {
    Json value = ParseValue();
    SkipSpace();
    if (pos_ != s_.size()) Fail("trailing characters");
    return value;
  }

 private:
  [[noreturn]] void Fail(const std::string& why) {
    throw std::runtime_error("JSON error at offset " + std::to_string(pos_) + ": " + why);
  }
  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' ||
                                s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  char Peek() {
    SkipSpace();
    if (pos_ >= s_.size()) Fail("unexpected end");
    return s_[pos_];
  }
  void Expect(char c) {
    if (Peek() != c) Fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  Json ParseValue() {
    const char c = Peek();
    Json v;
    if (c == '{') {
      v.type = Json::kObject;
      ++pos_;
      if (Peek() == '}') {
        ++pos_;
        return v;
      }
      for (;;) {
        if (Peek() != '"') Fail("expected a key");
        std::string key = ParseString();
        Expect(':');
        v.members.emplace_back(key, ParseValue());
        if (Peek() == ',') {
          ++pos_;
          continue;
        }
        Expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.type = Json::kArray;
      ++pos_;
      if (Peek() == ']') {
        ++pos_;
        return v;
      }
      for (;;) {
        v.items.push_back(ParseValue());
        if (Peek() == ',') {
          ++pos_;
          continue;
        }
        Expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.type = Json::kString;
      v.str = ParseString();
      return v;
    }
    if (s_.compare(pos_, 4, "true") == 0) {
      pos_ += 4;
      v.type = Json::kBool;
      v.boolean = true;
      return v;
    }
    if (s_.compare(pos_, 5, "false") == 0) {
      pos_ += 5;
      v.type = Json::kBool;
      return v;
    }
    if (s_.compare(pos_, 4, "null") == 0) {
      pos_ += 4;
      return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
      const size_t start = pos_;
      while (pos_ < s_.size() && std::string("+-.eE0123456789").find(s_[pos_]) != std::string::npos) {
        ++pos_;
      }
      v.type = Json::kNumber;
      v.number = std::strtod(s_.substr(start, pos_ - start).c_str(), nullptr);
      return v;
    }
    Fail(std::string("unexpected character '") + c + "'");
  }
  static void AppendUtf8(std::string* out, uint32_t cp) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  uint32_t Hex4() {
    if (pos_ + 4 > s_.size()) Fail("short \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char h = s_[pos_++];
      v <<= 4;
      if (h >= '0' && h <= '9') {
        v |= h - '0';
      } else if (h >= 'a' && h <= 'f') {
        v |= h - 'a' + 10;
      } else if (h >= 'A' && h <= 'F') {
        v |= h - 'A' + 10;
      } else {
        Fail("bad hex digit");
      }
    }
    return v;
  }
  std::string ParseString() {
    Expect('"');
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) Fail("unterminated string");
      const unsigned char c = static_cast<unsigned char>(s_[pos_++]);
      if (c == '"') return out;
      if (c < 0x20) Fail("raw control character in a string");
      if (c != '\\') {
        out.push_back(static_cast<char>(c));
        continue;
      }
      if (pos_ >= s_.size()) Fail("unterminated escape");
      const char e = s_[pos_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          uint32_t cp = Hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.compare(pos_, 2, "\\u") != 0) Fail("lone high surrogate");
            pos_ += 2;
            const uint32_t lo = Hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          AppendUtf8(&out, cp);
          break;
        }
        default:
          Fail("bad escape");
      }
    }
  }

  const std::string& s_;
  size_t pos_ = 0;
};

bool ValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A parsed trace, with what the checks need.
struct Trace {
  bool ok = false;
  std::string error;
  std::vector<Json> events;
  std::map<int, std::string> thread_names;  // tid -> name
  std::string process_name;

  size_t Count(const std::string& ph, const std::string& name = "") const {
    size_t n = 0;
    for (const auto& e : events) {
      if (e.GetString("ph") == ph && (name.empty() || e.GetString("name") == name)) ++n;
    }
    return n;
  }
  int TidOf(const std::string& tensor) const {
    for (const auto& [tid, name] : thread_names) {
      if (name == tensor) return tid;
    }
    return -1;
  }
};

Trace LoadTrace(const std::string& path) {
  Trace t;
  const std::string text = ReadFile(path);
  if (!ValidUtf8(text)) {
    t.error = "file is not valid UTF-8";
    return t;
  }
  try {
    Json doc = Parser(text).ParseDocument();
    if (doc.type != Json::kArray) {
      t.error = "top level is not an array";
      return t;
    }
    t.events = std::move(doc.items);
  } catch (const std::exception& e) {
    t.error = e.what();
    return t;
  }
  for (const auto& e : t.events) {
    if (e.type != Json::kObject) {
      t.error = "an event is not an object";
      return t;
    }
    if (e.GetString("ph") == "M") {
      const Json* args = e.Get("args");
      if (args == nullptr) continue;
      if (e.GetString("name") == "thread_name") {
        t.thread_names[static_cast<int>(e.GetNumber("tid"))] = args->GetString("name");
      } else if (e.GetString("name") == "process_name") {
        t.process_name = args->GetString("name");
      }
    }
  }
  t.ok = true;
  return t;
}

// Every row's B/E events balance and never go negative, and timestamps never go back per row.
bool Balanced(const Trace& t, std::string* why) {
  std::map<int, int> depth;
  std::map<int, double> last_ts;
  for (const auto& e : t.events) {
    const std::string ph = e.GetString("ph");
    if (ph == "M") continue;
    const int tid = static_cast<int>(e.GetNumber("tid"));
    const double ts = e.GetNumber("ts");
    if (ts < 0) {
      *why = "event without ts";
      return false;
    }
    if (last_ts.count(tid) && ts < last_ts[tid]) {
      *why = "ts goes back on tid " + std::to_string(tid);
      return false;
    }
    last_ts[tid] = ts;
    if (ph == "B") ++depth[tid];
    if (ph == "E" && --depth[tid] < 0) {
      *why = "E before B on tid " + std::to_string(tid);
      return false;
    }
  }
  for (const auto& [tid, d] : depth) {
    if (d != 0) {
      *why = "tid " + std::to_string(tid) + " left " + std::to_string(d) + " open";
      return false;
    }
  }
  return true;
}

std::string TempPath(const std::string& tag) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/fusecomm_test_timeline_" +
         std::to_string(getpid()) + "_" + tag + ".json";
}

constexpr int kHeaderEvents = 3;  // process_name, process_sort_index, engine thread_name

// ---- tests -------------------------------------------------------------------------------------

void TestThreadsAndCounts() {
  const std::string path = TempPath("threads");
  Timeline tl;
  Check(!tl.active(), "inactive before Start");
  tl.ActivityStart("ignored", "X");  // before Start: ignored, no crash
  tl.Start(path, /*mark_cycles=*/true, /*rank=*/3);
  Check(tl.active(), "active after Start");
  constexpr int kThreads = 6;
  constexpr int kTensorsPerThread = 5;
  constexpr int kIters = 400;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&tl, t] {
      for (int i = 0; i < kIters; ++i) {
        const std::string tensor = "grad/layer" + std::to_string(t) + "." +
                                   std::to_string(i % kTensorsPerThread);
        tl.ActivityStart(tensor, "NEGOTIATE");
        tl.ActivityStart(tensor, "ALLREDUCE", "{\"bytes\":" + std::to_string(i) + "}");
        tl.ActivityEnd(tensor);
        tl.ActivityEnd(tensor, "{\"ok\":true}");
        if (i % 50 == 0) tl.Instant("thread " + std::to_string(t) + " mark");
        tl.MarkCycle();
      }
    });
  }
  for (auto& th : threads) th.join();
  tl.Stop();
  Check(!tl.active(), "inactive after Stop");
  tl.Instant("after stop");  // ignored
  Check(tl.last_error().empty(), "no write error: " + tl.last_error());

  Trace t = LoadTrace(path);
  Check(t.ok, "threads: parses: " + t.error);
  const size_t tensors = kThreads * kTensorsPerThread;
  const size_t pairs = static_cast<size_t>(kThreads) * kIters * 2;
  const size_t instants = kThreads * (kIters / 50);
  const size_t cycles = static_cast<size_t>(kThreads) * kIters;
  Check(t.events.size() == kHeaderEvents + 2 * tensors + 2 * pairs + instants + cycles,
        "threads: event count " + std::to_string(t.events.size()));
  Check(t.Count("B") == pairs && t.Count("E") == pairs, "threads: B and E counts");
  Check(t.Count("B", "ALLREDUCE") == pairs / 2, "threads: activity names");
  Check(t.Count("i", "CYCLE") == cycles, "threads: cycle marks");
  Check(t.thread_names.size() == tensors + 1, "threads: one row per tensor plus the engine row");
  Check(t.process_name == "fusecomm rank 3", "threads: process name '" + t.process_name + "'");
  std::string why;
  Check(Balanced(t, &why), "threads: balanced: " + why);
  bool pids = true;
  for (const auto& e : t.events) pids = pids && e.GetNumber("pid") == 3;
  Check(pids, "threads: every event has pid = rank");
  // args survive.
  bool found_args = false;
  for (const auto& e : t.events) {
    const Json* args = e.Get("args");
    if (e.GetString("ph") == "B" && args != nullptr && args->GetNumber("bytes") == 399) {
      found_args = true;
    }
  }
  Check(found_args, "threads: args object passed through");
  std::remove(path.c_str());
}

void TestEscaping() {
  const std::string path = TempPath("escape");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"quote\"d", "quote\"d"},
      {"back\\slash", "back\\slash"},
      {"new\nline\ttab\rcr", "new\nline\ttab\rcr"},
      {std::string("ctl\x01\x1f\x7f", 6), std::string("ctl\x01\x1f\x7f", 6)},
      {std::string("nul\0byte", 8), std::string("nul\0byte", 8)},
      {"utf8 \xc3\xbc \xe2\x82\xac \xf0\x9f\x98\x80", "utf8 \xc3\xbc \xe2\x82\xac \xf0\x9f\x98\x80"},
      {"bad \xff byte", "bad \xef\xbf\xbd byte"},
      {"cut \xe2\x82", "cut \xef\xbf\xbd\xef\xbf\xbd"},
      {"overlong \xc0\xaf", "overlong \xef\xbf\xbd\xef\xbf\xbd"},
      {"surrogate \xed\xa0\x80", "surrogate \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
      {"</script>{}[],:", "</script>{}[],:"},
      {"", ""},
  };
  {
    Timeline tl;
    tl.Start(path, false, 0);
    for (const auto& c : cases) {
      tl.ActivityStart(c.first, c.first);
      tl.ActivityEnd(c.first);
    }
    tl.Instant("plain text args", "not json \"x\"");
    tl.Instant("object args", "  {\"k\": [1, 2]}  ");
    tl.MarkCycle();  // mark_cycles is off: nothing
    tl.Stop();
  }
  Trace t = LoadTrace(path);
  Check(t.ok, "escape: parses: " + t.error);
  for (const auto& c : cases) {
    const int tid = t.TidOf(c.second);
    Check(tid > 0, "escape: row name round-trips: " + c.second);
    bool named = false;
    for (const auto& e : t.events) {
      if (e.GetString("ph") == "B" && e.GetNumber("tid") == tid && e.GetString("name") == c.second) {
        named = true;
      }
    }
    Check(named, "escape: activity name round-trips: " + c.second);
  }
  Check(t.Count("i", "CYCLE") == 0, "escape: no cycle marks without mark_cycles");
  bool wrapped = false, object = false;
  for (const auto& e : t.events) {
    const Json* args = e.Get("args");
    if (args == nullptr) continue;
    if (e.GetString("name") == "plain text args") wrapped = args->GetString("value") == "not json \"x\"";
    if (e.GetString("name") == "object args") object = args->Get("k") != nullptr;
  }
  Check(wrapped, "escape: non-object args wrapped as {\"value\": ...}");
  Check(object, "escape: object args kept");

  std::string out;
  Timeline::AppendJsonEscaped(&out, std::string("a\"b\\c\n\x02", 7));
  Check(out == "a\\\"b\\\\c\\n\\u0002", "escape: AppendJsonEscaped: " + out);
  std::remove(path.c_str());
}

void TestUnbalancedAndRestart() {
  const std::string p1 = TempPath("r1");
  const std::string p2 = TempPath("r2");
  const std::string p3 = TempPath("r3");
  Timeline tl;
  tl.Start(p1, true, 1);
  tl.ActivityEnd("never begun");        // dropped
  tl.ActivityStart("open", "QUEUE");     // closed at Stop
  tl.ActivityStart("open", "NESTED");    // closed at Stop
  tl.ActivityStart("closed", "A");
  tl.ActivityEnd("closed");
  tl.ActivityEnd("closed");              // unmatched: dropped
  tl.Start(p2, false, 2);                // restart while running: p1 completed
  tl.ActivityStart("second", "B");
  tl.ActivityEnd("second");
  tl.Stop();
  tl.Stop();                             // idempotent
  tl.Start(p3, true, 5);
  tl.MarkCycle();
  tl.Stop();

  Trace t1 = LoadTrace(p1);
  Check(t1.ok, "restart: first file parses: " + t1.error);
  std::string why;
  Check(Balanced(t1, &why), "restart: first file balanced: " + why);
  Check(t1.Count("B") == 3 && t1.Count("E") == 3, "restart: open activities closed at stop");
  Check(t1.TidOf("never begun") == -1, "restart: unmatched end creates no row");
  size_t closed = 0;
  for (const auto& e : t1.events) {
    const Json* args = e.Get("args");
    if (args != nullptr && args->Get("closed_at_stop") != nullptr) ++closed;
  }
  Check(closed == 2, "restart: two activities closed at stop");
  Trace t2 = LoadTrace(p2);
  Check(t2.ok, "restart: second file parses: " + t2.error);
  Check(t2.process_name == "fusecomm rank 2", "restart: rank of the second run");
  Check(t2.TidOf("open") == -1 && t2.TidOf("second") == 1, "restart: rows start afresh");
  Check(t2.events.size() == kHeaderEvents + 2 + 2, "restart: second file event count");
  Trace t3 = LoadTrace(p3);
  Check(t3.ok && t3.Count("i", "CYCLE") == 1, "restart: third file has its cycle mark");
  std::remove(p1.c_str());
  std::remove(p2.c_str());
  std::remove(p3.c_str());
}

void TestDestructorWithoutStop() {
  const std::string path = TempPath("dtor");
  {
    auto tl = std::make_unique<Timeline>();
    tl->Start(path, true, 0);
    for (int i = 0; i < 1000; ++i) {
      tl->ActivityStart("t" + std::to_string(i % 7), "WORK");
      if (i % 2 == 0) tl->ActivityEnd("t" + std::to_string(i % 7));
    }
  }  // destroyed while running
  Trace t = LoadTrace(path);
  Check(t.ok, "dtor: parses: " + t.error);
  std::string why;
  Check(Balanced(t, &why), "dtor: balanced: " + why);
  Check(t.Count("B") == 1000 && t.Count("E") == 1000, "dtor: every begin closed");
  // A timeline never started takes activities without recording them, and its destruction
  // writes nothing (the last file stays byte for byte as it was).
  const std::string before = ReadFile(path);
  bool idle_active = true;
  {
    Timeline idle;
    idle.ActivityStart("t0", "WORK");
    idle.ActivityEnd("t0");
    idle_active = idle.active();
  }
  Check(!idle_active, "dtor: a timeline never started is not active");
  Check(ReadFile(path) == before && !before.empty(), "dtor: idle timeline writes nothing");
  std::remove(path.c_str());
}

void TestOpenFailure() {
  Timeline tl;
  const std::string bad = "/nonexistent-dir-fusecomm/sub/trace.json";
  bool threw = false;
  try {
    tl.Start(bad, false, 0);
  } catch (const InvalidArgument& e) {
    const std::string what = e.what();
    threw = what.find(bad) != std::string::npos && what.find("timeline") != std::string::npos;
    if (!threw) std::printf("message: %s\n", e.what());
  }
  Check(threw, "open failure: InvalidArgument naming the path");
  Check(!tl.active(), "open failure: stays inactive");
  tl.ActivityStart("x", "y");
  tl.Stop();
  threw = false;
  try {
    tl.Start("", false, 0);
  } catch (const InvalidArgument&) {
    threw = true;
  }
  Check(threw, "open failure: empty path");
  // A directory as the path.
  threw = false;
  try {
    tl.Start("/tmp", false, 0);
  } catch (const InvalidArgument&) {
    threw = true;
  }
  Check(threw, "open failure: a directory");
  // And it still works afterwards.
  const std::string path = TempPath("afterfail");
  tl.Start(path, false, 0);
  tl.Instant("ok");
  tl.Stop();
  Check(LoadTrace(path).ok, "open failure: usable after a failed Start");
  std::remove(path.c_str());
}

void TestPeriodicFlush() {
  const std::string path = TempPath("flush");
  Timeline tl;
  tl.Start(path, false, 0);
  tl.ActivityStart("flushed", "X");
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  tl.Instant("wake");  // the flush happens on a writer pass after the interval
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string mid = ReadFile(path);
  Check(mid.find("\"flushed\"") != std::string::npos, "flush: events reach the file while running");
  tl.Stop();
  Check(LoadTrace(path).ok, "flush: valid after stop");
  std::remove(path.c_str());
}

void TestConcurrentStartStop() {
  // Producers keep writing while the main thread restarts the timeline over and over: every
  // file must be valid and balanced, and nothing may crash or deadlock.
  Timeline tl;
  std::atomic<bool> done{false};
  std::vector<std::thread> producers;
  for (int t = 0; t < 4; ++t) {
    producers.emplace_back([&, t] {
      uint64_t i = 0;
      while (!done.load()) {
        const std::string name = "p" + std::to_string(t) + "." + std::to_string(i++ % 3);
        tl.ActivityStart(name, "RUN");
        tl.ActivityEnd(name);
        tl.MarkCycle();
      }
    });
  }
  std::vector<std::string> paths;
  for (int k = 0; k < 20; ++k) {
    paths.push_back(TempPath("cycle" + std::to_string(k)));
    tl.Start(paths.back(), k % 2 == 0, k);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (k % 3 == 0) tl.Stop();
  }
  done.store(true);
  for (auto& p : producers) p.join();
  tl.Stop();
  bool all_ok = true;
  size_t events = 0;
  for (const auto& p : paths) {
    Trace t = LoadTrace(p);
    std::string why;
    if (!t.ok || !Balanced(t, &why)) {
      all_ok = false;
      std::printf("  %s: %s %s\n", p.c_str(), t.error.c_str(), why.c_str());
    }
    events += t.events.size();
    std::remove(p.c_str());
  }
  Check(all_ok, "start/stop under load: every file valid and balanced");
  Check(events > 20 * kHeaderEvents, "start/stop under load: events were recorded");
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kTimed = false;  // sanitizers slow every call down: report, do not judge
#else
constexpr bool kTimed = true;
#endif

void TestHotPathCost() {
  const std::string path = TempPath("cost");
  Timeline tl;
  tl.Start(path, true, 0);
  constexpr int kN = 200000;
  const std::string name = "model/layer12/weight_grad";
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kN; ++i) {
    tl.ActivityStart(name, "ALLREDUCE");
    tl.ActivityEnd(name);
  }
  const auto t1 = std::chrono::steady_clock::now();
  tl.Stop();
  const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count() / (2.0 * kN);
  std::printf("hot path: %.0f ns per event (queue append)\n", ns);
  Check(!kTimed || ns < 20000, "hot path: an event costs well under 20 us");
  Check(LoadTrace(path).events.size() == kHeaderEvents + 2 + 2 * kN, "hot path: all events written");
  Timeline off;
  const auto t2 = std::chrono::steady_clock::now();
  for (int i = 0; i < kN; ++i) off.ActivityStart(name, "ALLREDUCE");
  const auto t3 = std::chrono::steady_clock::now();
  const double off_ns = std::chrono::duration<double, std::nano>(t3 - t2).count() / kN;
  std::printf("inactive: %.1f ns per call\n", off_ns);
  Check(!kTimed || off_ns < 1000, "inactive: a call is nearly free");
  std::remove(path.c_str());
}

}  // namespace

int main() {
  TestThreadsAndCounts();
  TestEscaping();
  TestUnbalancedAndRestart();
  TestDestructorWithoutStop();
  TestOpenFailure();
  TestPeriodicFlush();
  TestConcurrentStartStop();
  TestHotPathCost();
  return fusecomm_test::Summary("");
}

#include "common/logging.h"

#include <atomic>
#include <cstdio>

#include "common/errors.h"

namespace fusecomm {

namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kWarning)};
std::atomic<int> g_rank{-1};
const char* kNames[] = {"TRACE", "DEBUG", "INFO", "WARNING", "ERROR"};
}  // namespace

void SetLogLevel(const std::string& level) {
  for (int i = 0; i < 5; ++i) {
    std::string name = kNames[i];
    std::string lower;
    for (char ch : name) lower += static_cast<char>(ch - 'A' + 'a');
    if (level == lower || level == name) {
      g_level = i;
      return;
    }
  }
  throw InvalidArgument("FUSECOMM_LOG_LEVEL='" + level +
                        "': expected trace, debug, info, warning or error");
}

void SetLogRank(int rank) { g_rank = rank; }

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_level.load(); }

void LogLine(LogLevel level, const std::string& message) {
  // One fprintf per line so lines from the engine thread and the caller do not interleave.
  std::fprintf(stderr, "[fusecomm %d %s] %s\n", g_rank.load(), kNames[static_cast<int>(level)],
               message.c_str());
  std::fflush(stderr);
}

}  // namespace fusecomm

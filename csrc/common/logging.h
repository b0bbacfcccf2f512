// One line per event on stderr, prefixed with the rank: "[fusecomm 3 WARNING] ...".
#pragma once

#include <sstream>
#include <string>

namespace fusecomm {

enum class LogLevel { kTrace = 0, kDebug = 1, kInfo = 2, kWarning = 3, kError = 4 };

void SetLogLevel(const std::string& level);  // trace|debug|info|warning|error
void SetLogRank(int rank);
bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, const std::string& message);

}  // namespace fusecomm

#define FUSECOMM_LOG(level, expr)                                     \
  do {                                                                \
    if (::fusecomm::LogEnabled(::fusecomm::LogLevel::level)) {        \
      std::ostringstream fusecomm_log_stream;                         \
      fusecomm_log_stream << expr;                                    \
      ::fusecomm::LogLine(::fusecomm::LogLevel::level, fusecomm_log_stream.str()); \
    }                                                                 \
  } while (0)

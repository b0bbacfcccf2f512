// Pass/fail counting shared by the C++ tests: a failed check prints what failed, and the test's
// exit status (Summary) says whether any did.
#pragma once

#include <cstdio>
#include <string>

namespace fusecomm_test {

inline int g_passed = 0;
inline int g_failed = 0;

inline void Check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL: %s\n", what.c_str());
    std::fflush(stdout);
  }
}

// Prints "<label>N passed, M failed" and returns the process exit status.
inline int Summary(const char* label = "") {
  std::printf("%s%d passed, %d failed\n", label, g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}

}  // namespace fusecomm_test

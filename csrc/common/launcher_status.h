// What `fusecomm run` knows about the job, for a rank that cannot learn it through MPI: a rank
// waiting in MPI start-up for a peer that already failed has no other way to name it.
#pragma once

#include <string>

namespace fusecomm {

// The launcher's account of the first rank that failed ("rank 2 exited with code 1"), or ""
// when none has, when not run by `fusecomm run`, or when the launcher does not answer within
// about a second. Asks the launcher's status service named by FUSECOMM_RUN_STATUS
// (host:port:token, set by fusecomm/runner/launch.py).
std::string LauncherReportedFailure();

// Whether FUSECOMM_RUN_STATUS names a status service to ask.
bool LauncherStatusAvailable();

}  // namespace fusecomm

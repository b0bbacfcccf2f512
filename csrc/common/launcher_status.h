// What `fusecomm run` knows about the job, for a rank that cannot learn it through MPI: a rank
// waiting in MPI start-up for a peer that already failed has no other way to name it.
#pragma once

#include <string>

namespace fusecomm {

// FUSECOMM_RUN_STATUS (host:port:token, set by fusecomm/runner/launch.py), or "" when not run
// by `fusecomm run`. Read it before starting threads that need it: MPI_Init sets variables, and
// reading the environment while another thread writes it is not safe.
std::string LauncherStatusAddress();

// The launcher's account of the first rank that failed ("rank 2 exited with code 1"), or ""
// when none has, when `address` is empty, or when the launcher does not answer within about a
// second.
std::string LauncherReportedFailure(const std::string& address);

}  // namespace fusecomm

// Waiting on MPI requests without ever blocking inside MPI: every wait polls, so a wait can give
// up when the liveness monitor declares a peer dead (a blocking MPI call would hang forever).
#pragma once

#include <mpi.h>

#include <string>

namespace fusecomm {

// Completes `count` requests, spinning briefly and then sleeping in growing steps up to
// `max_sleep_us`. Throws CollectiveError when MPI fails or the transport has been aborted.
void WaitPolling(MPI_Request* requests, int count, const char* call, int max_sleep_us = 50);

// Marks the transport unusable (a peer died): every current and later wait throws `reason`.
void AbortTransport(const std::string& reason);
bool TransportAborted();
std::string TransportAbortReason();

}  // namespace fusecomm

// Waiting on MPI requests without ever blocking inside MPI: every wait polls, so a wait can give
// up when the liveness monitor declares a peer dead (a blocking MPI call would hang forever).
#pragma once

#include <mpi.h>

#include <string>

#include "transport/abort.h"

namespace fusecomm {

// A data-plane wait: tests without sleeping (yielding the core between tests), since a
// non-blocking collective advances only while tested; bounded by this thread's BoundDataWaits. On a timeout or
// an MPI error it aborts the transport first (the peers' messages of this collective can no
// longer be matched safely) and throws a CollectiveError that starts with `what`.
void WaitData(MPI_Request* requests, int count, const std::string& what);

}  // namespace fusecomm

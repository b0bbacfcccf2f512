// MPI start-up and the communicators of a process set: a control channel, a data-plane comm
// and the topology sub-communicators, all built once.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "collectives/topology.h"
#include "common/config.h"
#include "engine/process_set_worker.h"

namespace fusecomm {

// Initializes MPI with MPI_THREAD_MULTIPLE unless someone (mpi4py) already did; in that case
// checks the thread level and leaves finalizing to the owner.
void EnsureMpiInitialized();
// Finalizes MPI at process exit if fusecomm initialized it.
void FinalizeMpiIfOwned();
std::string MpiLibraryVersion();

// The communicator for the global process set: a duplicate of `base` (MPI_COMM_WORLD, the
// caller's mpi4py communicator, or the group of `ranks` of MPI_COMM_WORLD).
MPI_Comm MakeGlobalComm(MPI_Comm base, const std::vector<int>& ranks);

// Builds a worker for the process set whose members call this with `comm` (which is duplicated,
// not taken). Collective over `comm`.
std::unique_ptr<ProcessSetWorker> MakeWorker(int id, MPI_Comm comm, const Config& config,
                                             Timeline* timeline);

}  // namespace fusecomm

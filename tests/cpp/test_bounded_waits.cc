// The data waits give up at their bound when a peer never takes part (and only then): rank 0
// waits for something no peer will do, with FUSECOMM_DATA_TIMEOUT_SECONDS's bound set for this
// thread, long enough for the wait to pass from spinning through yielding to napping
// (common/wait_backoff.h). It must throw the bound's error after at least the bound, and the
// transport must be aborted. Argument: "mpi" (MPI_Testsome in WaitData: a receive nobody sends)
// or "shm" (the shared segment's synchronization that no peer reaches). Run under mpirun.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "common/errors.h"
#include "transport/abort.h"
#include "transport/mpi/mpi_comm.h"
#include "transport/mpi/mpi_wait.h"
#include "transport/shared_segment.h"

using namespace fusecomm;

namespace {

constexpr double kBoundSeconds = 0.3;

// Runs `wait` with the bound; "" when it threw `expected` after at least the bound.
template <typename Wait>
std::string CheckBounded(Wait wait, const char* expected) {
  BoundDataWaits(kBoundSeconds);
  const auto start = std::chrono::steady_clock::now();
  std::string error;
  try {
    wait();
    return "the wait returned although no peer took part";
  } catch (const CollectiveError& e) {
    error = e.what();
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (error.find(expected) == std::string::npos) return "unexpected error: " + error;
  if (waited < kBoundSeconds) return "gave up after " + std::to_string(waited) + " s";
  if (!TransportAborted()) return "the transport was not aborted";
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const std::string kind = argc > 1 ? argv[1] : "";
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm dup;
  MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  auto comm = std::make_unique<MpiComm>(dup, true);
  if (kind == "shm") comm->AttachSharedSegment(4096);
  std::string failure;
  if (rank == 0) {
    if (kind == "mpi") {
      int value = 0;
      MPI_Request request;
      MPI_Irecv(&value, 1, MPI_INT, 1, 999, dup, &request);
      failure = CheckBounded([&] { WaitData(&request, 1, "receive from rank 1 (tag 999)"); },
                             "nothing arrived or left for 0.3 s");
      MPI_Cancel(&request);
      MPI_Wait(&request, MPI_STATUS_IGNORE);
    } else if (kind == "shm") {
      failure = CheckBounded([&] { comm->shared_segment()->Synchronize("test synchronization"); },
                             "did not reach phase");
    } else {
      failure = "usage: test_bounded_waits mpi|shm";
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    if (failure.empty()) {
      std::printf("%s: the wait gave up at its bound\n", kind.c_str());
    } else {
      std::printf("%s: FAILED: %s\n", kind.c_str(), failure.c_str());
    }
  }
  MPI_Finalize();
  return failure.empty() ? 0 : 1;
}

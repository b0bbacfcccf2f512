// What the engine needs from a transport to start: the ranks of a process set, their
// communicators (control and data), which node each rank is on, a heartbeat, and a bound on
// start-up waits. The MPI transport implements it (transport/mpi/mpi_context.h); the engine
// builds process sets from it (engine/bootstrap.h) without knowing which transport it is.
#pragma once

#include <memory>
#include <vector>

#include "transport/comm.h"
#include "transport/control_channel.h"

namespace fusecomm {

// Bounds start-up while it lives: start-up waits inside the transport, where no error can
// reach them, for ranks that may never come. Destroying it disarms it.
class StartupWatch {
 public:
  virtual ~StartupWatch() = default;
  // The heartbeat runs: from now on a dead peer is named by it (and aborts the transport).
  virtual void HeartbeatStarted() = 0;
};

// A heartbeat among the ranks of a group (see transport/mpi/liveness.h).
class Liveness {
 public:
  virtual ~Liveness() = default;
  // Tells the peers this rank leaves on purpose, then stops.
  virtual void Stop() = 0;
  // Stops without the goodbye, so that peers take this rank's silence for a failure.
  virtual void StopSilently() = 0;
};

// The ranks of one process set on the transport. Every call but rank()/size() is collective
// over the group: every member makes the same calls in the same order.
class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Communicators of their own, so that negotiation, payloads and heartbeats never mix.
  virtual std::unique_ptr<ControlChannel> NewControlChannel() = 0;
  virtual std::unique_ptr<Comm> NewDataComm() = 0;
  // An id of every rank's node, the same on every rank (the node's lowest rank): nodes of
  // `local_size` consecutive ranks when local_size > 0 (FUSECOMM_LOCAL_SIZE), else the machine.
  virtual std::vector<int> NodeOfEachRank(int local_size) = 0;
  // The group of `ranks` (ranks of this group, sorted, distinct); null on the others.
  virtual std::unique_ptr<ProcessGroup> Subgroup(const std::vector<int>& ranks) = 0;
  // Starts a heartbeat among the group; timeout_seconds <= 0: none (a stopped stand-in).
  virtual std::unique_ptr<Liveness> StartLiveness(double timeout_seconds) = 0;
};

// Brings one transport up for the engine.
class Bootstrap {
 public:
  virtual ~Bootstrap() = default;
  // Armed before Start(); liveness_timeout_seconds <= 0 returns one that watches nothing.
  virtual std::unique_ptr<StartupWatch> WatchStartup(double liveness_timeout_seconds,
                                                     double init_timeout_seconds) = 0;
  // Starts the transport and returns the global process set's group. Throws InvalidArgument
  // when this rank is not one of the job's ranks, NotInitialized when the transport cannot run.
  virtual std::unique_ptr<ProcessGroup> Start() = 0;
};

}  // namespace fusecomm

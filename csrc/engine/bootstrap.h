// The engine's start-up over any transport (transport/bootstrap.h): agreeing on every rank's
// init outcome, and building a process set's worker (its topology, the cost model calibrated or
// loaded, the algorithm selector, the worker thread).
#pragma once

#include <memory>
#include <string>

#include "common/config.h"
#include "engine/process_set_worker.h"
#include "timeline/timeline.h"
#include "transport/bootstrap.h"

namespace fusecomm {

// Every rank's init outcome, agreed: `mine` is this rank's error ("" when it succeeded).
// Returns "" when every rank succeeded, else one message naming each failing rank and its
// error, the same on every rank. Collective over `channel`; its waits give up when the
// transport is aborted (a heartbeat declared a peer dead).
std::string AgreeOnInitErrors(ControlChannel& channel, const std::string& mine);

// Builds the worker of process set `id` whose members call this with `group`. Collective over
// `group`.
std::unique_ptr<ProcessSetWorker> StartProcessSet(int id, ProcessGroup& group,
                                                  const Config& config, Timeline* timeline);

}  // namespace fusecomm

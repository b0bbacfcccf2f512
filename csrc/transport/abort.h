// The process-wide "this transport is unusable" state, without MPI in the interface so that the
// engine can raise it. A failure that may leave peers inside a collective (a peer died, a data
// wait gave up, a rank failed mid-collective) aborts the transport: every current and later wait
// throws the first reason, no abandoned message can match a later receive, and the liveness
// heartbeat stops, so every peer learns of it within its liveness timeout.
#pragma once

#include <string>

namespace fusecomm {

// Marks the transport unusable: every current and later wait throws `reason` (the first
// reason given wins).
void AbortTransport(const std::string& reason);
bool TransportAborted();
std::string TransportAbortReason();

// Bounds the calling thread's data-plane waits: a wait in which nothing completes for
// `seconds` (0: unbounded) aborts the transport and throws, naming what it waited for. Only the
// engine's worker threads set it, after start-up, when every rank is known to be running (a
// start-up wait may legitimately wait for a slow rank to arrive).
void BoundDataWaits(double seconds);
// The calling thread's bound (0: unbounded), for the transports' waits.
double DataWaitBound();

}  // namespace fusecomm

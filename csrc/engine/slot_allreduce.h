// Small synchronous all-reduces completed by the negotiation itself (NegotiationSlot): a
// caller waiting on one small host all-reduce, with nothing else pending on any rank, gets its
// result from the cycle's one control all-reduce, with no data collective after it.
#pragma once

#include "engine/request.h"
#include "transport/negotiation_slot.h"

namespace fusecomm {

// Whether `request` may ride in the slot: a host all-reduce of 1..kPayloadBytes bytes that its
// caller waits for (asynchronous ones, gradients among them, keep to the fusion plan), with a
// built-in op other than Adasum and the automatic algorithm (an algorithm the caller named is
// run as named).
bool RidesInSlot(const Request& request);

// Puts the request's prescaled input in `slot` under its cache `position`.
void OfferInSlot(const Request& request, int position, NegotiationSlot& slot);

// Writes the reduced slot to the request's output, scaled as the executor scales an
// all-reduce's result (Average over `ranks`, postscale).
void TakeFromSlot(NegotiationSlot& slot, Request& request, int ranks);

}  // namespace fusecomm

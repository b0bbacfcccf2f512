// Negotiation: decides, identically on every rank of a process set, which requests run in a
// cycle and in what order. New names go through the coordinator (rank 0), which checks that
// every rank asked for the same thing; names seen before are agreed by one bitwise-AND
// all-reduce over the response cache's positions.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "transport/control_channel.h"
#include "engine/request.h"
#include "engine/response_cache.h"

namespace fusecomm {

enum class PendingState {
  kUnreported,  // not yet known to the coordinator, not in the cache
  kReported,    // sent to the coordinator, waiting for the other ranks
  kCached,      // matches a cache entry, waiting for every rank's bit
};

struct PendingEntry {
  Request request;
  PendingState state = PendingState::kUnreported;
  uint64_t sequence = 0;  // submission order on this rank
  std::chrono::steady_clock::time_point submitted;
};

// This rank's submitted requests of one process set that have not run yet, by name.
using PendingTable = std::unordered_map<std::string, PendingEntry>;

struct CycleResult {
  std::vector<Response> responses;  // to execute now, same order on every rank
  bool shutdown = false;            // some rank asked to shut down
  int shutdown_rank = -1;           // the lowest such rank
  bool shutdown_at_exit = false;    // ... which is shutting down because its process exits
  std::string stall_error;          // non-empty: the stall inspector or deadlock detector
                                    // stopped the job
  bool all_joined = false;          // every rank has called join(): join completes
  int last_joined_rank = -1;
};

// When a request has waited this long for the other ranks, rank 0 reports which ranks are
// missing which tensors; after `shutdown_seconds` (0: never) every rank fails with that report.
// `deadlock_seconds` is the quiet time each rank waited before it called itself blocked (for
// the deadlock message; the caller decides what blocked means).
struct StallSettings {
  double warning_seconds = 60.0;
  double shutdown_seconds = 0.0;
  double deadlock_seconds = 0.0;
};

class Controller {
 public:
  Controller(std::unique_ptr<ControlChannel> channel, size_t cache_capacity,
             StallSettings stall = {});

  int rank() const { return channel_->rank(); }
  int size() const { return channel_->size(); }
  // shutdown_requested: 0 no, 1 shutdown() called, 2 the process is exiting. blocked: this
  // rank can do nothing but wait for its pending requests (see ProcessSetWorker::Blocked);
  // when every rank is, the pending requests can never complete and every rank fails.
  CycleResult RunCycle(PendingTable& pending, int shutdown_requested, bool blocked = false);
  // This rank has run out of work (Horovod's join): until every rank has joined, it takes part
  // in whatever the others run, contributing nothing (zeros, or no rows).
  void Join();
  bool joined() const { return joined_; }

 private:
  // Coordinator side: record what each rank reported; return the names now complete.
  std::vector<Response> CollectReports(const std::vector<std::vector<char>>& reports);
  Response Validate(const std::vector<TensorSpec>& per_rank,
                    const std::vector<bool>& reported) const;
  // Which flags this rank raises for requests that have waited too long.
  uint64_t StallFlags(const PendingTable& pending);
  // Collective: rank 0 gathers every rank's waiting names; every rank returns
  // "; 'x' submitted by rank 0, missing on rank 1" for each name some rank lacks.
  std::string WhoLacksWhat(const PendingTable& pending);
  // Called from inside a control collective that has waited past the stall warning time.
  void WarnSlowNegotiation(double waited, const std::string& suspects);

  std::unique_ptr<ControlChannel> channel_;
  ResponseCache cache_;
  StallSettings stall_;
  std::chrono::steady_clock::time_point last_stall_warning_;
  const PendingTable* negotiating_ = nullptr;  // the table of the cycle in progress
  // Coordinator only: name -> spec reported by each rank (unset until reported).
  struct Waiting {
    std::vector<TensorSpec> per_rank;
    std::vector<bool> reported;
    int count = 0;
  };
  std::map<std::string, Waiting> waiting_;
  // Join state. Cycles are one agreed all-reduce each, so the counter is the same everywhere.
  uint64_t cycle_ = 0;
  bool joined_ = false;
  bool join_reported_ = false;
  uint64_t join_cycle_ = 0;
  std::vector<bool> rank_joined_;  // coordinator only
};

}  // namespace fusecomm

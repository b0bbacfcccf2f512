#include "engine/controller.h"

#include <algorithm>
#include <climits>
#include <optional>
#include <sstream>

#include "common/errors.h"
#include "common/logging.h"
#include "engine/rank_text.h"
#include "engine/slot_allreduce.h"
#include "engine/wire.h"

namespace fusecomm {

namespace {

constexpr uint64_t kFlagUnreported = 1;  // some rank has requests the coordinator has not seen
constexpr uint64_t kFlagShutdown = 2;    // some rank asked to shut down
constexpr uint64_t kFlagStallWarning = 4;   // some request waited past the warning time
constexpr uint64_t kFlagStallShutdown = 8;  // ... past the shutdown time
constexpr uint64_t kFlagNotJoined = 16;      // some rank has not called join()
constexpr uint64_t kFlagPending = 32;        // some rank has requests that have not run yet
constexpr uint64_t kFlagNotBlocked = 64;     // some rank is not stuck waiting (deadlock detector)
// The coordinator learns that a rank joined from this marker in its report.
const char* const kJoinMarker = "\x01join";

void SetBit(std::vector<uint64_t>& words, size_t offset, size_t bit) {
  words[offset + bit / 64] |= uint64_t{1} << (bit % 64);
}
void ClearBit(std::vector<uint64_t>& words, size_t offset, size_t bit) {
  words[offset + bit / 64] &= ~(uint64_t{1} << (bit % 64));
}
bool TestBit(const std::vector<uint64_t>& words, size_t offset, size_t bit) {
  return (words[offset + bit / 64] >> (bit % 64)) & 1;
}

std::string DeviceString(int32_t device) {
  return device < 0 ? std::string("cpu") : "cuda:" + std::to_string(device);
}

// The value of the field two specs disagree on, as a person reads it.
std::string FieldValue(const TensorSpec& s, const std::string& field) {
  std::ostringstream out;
  if (field == "operations") out << OpTypeName(s.op_type);
  else if (field == "data types") out << DataTypeName(s.dtype);
  else if (field == "devices") out << DeviceString(s.device);
  else if (field == "reduce ops") out << ReduceOpName(s.reduce_op);
  else if (field == "scale factors") out << "prescale " << s.prescale << ", postscale " << s.postscale;
  else if (field == "root ranks") out << s.root;
  else if (field == "algorithms") out << AllreduceAlgorithmName(s.algorithm);
  else out << ShapeString(s.shape);
  return out.str();
}

}  // namespace

Controller::Controller(std::unique_ptr<ControlChannel> channel, size_t cache_capacity,
                       StallSettings stall)
    : channel_(std::move(channel)),
      cache_(cache_capacity),
      stall_(stall),
      last_stall_warning_(std::chrono::steady_clock::now()) {
  if (stall_.warning_seconds > 0) {
    channel_->SetSlowWaitReport(stall_.warning_seconds,
                                [this](double waited, const std::string& suspects) {
                                  WarnSlowNegotiation(waited, suspects);
                                });
  }
}

void Controller::WarnSlowNegotiation(double waited, const std::string& suspects) {
  // Rank 0 speaks for the job as the stall report does; any rank that can name a silent peer
  // speaks too (rank 0 itself may be the frozen one).
  if (suspects.empty() && rank() != 0) return;
  std::ostringstream msg;
  msg << "stalled negotiation: this rank has waited " << static_cast<int>(waited)
      << " s for the other ranks' engines; ";
  if (suspects.empty()) {
    msg << "no heartbeat has stopped (unless FUSECOMM_LIVENESS_TIMEOUT_SECONDS=0 turned them "
           "off), so some rank's engine thread is busy elsewhere (a long collective in another "
           "process set?) or hung";
  } else {
    msg << suspects << ": that process is frozen (e.g. SIGSTOP), hung or dead, and submits "
           "nothing";
  }
  if (negotiating_ && !negotiating_->empty()) {
    msg << "; waiting here:";
    for (const auto& [name, entry] : *negotiating_) msg << " '" << name << "'";
  }
  FUSECOMM_LOG(kWarning, msg.str());
}

uint64_t Controller::StallFlags(const PendingTable& pending) {
  using Seconds = std::chrono::duration<double>;
  const auto now = std::chrono::steady_clock::now();
  double oldest = 0;
  for (const auto& [name, entry] : pending) {
    // A rejected request's marker waits for nobody: the peers' requests, if any, are failed as
    // soon as they come.
    if (!entry.request.spec.argument_error.empty()) continue;
    oldest = std::max(oldest, Seconds(now - entry.submitted).count());
  }
  uint64_t flags = 0;
  if (stall_.shutdown_seconds > 0 && oldest > stall_.shutdown_seconds) flags |= kFlagStallShutdown;
  if (stall_.warning_seconds > 0 && oldest > stall_.warning_seconds &&
      Seconds(now - last_stall_warning_).count() > stall_.warning_seconds) {
    flags |= kFlagStallWarning;
  }
  return flags;
}

std::string Controller::WhoLacksWhat(const PendingTable& pending) {
  std::vector<TensorSpec> mine;
  for (const auto& [name, entry] : pending) {
    if (entry.request.spec.argument_error.empty()) mine.push_back(entry.request.spec);
  }
  auto reports = channel_->GatherToRoot(EncodeSpecs(mine));
  std::vector<char> text;
  if (rank() == 0) {
    // name -> ranks that submitted it
    std::map<std::string, std::vector<int>> submitted;
    for (int r = 0; r < size(); ++r) {
      for (const TensorSpec& spec : DecodeSpecs(reports[r].data(), reports[r].size())) {
        submitted[spec.name].push_back(r);
      }
    }
    std::ostringstream msg;
    for (const auto& [name, ranks] : submitted) {
      if (static_cast<int>(ranks.size()) == size()) continue;
      std::vector<int> missing;
      for (int r = 0; r < size(); ++r) {
        if (std::find(ranks.begin(), ranks.end(), r) == ranks.end()) missing.push_back(r);
      }
      msg << "; '" << name << "' submitted by " << RankList(ranks) << ", missing on "
          << RankList(missing);
    }
    std::string s = msg.str();
    text.assign(s.begin(), s.end());
  }
  channel_->BroadcastFromRoot(text);
  return std::string(text.begin(), text.end());
}

Response Controller::Validate(const std::vector<TensorSpec>& per_rank,
                              const std::vector<bool>& reported) const {
  Response response;
  const size_t first = std::find(reported.begin(), reported.end(), true) - reported.begin();
  response.spec = per_rank[first];
  const TensorSpec& spec = response.spec;
  std::vector<std::optional<std::string>> argument_errors(per_rank.size());
  bool invalid = false;
  for (size_t r = first; r < per_rank.size(); ++r) {
    if (!reported[r] || per_rank[r].argument_error.empty()) continue;
    argument_errors[r] = per_rank[r].argument_error;
    invalid = true;
  }
  if (invalid) {
    response.error = std::string(OpTypeName(spec.op_type)) + " of '" + spec.name +
                     "' was rejected: " + DescribeValuesByRank(argument_errors, " raised: ");
    // A rejected request's shape may be anything: keep a joined rank's stand-in small.
    response.spec.shape.clear();
    response.spec.argument_error.clear();
    return response;
  }
  if (spec.op_type == OpType::kBroadcast && !reported[spec.root]) {
    response.error = "broadcast of '" + spec.name + "' cannot run: its root rank " +
                     std::to_string(spec.root) + " has already called join()";
    return response;
  }
  std::string field;
  for (size_t r = first + 1; r < per_rank.size(); ++r) {
    if (!reported[r] || SpecsAgree(spec, per_rank[r], &field)) continue;
    std::vector<std::optional<std::string>> sent(per_rank.size());
    for (size_t q = 0; q < per_rank.size(); ++q) {
      if (reported[q]) sent[q] = FieldValue(per_rank[q], field);
    }
    std::ostringstream msg;
    // `spec`, not per_rank[0]: rank 0 may have joined and reported nothing.
    msg << "Mismatched " << OpTypeName(spec.op_type) << " " << field << " for tensor '"
        << spec.name << "': " << DescribeValuesByRank(sent, " sent ");
    response.error = msg.str();
    return response;
  }
  return response;
}

std::vector<Response> Controller::CollectReports(const std::vector<std::vector<char>>& reports) {
  std::vector<Response> complete;
  const int n = size();
  if (rank_joined_.empty()) rank_joined_.assign(n, false);
  auto ready = [&](const Waiting& w) {
    for (int q = 0; q < n; ++q) {
      if (!w.reported[q] && !rank_joined_[q]) return false;
    }
    return true;
  };
  bool someone_joined = false;
  for (int r = 0; r < n; ++r) {
    for (TensorSpec& spec : DecodeSpecs(reports[r].data(), reports[r].size())) {
      if (spec.name == kJoinMarker) {
        rank_joined_[r] = true;
        someone_joined = true;
        continue;
      }
      Waiting& w = waiting_[spec.name];
      if (w.per_rank.empty()) {
        w.per_rank.resize(n);
        w.reported.assign(n, false);
      }
      std::string name = spec.name;
      w.per_rank[r] = std::move(spec);
      if (!w.reported[r]) {
        w.reported[r] = true;
        ++w.count;
      }
      if (ready(w)) {
        complete.push_back(Validate(w.per_rank, w.reported));
        waiting_.erase(name);
      }
    }
  }
  if (someone_joined) {
    // Names that waited only for the ranks that have now joined are complete too.
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if (ready(it->second)) {
        complete.push_back(Validate(it->second.per_rank, it->second.reported));
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    }
  }
  return complete;
}

void Controller::Join() {
  if (joined_) return;
  joined_ = true;
  join_reported_ = false;
  join_cycle_ = cycle_;
}

CycleResult Controller::RunCycle(PendingTable& pending, int shutdown_requested, bool blocked) {
  const size_t positions = cache_.num_positions();
  const size_t words = (positions + 63) / 64;
  const size_t ready_at = 1, invalid_at = 1 + words;
  // Layout: [inverted flags][ready bits][inverted invalid bits]. Inverting turns the AND into
  // an OR for flags and invalid marks, so one all-reduce carries all three.
  std::vector<uint64_t> bits(1 + 2 * words, 0);
  std::fill(bits.begin() + invalid_at, bits.end(), ~uint64_t{0});
  negotiating_ = &pending;
  uint64_t flags = (shutdown_requested ? kFlagShutdown : 0) | StallFlags(pending) |
                   (blocked ? 0 : kFlagNotBlocked);
  if (!pending.empty()) flags |= kFlagPending;
  ++cycle_;
  if (joined_) {
    // A joined rank would run anything: it marks every cached position ready, and reports its
    // join to the coordinator once.
    for (size_t p = 0; p < positions; ++p) SetBit(bits, ready_at, p);
    if (!join_reported_) flags |= kFlagUnreported;
  } else {
    flags |= kFlagNotJoined;
  }

  NegotiationSlot slot;
  PendingEntry* offered = nullptr;  // this rank's request in the slot
  for (auto& [name, entry] : pending) {
    if (entry.state == PendingState::kReported) continue;
    int position = cache_.Find(name);
    if (position >= 0 && SpecsAgree(cache_.At(position).spec, entry.request.spec)) {
      entry.state = PendingState::kCached;
      SetBit(bits, ready_at, position);
      // Alone in the table: if every rank's table holds just this, the slot reduces it.
      if (pending.size() == 1 && !joined_ && RidesInSlot(entry.request)) {
        OfferInSlot(entry.request, position, slot);
        offered = &entry;
      }
    } else {
      // A changed spec under a cached name: every rank drops the entry and renegotiates.
      if (position >= 0) ClearBit(bits, invalid_at, position);
      entry.state = PendingState::kUnreported;
      flags |= kFlagUnreported;
    }
  }
  bits[0] = ~flags;
  channel_->AllreduceNegotiation(bits, slot);
  const uint64_t any_flags = ~bits[0];

  CycleResult result;
  // Every rank has joined, but some still hold requests submitted before their join() (an
  // allreduce_async just before join()): those run first, or join() would return and leave
  // them stranded. They go through the coordinator, which completes a name once every rank
  // that has not reported it has joined; the cache's ready bits cannot decide here, since
  // joined ranks mark every position ready.
  const bool draining = !(any_flags & kFlagNotJoined) && (any_flags & kFlagPending);
  if (!(any_flags & kFlagNotJoined) && !draining) {
    // Everyone has joined and nothing is left to run. The last to join is the latest cycle's
    // highest rank (AllreduceMin of the negated key).
    int64_t key = static_cast<int64_t>(join_cycle_) * size() + rank();
    int64_t last = -channel_->AllreduceMin(-key);
    result.all_joined = true;
    result.last_joined_rank = static_cast<int>(last % size());
    joined_ = join_reported_ = false;
    std::fill(rank_joined_.begin(), rank_joined_.end(), false);
    return result;
  }
  for (size_t p = 0; p < positions; ++p) {
    bool invalid = !TestBit(bits, invalid_at, p);
    if (invalid) {
      cache_.Erase(static_cast<int>(p));
    } else if (!draining && TestBit(bits, ready_at, p)) {
      cache_.Touch(static_cast<int>(p));
      result.responses.push_back(cache_.At(static_cast<int>(p)));
    }
  }
  if (any_flags & kFlagShutdown) {
    result.shutdown = true;
    // The lowest rank that asked, and why (low bit: its process is exiting).
    int64_t code = channel_->AllreduceMin(
        shutdown_requested ? 2 * int64_t{rank()} + (shutdown_requested == 2) : INT64_MAX);
    result.shutdown_rank = static_cast<int>(code / 2);
    result.shutdown_at_exit = code % 2;
    result.responses.clear();
    return result;
  }
  if (!(any_flags & (kFlagNotBlocked | kFlagUnreported)) && result.responses.empty() &&
      !draining) {  // a draining cycle completes what is left through the coordinator
    // Every rank waits on collectives some other rank lacks, and none can submit more: a
    // proven deadlock. Each rank's quiet time was checked before it called itself blocked.
    std::ostringstream msg;
    msg << "deadlock: every rank is waiting for collectives "
        << "that other ranks have not submitted, and none has submitted anything for "
        << stall_.deadlock_seconds << " s (FUSECOMM_DEADLOCK_SECONDS)" << WhoLacksWhat(pending);
    result.stall_error = msg.str();
    return result;
  }
  if (any_flags & (kFlagStallWarning | kFlagStallShutdown)) {
    std::string report = "stalled collectives: some ranks submitted tensors that other ranks "
                         "did not submit" + WhoLacksWhat(pending);
    last_stall_warning_ = std::chrono::steady_clock::now();
    if (any_flags & kFlagStallShutdown) {
      std::ostringstream limit;
      limit << " (stopped after FUSECOMM_STALL_SHUTDOWN_SECONDS=" << stall_.shutdown_seconds << ")";
      result.stall_error = report + limit.str();
      result.responses.clear();
      return result;
    }
    if (rank() == 0) FUSECOMM_LOG(kWarning, report);
  }
  if ((any_flags & kFlagUnreported) || draining) {
    std::vector<std::pair<uint64_t, TensorSpec>> fresh;
    for (auto& [name, entry] : pending) {
      if (entry.state == PendingState::kUnreported ||
          (draining && entry.state == PendingState::kCached)) {
        fresh.emplace_back(entry.sequence, entry.request.spec);
        entry.state = PendingState::kReported;
      }
    }
    // Report in submission order so the coordinator completes names in a natural order.
    std::sort(fresh.begin(), fresh.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<TensorSpec> specs;
    for (auto& f : fresh) specs.push_back(std::move(f.second));
    if (joined_ && !join_reported_) {
      TensorSpec marker;
      marker.name = kJoinMarker;
      marker.op_type = OpType::kBarrier;
      specs.push_back(marker);
      join_reported_ = true;
    }
    auto reports = channel_->GatherToRoot(EncodeSpecs(specs));
    std::vector<char> encoded;
    if (rank() == 0) encoded = EncodeResponses(CollectReports(reports));
    channel_->BroadcastFromRoot(encoded);
    for (Response& response : DecodeResponses(encoded.data(), encoded.size())) {
      FUSECOMM_LOG(kDebug, "negotiated " << OpTypeName(response.spec.op_type) << " '"
                                         << response.spec.name << "'"
                                         << (response.error.empty() ? "" : ": " + response.error));
      if (response.error.empty()) cache_.Put(response);
      result.responses.push_back(std::move(response));
    }
  }
  if (slot.header != 0 && offered) {
    // Every rank offered the same cached request, and it was all any rank had pending: it is
    // the one response, and the slot holds its reduction.
    if (result.responses.size() != 1 || result.responses[0].spec.name != offered->request.spec.name) {
      throw CollectiveError("internal error: the negotiation slot's tensor '" +
                            offered->request.spec.name + "' is not the cycle's one response");
    }
    TakeFromSlot(slot, offered->request, size());
    result.responses[0].reduced_in_negotiation = true;
  }
  return result;
}

}  // namespace fusecomm

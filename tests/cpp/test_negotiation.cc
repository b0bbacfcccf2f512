// The engine's negotiation without any transport: the controller (all ranks ready -> one
// response, mismatches, join), the response cache (hits, eviction, invalidation) and the fusion
// planner, with N simulated ranks as threads over an in-process ControlChannel. Every rank runs
// the same number of cycles (as every worker thread does), each a scripted step: what it
// submits or whether it joins before that cycle. Built without MPI (tests/test_cpp.py), which
// also shows that negotiation needs nothing from a transport but a ControlChannel.
//
// Build: c++ -std=c++17 -O2 -pthread -Icsrc csrc/common/*.cc csrc/engine/{controller,
//          response_cache,wire,rank_text,request,fusion_planner}.cc tests/cpp/test_negotiation.cc
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/controller.h"
#include "engine/fusion_planner.h"
#include "engine/response_cache.h"
#include "engine/slot_allreduce.h"
#include "transport/control_channel.h"
#include "test_check.h"

using namespace fusecomm;

namespace {

using fusecomm_test::Check;

// The ranks' meeting point: every collective is one exchange in which each rank hands in its
// bytes and gets every rank's back. A rank that waits more than kTimeout for the others, or
// calls a different collective than they do, throws (a bug in the controller fails the test
// instead of hanging it).
class Hub {
 public:
  static constexpr std::chrono::seconds kTimeout{30};

  explicit Hub(int ranks) : slots_(ranks) {}
  int size() const { return static_cast<int>(slots_.size()); }

  std::vector<std::vector<char>> Exchange(int rank, const std::string& kind,
                                          std::vector<char> mine) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!error_.empty()) throw std::runtime_error(error_);
    const uint64_t round = round_;
    if (arrived_ == 0) {
      kind_ = kind;
    } else if (kind_ != kind) {
      error_ = "rank " + std::to_string(rank) + " called " + kind + " while others called " +
               kind_;
      wake_.notify_all();
      throw std::runtime_error(error_);
    }
    slots_[rank] = std::move(mine);
    if (++arrived_ == size()) {
      result_ = slots_;
      arrived_ = 0;
      ++round_;
      wake_.notify_all();
      return result_;
    }
    if (!wake_.wait_for(lock, kTimeout, [&] { return round_ != round || !error_.empty(); })) {
      error_ = "rank " + std::to_string(rank) + " waited " + std::to_string(kTimeout.count()) +
               " s in " + kind + " for the other ranks";
      wake_.notify_all();
    }
    if (round_ == round) throw std::runtime_error(error_);
    return result_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::vector<char>> slots_;
  std::vector<std::vector<char>> result_;
  std::string kind_;
  std::string error_;
  int arrived_ = 0;
  uint64_t round_ = 0;
};

class FakeControlChannel : public ControlChannel {
 public:
  FakeControlChannel(Hub& hub, int rank) : hub_(hub), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return hub_.size(); }

  void AllreduceNegotiation(std::vector<uint64_t>& words, NegotiationSlot& slot) override {
    std::vector<char> bytes(sizeof(slot) + words.size() * sizeof(uint64_t));
    std::memcpy(bytes.data(), &slot, sizeof(slot));
    std::memcpy(bytes.data() + sizeof(slot), words.data(), words.size() * sizeof(uint64_t));
    // Every rank combines all ranks' messages in rank order, its own included.
    const auto all = hub_.Exchange(rank_, "AllreduceNegotiation", bytes);
    for (size_t r = 0; r < all.size(); ++r) {
      const auto& other = all[r];
      if (other.size() != bytes.size()) throw std::runtime_error("bit vectors of other widths");
      NegotiationSlot theirs;
      std::memcpy(static_cast<void*>(&theirs), other.data(), sizeof(theirs));
      if (r == 0) {
        slot = theirs;
      } else {
        CombineNegotiationSlots(theirs, slot);
      }
      for (size_t i = 0; i < words.size(); ++i) {
        uint64_t w;
        std::memcpy(&w, other.data() + sizeof(slot) + i * sizeof(uint64_t), sizeof(w));
        words[i] &= w;
      }
    }
  }
  std::vector<std::vector<char>> GatherToRoot(const std::vector<char>& mine) override {
    ++gathers;
    auto all = hub_.Exchange(rank_, "GatherToRoot", mine);
    return rank_ == 0 ? all : std::vector<std::vector<char>>{};
  }
  void BroadcastFromRoot(std::vector<char>& bytes) override {
    bytes = hub_.Exchange(rank_, "BroadcastFromRoot", bytes)[0];
  }
  int64_t AllreduceMin(int64_t value) override {
    std::vector<char> bytes(sizeof(value));
    std::memcpy(bytes.data(), &value, sizeof(value));
    int64_t low = value;
    for (const auto& other : hub_.Exchange(rank_, "AllreduceMin", bytes)) {
      int64_t v;
      std::memcpy(&v, other.data(), sizeof(v));
      low = std::min(low, v);
    }
    return low;
  }

  int gathers = 0;  // coordinator round trips this rank took part in (cache misses)

 private:
  Hub& hub_;
  int rank_;
};

TensorSpec Spec(const std::string& name, std::vector<int64_t> shape,
                DataType dtype = DataType::kFloat32, OpType op = OpType::kAllreduce) {
  TensorSpec s;
  s.name = name;
  s.shape = std::move(shape);
  s.dtype = dtype;
  s.op_type = op;
  return s;
}

// One rank's view of a scenario, cycle by cycle.
struct CycleLog {
  std::vector<Response> responses;
  bool all_joined = false;
  int last_joined_rank = -1;
  int gathers = 0;  // coordinator round trips in this cycle
};
using RankLog = std::vector<CycleLog>;

// Before cycle `cycle`, rank `rank` submits into `pending` (via Submit) or calls Join().
struct RankActions {
  PendingTable& pending;
  Controller& controller;
  uint64_t& sequence;
  void Submit(const TensorSpec& spec) {
    PendingEntry entry;
    entry.request.spec = spec;
    entry.sequence = sequence++;
    entry.submitted = std::chrono::steady_clock::now();
    pending.emplace(spec.name, std::move(entry));
  }
  void Join() { controller.Join(); }
};
using Script = std::function<void(int rank, int cycle, RankActions& act)>;

// Runs `cycles` negotiation cycles on `ranks` threads. A response leaves the rank's pending
// table as the executor's would. Returns each rank's log; an exception on any rank is a failure.
std::vector<RankLog> RunScenario(int ranks, int cycles, size_t cache_capacity,
                                 const Script& script, const std::string& scenario) {
  Hub hub(ranks);
  std::vector<RankLog> logs(ranks);
  std::vector<std::string> errors(ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        auto channel = std::make_unique<FakeControlChannel>(hub, r);
        FakeControlChannel* fake = channel.get();
        Controller controller(std::move(channel), cache_capacity);
        PendingTable pending;
        uint64_t sequence = 0;
        RankActions act{pending, controller, sequence};
        for (int c = 0; c < cycles; ++c) {
          script(r, c, act);
          const int gathers_before = fake->gathers;
          CycleResult result = controller.RunCycle(pending, 0);
          CycleLog log;
          log.gathers = fake->gathers - gathers_before;
          log.all_joined = result.all_joined;
          log.last_joined_rank = result.last_joined_rank;
          for (const Response& response : result.responses) pending.erase(response.spec.name);
          log.responses = result.responses;
          logs[r].push_back(std::move(log));
        }
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < ranks; ++r) {
    Check(errors[r].empty(), scenario + ": rank " + std::to_string(r) + " threw: " + errors[r]);
  }
  return logs;
}

// Names of the responses of one cycle, in order, with an error marked "!".
std::string Names(const CycleLog& log) {
  std::string out;
  for (const Response& r : log.responses) {
    out += (out.empty() ? "" : ",") + r.spec.name + (r.error.empty() ? "" : "!");
  }
  return out;
}

// Every rank saw the same responses in the same order every cycle.
void CheckAgreement(const std::vector<RankLog>& logs, const std::string& scenario) {
  for (size_t r = 1; r < logs.size(); ++r) {
    for (size_t c = 0; c < logs[0].size() && c < logs[r].size(); ++c) {
      Check(Names(logs[r][c]) == Names(logs[0][c]),
            scenario + ": cycle " + std::to_string(c) + ": rank " + std::to_string(r) +
                " ran [" + Names(logs[r][c]) + "], rank 0 ran [" + Names(logs[0][c]) + "]");
    }
  }
}

// The first cycle in which `name` came back on rank `rank`, or -1.
int CycleOf(const RankLog& log, const std::string& name, const Response** found = nullptr) {
  for (size_t c = 0; c < log.size(); ++c) {
    for (const Response& r : log[c].responses) {
      if (r.spec.name == name) {
        if (found) *found = &r;
        return static_cast<int>(c);
      }
    }
  }
  return -1;
}

void TestReadyWhenAllRanksSubmitted(int ranks) {
  const std::string scenario = "ready (" + std::to_string(ranks) + " ranks)";
  // Rank r submits "grad" before cycle r: nothing may run until the last rank has it.
  auto logs = RunScenario(ranks, ranks + 3, 16, [&](int rank, int cycle, RankActions& act) {
    if (cycle == rank) act.Submit(Spec("grad", {5, 3}));
  }, scenario);
  CheckAgreement(logs, scenario);
  for (int r = 0; r < ranks; ++r) {
    const Response* response = nullptr;
    const int at = CycleOf(logs[r], "grad", &response);
    Check(at == ranks - 1, scenario + ": rank " + std::to_string(r) + " ran 'grad' in cycle " +
                               std::to_string(at) + ", expected " + std::to_string(ranks - 1));
    if (response) {
      Check(response->error.empty() && response->spec.shape == std::vector<int64_t>({5, 3}),
            scenario + ": response has error '" + response->error + "' or the wrong shape");
    }
  }
}

void TestSubmissionOrder() {
  const std::string scenario = "submission order";
  // Both ranks submit a, b, c in one cycle (a hash table holds them): the coordinator completes
  // them in submission order.
  auto logs = RunScenario(2, 2, 16, [&](int, int cycle, RankActions& act) {
    if (cycle == 0) {
      for (const char* name : {"c1", "a2", "b3"}) act.Submit(Spec(name, {4}));
    }
  }, scenario);
  CheckAgreement(logs, scenario);
  Check(Names(logs[0][0]) == "c1,a2,b3", scenario + ": ran [" + Names(logs[0][0]) + "]");
}

void TestMismatch(const std::string& field, const TensorSpec& rank0, const TensorSpec& other,
                  const std::string& expected_text) {
  const std::string scenario = "mismatched " + field;
  auto logs = RunScenario(3, 2, 16, [&](int rank, int cycle, RankActions& act) {
    if (cycle == 0) act.Submit(rank == 2 ? other : rank0);
  }, scenario);
  CheckAgreement(logs, scenario);
  for (int r = 0; r < 3; ++r) {
    const Response* response = nullptr;
    CycleOf(logs[r], rank0.name, &response);
    Check(response != nullptr, scenario + ": rank " + std::to_string(r) + " got no response");
    if (!response) continue;
    Check(response->error.find(expected_text) != std::string::npos &&
              response->error.find("'" + rank0.name + "'") != std::string::npos,
          scenario + ": error '" + response->error + "' lacks '" + expected_text +
              "' or the tensor's name");
  }
}

void TestJoin() {
  const std::string scenario = "join";
  // Rank 1 joins first; ranks 0 and 2 then all-reduce "x" (rank 1 takes part with nothing to
  // contribute); rank 2 joins, then rank 0 last: join completes everywhere naming rank 0.
  auto logs = RunScenario(3, 8, 16, [&](int rank, int cycle, RankActions& act) {
    if (rank == 1 && cycle == 0) act.Join();
    if (rank != 1 && cycle == 1) act.Submit(Spec("x", {2}));
    if (rank == 2 && cycle == 3) act.Join();
    if (rank == 0 && cycle == 5) act.Join();
  }, scenario);
  CheckAgreement(logs, scenario);
  for (int r = 0; r < 3; ++r) {
    const std::string who = scenario + ": rank " + std::to_string(r);
    const int x_at = CycleOf(logs[r], "x");
    Check(x_at >= 1 && x_at < 3, who + ": 'x' ran in cycle " + std::to_string(x_at) +
                                     " (a joined rank must not hold it back)");
    int joined_at = -1;
    for (size_t c = 0; c < logs[r].size(); ++c) {
      if (logs[r][c].all_joined) {
        joined_at = static_cast<int>(c);
        Check(logs[r][c].last_joined_rank == 0,
              who + ": last joined rank " + std::to_string(logs[r][c].last_joined_rank));
        break;
      }
    }
    Check(joined_at == 5, who + ": join completed in cycle " + std::to_string(joined_at) +
                              ", expected 5 (when the last rank joined)");
  }
}

void TestJoinedRootBroadcast() {
  const std::string scenario = "broadcast from a joined root";
  auto logs = RunScenario(2, 3, 16, [&](int rank, int cycle, RankActions& act) {
    if (rank == 1 && cycle == 0) act.Join();
    if (rank == 0 && cycle == 1) {
      TensorSpec spec = Spec("weights", {3}, DataType::kFloat32, OpType::kBroadcast);
      spec.root = 1;
      act.Submit(spec);
    }
  }, scenario);
  const Response* response = nullptr;
  CycleOf(logs[0], "weights", &response);
  Check(response && response->error.find("root rank 1 has already called join()") !=
                        std::string::npos,
        scenario + ": error '" + (response ? response->error : "<no response>") + "'");
}

void TestCacheHitsSkipTheCoordinator() {
  const std::string scenario = "cache hit";
  // "w" every cycle: negotiated through the coordinator once, then by the bit vector alone.
  auto logs = RunScenario(3, 4, 16, [&](int, int, RankActions& act) {
    act.Submit(Spec("w", {8}));
  }, scenario);
  CheckAgreement(logs, scenario);
  for (int c = 0; c < 4; ++c) {
    Check(Names(logs[1][c]) == "w", scenario + ": cycle " + std::to_string(c) + " ran [" +
                                        Names(logs[1][c]) + "]");
    Check(logs[1][c].gathers == (c == 0 ? 1 : 0),
          scenario + ": cycle " + std::to_string(c) + " took " +
              std::to_string(logs[1][c].gathers) + " coordinator round trips");
  }
}

void TestCacheInvalidation() {
  const std::string scenario = "cache invalidation";
  // "w" is cached with shape {8}; then every rank submits it with {9} (renegotiated, the new
  // shape runs), then rank 2 alone goes back to {8}: every rank drops the entry, and the
  // renegotiation (a cycle later for the ranks whose copy still matched) finds the mismatch
  // instead of running a stale hit.
  auto logs = RunScenario(3, 5, 16, [&](int rank, int cycle, RankActions& act) {
    if (cycle == 0) act.Submit(Spec("w", {8}));
    if (cycle == 1) act.Submit(Spec("w", {9}));
    if (cycle == 2) act.Submit(Spec("w", {rank == 2 ? 8 : 9}));
  }, scenario);
  CheckAgreement(logs, scenario);
  for (int r = 0; r < 3; ++r) {
    const std::string who = scenario + ": rank " + std::to_string(r);
    Check(logs[r][1].gathers == 1 && logs[r][1].responses.size() == 1 &&
              logs[r][1].responses[0].spec.shape == std::vector<int64_t>({9}),
          who + ": a changed shape did not renegotiate");
    Check(logs[r][2].responses.empty(), who + ": cycle 2 ran [" + Names(logs[r][2]) +
                                            "] although the ranks disagree");
    std::string later;
    for (int c = 3; c < 5; ++c) later += Names(logs[r][c]);
    const bool mismatch = logs[r][3].responses.size() == 1 &&
                          logs[r][3].responses[0].error.find("Mismatched allreduce shapes") !=
                              std::string::npos;
    Check(mismatch && later == "w!", who + ": after one rank changed the shape, cycles 3-4 ran [" +
                                         later + "], expected one mismatch error");
  }
}

void TestCacheEviction() {
  const std::string scenario = "cache eviction";
  // Capacity 2: a, b, then c evicts the least recently used (a, since b ran after it); b still
  // hits, a goes through the coordinator again.
  auto logs = RunScenario(2, 5, 2, [&](int, int cycle, RankActions& act) {
    const char* names[] = {"a", "b", "c", "b", "a"};
    act.Submit(Spec(names[cycle], {4}));
  }, scenario);
  CheckAgreement(logs, scenario);
  const int expected[] = {1, 1, 1, 0, 1};
  for (int c = 0; c < 5; ++c) {
    Check(logs[0][c].gathers == expected[c] && logs[0][c].responses.size() == 1,
          scenario + ": cycle " + std::to_string(c) + " took " +
              std::to_string(logs[0][c].gathers) + " round trips, expected " +
              std::to_string(expected[c]));
  }
}

void TestResponseCacheDirectly() {
  ResponseCache cache(2);
  auto response = [](const std::string& name, int64_t n) {
    Response r;
    r.spec = Spec(name, {n});
    return r;
  };
  cache.Put(response("a", 1));
  cache.Put(response("b", 2));
  const int a = cache.Find("a");
  Check(a >= 0 && cache.Find("b") >= 0, "cache: a and b are in");
  cache.Touch(a);  // a is now the most recently used
  cache.Put(response("c", 3));
  Check(cache.Find("b") < 0 && cache.Find("a") == a && cache.Find("c") >= 0,
        "cache: putting c into a full cache evicts the least recently used (b)");
  Check(cache.Find("c") != a && cache.num_positions() == 2,
        "cache: c reuses b's freed position, keeping the bit vector 2 wide");
  cache.Put(response("a", 7));  // replaces, not duplicates
  const int a2 = cache.Find("a");
  Check(a2 >= 0 && cache.At(a2).spec.shape == std::vector<int64_t>({7}),
        "cache: putting a name again replaces its response");
  cache.Erase(a2);
  Check(cache.Find("a") < 0, "cache: an erased name is gone");
  ResponseCache disabled(0);
  disabled.Put(response("a", 1));
  Check(disabled.Find("a") < 0 && !disabled.enabled(), "cache: capacity 0 caches nothing");

  std::string field;
  TensorSpec x = Spec("t", {4, 3}, DataType::kFloat32, OpType::kAllgather);
  TensorSpec y = Spec("t", {9, 3}, DataType::kFloat32, OpType::kAllgather);
  Check(SpecsAgree(x, y), "SpecsAgree: allgather's first dimension may differ");
  y.shape = {4, 2};
  Check(!SpecsAgree(x, y, &field) && field == "shapes", "SpecsAgree: other dimensions may not");
  TensorSpec z = Spec("t", {4});
  z.reduce_op = ReduceOp::kMax;
  Check(!SpecsAgree(Spec("t", {4}), z, &field) && field == "reduce ops",
        "SpecsAgree: reduce ops must agree (field '" + field + "')");
}

std::string GroupsText(const std::vector<std::vector<size_t>>& groups) {
  std::string out;
  for (const auto& g : groups) {
    out += "{";
    for (size_t i = 0; i < g.size(); ++i) out += (i ? "," : "") + std::to_string(g[i]);
    out += "}";
  }
  return out;
}

void TestFusionPlanner() {
  auto allreduce = [](DataType dtype, int64_t elements) {
    Response r;
    r.spec = Spec("t", {elements}, dtype);
    return r;
  };
  // Threshold: 40-byte float32 tensors under a 100-byte threshold fuse two at a time.
  std::vector<Response> three = {allreduce(DataType::kFloat32, 10),
                                 allreduce(DataType::kFloat32, 10),
                                 allreduce(DataType::kFloat32, 10)};
  std::string got = GroupsText(PlanFusion(three, 100));
  Check(got == "{0,1}{2}", "fusion threshold 100 B, 3 x 40 B: " + got);
  got = GroupsText(PlanFusion(three, 120));
  Check(got == "{0,1,2}", "fusion threshold 120 B, 3 x 40 B (exactly full): " + got);
  got = GroupsText(PlanFusion(three, 0));
  Check(got == "{0}{1}{2}", "fusion threshold 0 (off): " + got);

  // Dtype boundaries: float32, float64, float32, float64 -> one group per dtype, each in the
  // order of its first member, members in response order.
  std::vector<Response> mixed = {allreduce(DataType::kFloat32, 4), allreduce(DataType::kFloat64, 4),
                                 allreduce(DataType::kFloat32, 4), allreduce(DataType::kFloat64, 4)};
  got = GroupsText(PlanFusion(mixed, 1 << 20));
  Check(got == "{0,2}{1,3}", "fusion across dtypes: " + got);

  // A reduce op, scale or algorithm difference is a boundary too; errors, other operations
  // and tensors over the threshold run alone, in place.
  std::vector<Response> varied(6, allreduce(DataType::kFloat32, 4));
  varied[1].spec.reduce_op = ReduceOp::kMax;
  varied[2].error = "mismatch";
  varied[3].spec.op_type = OpType::kBroadcast;
  varied[4].spec.shape = {1000};  // 4000 B > threshold
  varied[5].spec.postscale = 0.5;
  got = GroupsText(PlanFusion(varied, 1024));
  Check(got == "{0}{1}{2}{3}{4}{5}", "fusion boundaries (op, error, broadcast, size, scale): " +
                                         got);
  std::vector<Response> same_kind_around = {allreduce(DataType::kFloat32, 4),
                                            varied[3], allreduce(DataType::kFloat32, 4)};
  got = GroupsText(PlanFusion(same_kind_around, 1024));
  Check(got == "{0,2}{1}", "fusion around a broadcast: " + got);
}

}  // namespace

void TestNegotiationSlotCombine() {
  const std::string scenario = "negotiation slot";
  auto slot_of = [](uint32_t position, std::vector<float> values, ReduceOp op) {
    NegotiationSlot slot;
    slot.header = NegotiationSlot::Header(position, DataType::kFloat32, op,
                                          static_cast<uint32_t>(values.size()));
    std::memcpy(slot.payload, values.data(), values.size() * sizeof(float));
    return slot;
  };
  auto floats = [](const NegotiationSlot& slot, size_t n) {
    std::vector<float> out(n);
    std::memcpy(out.data(), slot.payload, n * sizeof(float));
    return out;
  };
  NegotiationSlot sum = slot_of(3, {1, 2, 3}, ReduceOp::kSum);
  CombineNegotiationSlots(slot_of(3, {10, 20, 30}, ReduceOp::kSum), sum);
  Check(floats(sum, 3) == std::vector<float>{11, 22, 33}, scenario + ": sum");
  Check(sum.position() == 3 && sum.count() == 3 && sum.dtype() == DataType::kFloat32,
        scenario + ": header fields");
  NegotiationSlot low = slot_of(0, {5, -1}, ReduceOp::kMin);
  CombineNegotiationSlots(slot_of(0, {2, 7}, ReduceOp::kMin), low);
  Check(floats(low, 2) == std::vector<float>{2, -1}, scenario + ": min");
  NegotiationSlot average = slot_of(1, {1}, ReduceOp::kAverage);
  CombineNegotiationSlots(slot_of(1, {2}, ReduceOp::kAverage), average);
  Check(floats(average, 1) == std::vector<float>{3}, scenario + ": average is summed");
  // Any difference empties the slot, and an empty slot stays empty (associative).
  for (const NegotiationSlot& other : {slot_of(4, {1, 2, 3}, ReduceOp::kSum),
                                       slot_of(3, {1, 2, 3}, ReduceOp::kMax),
                                       slot_of(3, {1, 2}, ReduceOp::kSum), NegotiationSlot{}}) {
    NegotiationSlot mine = slot_of(3, {1, 2, 3}, ReduceOp::kSum);
    CombineNegotiationSlots(other, mine);
    Check(mine.header == 0, scenario + ": a different slot did not empty it");
    CombineNegotiationSlots(slot_of(3, {1, 2, 3}, ReduceOp::kSum), mine);
    Check(mine.header == 0, scenario + ": an emptied slot was refilled");
  }
}

// Synchronous small all-reduces of one cached name come back reduced by the negotiation, on
// every rank, from the second cycle on (the first goes through the coordinator). A request
// pending on one rank only (cycle 2), or a second one on every rank (cycle 3), leaves them to
// the data plane; alone again (cycle 4), they ride in the slot.
void TestSlotCompletesCachedSynchronousAllreduce(int ranks) {
  const std::string scenario = "slot all-reduce (" + std::to_string(ranks) + " ranks)";
  const int cycles = 5;
  std::vector<std::vector<std::vector<int32_t>>> inputs(ranks), outputs(ranks);
  for (int r = 0; r < ranks; ++r) {
    for (int c = 0; c < cycles; ++c) {
      inputs[r].push_back({r + 1, 10 * c, -r});
      outputs[r].push_back({0, 0, 0});
    }
  }
  auto logs = RunScenario(ranks, cycles, 16, [&](int rank, int cycle, RankActions& act) {
    PendingEntry entry;
    entry.request.spec = Spec("metric", {3}, DataType::kInt32);
    entry.request.spec.reduce_op = ReduceOp::kAverage;
    entry.request.input = inputs[rank][cycle].data();
    entry.request.output = outputs[rank][cycle].data();
    entry.request.caller_waits = true;
    entry.sequence = act.sequence++;
    act.pending.emplace("metric", std::move(entry));
    if ((cycle == 2 && rank == ranks - 1) || (cycle == 3 && rank != ranks - 1)) {
      act.Submit(Spec("other", {2}));
    }
  }, scenario);
  CheckAgreement(logs, scenario);
  int32_t first_sum = 0;
  for (int r = 0; r < ranks; ++r) first_sum += r + 1;
  for (int r = 0; r < ranks; ++r) {
    for (int c = 0; c < cycles; ++c) {
      const Response* found = nullptr;
      Check(CycleOf(logs[r], "metric") >= 0, scenario + ": metric never ran");
      for (const Response& resp : logs[r][c].responses) {
        if (resp.spec.name == "metric") found = &resp;
      }
      const bool expect_slot = c == 1 || c == 4;  // cached, and alone on every rank
      Check(found && found->reduced_in_negotiation == expect_slot,
            scenario + ": cycle " + std::to_string(c) + " rank " + std::to_string(r) +
                (expect_slot ? " did not use" : " used") + " the slot");
      if (expect_slot) {
        const std::vector<int32_t> want{first_sum / ranks, 10 * c, -(ranks - 1) / 2};
        Check(outputs[r][c] == want, scenario + ": cycle " + std::to_string(c) + " rank " +
                                         std::to_string(r) + ": wrong average in the slot");
      }
    }
  }
}

int main() {
  for (int ranks : {1, 2, 3, 4}) TestReadyWhenAllRanksSubmitted(ranks);
  TestSubmissionOrder();
  TensorSpec base = Spec("g", {4});
  TensorSpec other_shape = Spec("g", {5});
  TensorSpec other_dtype = Spec("g", {4}, DataType::kFloat64);
  TensorSpec other_op = Spec("g", {4}, DataType::kFloat32, OpType::kAllgather);
  TestMismatch("shapes", base, other_shape, "Mismatched allreduce shapes");
  TestMismatch("dtypes", base, other_dtype, "Mismatched allreduce data types");
  TestMismatch("operations", base, other_op, "Mismatched allreduce operations");
  TestJoin();
  TestJoinedRootBroadcast();
  TestCacheHitsSkipTheCoordinator();
  TestCacheInvalidation();
  TestCacheEviction();
  TestResponseCacheDirectly();
  TestFusionPlanner();
  TestNegotiationSlotCombine();
  for (int ranks : {2, 3, 4}) TestSlotCompletesCachedSynchronousAllreduce(ranks);
  return fusecomm_test::Summary("test_negotiation: ");
}

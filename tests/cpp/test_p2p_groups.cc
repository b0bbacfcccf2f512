// The NCCL transport's grouping of point-to-point operations (csrc/transport/p2p_groups.h),
// checked without a GPU: every all-reduce algorithm of csrc/collectives runs on threads (one per
// rank) over a Comm that groups its Isend/Irecv exactly as NcclComm does, and a model of NCCL
// executes the groups: each rank runs its groups one after another (one stream), and a send
// completes only with the matching receive (same communicator, same pair, in order) in the
// peer's running group. All ranks waiting with nothing able to move is a deadlock: the test
// fails (P2P_DEBUG=1 prints every stream then). Results are checked element by element against
// a scalar reference. One ring case alone: test_p2p_groups RANKS LOCAL_SIZE TORUS_X COUNT SEGMENT.
//
// Build: g++ -std=c++17 -O2 -pthread -Icsrc csrc/collectives/{pipeline,ring_allreduce,
//          rhd_allreduce,hierarchical_allreduce,torus2d_allreduce}.cc csrc/common/types.cc
//          csrc/reduce/cpu_reduce.cc csrc/transport/{host_memory,p2p_groups,split_topology}.cc
//          tests/cpp/test_p2p_groups.cc -o test_p2p_groups
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "collectives/allreduce.h"
#include "transport/p2p_groups.h"
#include "transport/split_topology.h"

using namespace fusecomm;

namespace {

struct Deadlock : std::runtime_error {
  Deadlock() : std::runtime_error("deadlock: every rank waits and no group can progress") {}
};

// The GPUs of all ranks: one stream each, a queue of issued groups.
class ModelDevices {
 public:
  explicit ModelDevices(int ranks) : streams_(ranks), live_(ranks) {}

  struct Op {
    P2pOp p2p;
    int comm_id;
    int peer_global;
    bool done = false;
  };

  void Enqueue(int rank, int comm_id, const std::vector<int>& members,
               const std::vector<P2pOp>& ops) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<Op> group;
    for (const P2pOp& op : ops) group.push_back({op, comm_id, members[op.peer]});
    streams_[rank].push_back(std::move(group));
    Progress();
    cv_.notify_all();
  }

  // Blocks until rank's operation `id` on `comm_id` has completed.
  void Wait(int rank, int comm_id, uint64_t id) {
    std::unique_lock<std::mutex> lock(mutex_);
    ++waiting_;
    awaited_[rank] = {comm_id, id};
    while (!Completed(rank, comm_id, id)) {
      if (failed_) break;
      if (!Progress() && waiting_ == live_ && NobodyCanContinue()) {
        if (getenv("P2P_DEBUG")) Dump();
        failed_ = true;
        cv_.notify_all();
        break;
      }
      cv_.wait(lock);
    }
    --waiting_;
    awaited_.erase(rank);
    if (failed_) throw Deadlock();
  }

  void Leave() {
    std::lock_guard<std::mutex> lock(mutex_);
    --live_;
    cv_.notify_all();
  }

  // Split registry: the new communicator of (parent, split number, color), numbered on first use.
  int CommId(int parent, int split, int color, std::vector<int>* members, int global_rank,
             int key, int parent_size) {
    std::unique_lock<std::mutex> lock(mutex_);
    auto& entry = splits_[{parent, split}];
    entry.posted.push_back({color, key, global_rank});
    cv_.notify_all();
    cv_.wait(lock, [&] { return static_cast<int>(entry.posted.size()) == parent_size; });
    if (color < 0) return -1;
    std::vector<std::tuple<int, int>> chosen;  // (key, global rank)
    for (auto& [c, k, g] : entry.posted) {
      if (c == color) chosen.push_back({k, g});
    }
    std::sort(chosen.begin(), chosen.end());
    members->clear();
    for (auto& [k, g] : chosen) members->push_back(g);
    auto& id = entry.ids[color];
    if (id == 0) id = next_comm_id_++;
    return id;
  }

  void Dump() {
    for (size_t r = 0; r < streams_.size(); ++r) {
      std::fprintf(stderr, "rank %zu:", r);
      for (auto& g : streams_[r]) {
        std::fprintf(stderr, " [");
        for (auto& o : g) std::fprintf(stderr, " c%d%s%d#%llu%s", o.comm_id, o.p2p.send ? ">" : "<", o.peer_global, (unsigned long long)o.p2p.id, o.done ? "*" : "");
        std::fprintf(stderr, " ]");
      }
      std::fprintf(stderr, "\n");
    }
  }

 private:
  bool NobodyCanContinue() {
    return std::none_of(awaited_.begin(), awaited_.end(), [this](const auto& entry) {
      return Completed(entry.first, entry.second.first, entry.second.second);
    });
  }

  bool Completed(int rank, int comm_id, uint64_t id) {
    return done_.count({rank, comm_id, id}) > 0;
  }

  // Matches sends with receives between running groups until nothing moves.
  bool Progress() {
    bool any = false;
    for (bool moved = true; moved;) {
      moved = false;
      for (size_t r = 0; r < streams_.size(); ++r) {
        if (streams_[r].empty()) continue;
        for (Op& op : streams_[r].front()) {
          if (op.done || !op.p2p.send || !FirstOnLink(streams_[r].front(), op)) continue;
          auto& peer_stream = streams_[op.peer_global];
          if (peer_stream.empty()) continue;
          for (Op& other : peer_stream.front()) {
            if (other.done || other.p2p.send || other.comm_id != op.comm_id ||
                other.peer_global != static_cast<int>(r) ||
                !FirstOnLink(peer_stream.front(), other)) {
              continue;
            }
            if (other.p2p.bytes != op.p2p.bytes) {
              std::fprintf(stderr, "size mismatch: %zu sent, %zu expected\n", op.p2p.bytes,
                           other.p2p.bytes);
              std::abort();
            }
            if (op.p2p.bytes) std::memcpy(other.p2p.buffer, op.p2p.buffer, op.p2p.bytes);
            op.done = other.done = true;
            done_.insert({static_cast<int>(r), op.comm_id, op.p2p.id});
            done_.insert({op.peer_global, other.comm_id, other.p2p.id});
            moved = any = true;
            break;
          }
        }
      }
      for (auto& stream : streams_) {
        while (!stream.empty() && std::all_of(stream.front().begin(), stream.front().end(),
                                              [](const Op& o) { return o.done; })) {
          stream.pop_front();
          moved = any = true;
        }
      }
    }
    if (any) cv_.notify_all();
    return any;
  }

  // Operations on one link (comm, direction, peer) complete in the order they were grouped.
  static bool FirstOnLink(const std::vector<Op>& group, const Op& op) {
    for (const Op& o : group) {
      if (&o == &op) return true;
      if (!o.done && o.comm_id == op.comm_id && o.p2p.send == op.p2p.send &&
          o.peer_global == op.peer_global) {
        return false;
      }
    }
    return true;
  }

  struct SplitEntry {
    std::vector<std::tuple<int, int, int>> posted;  // (color, key, global rank)
    std::map<int, int> ids;
  };

  // Operation each waiting rank waits for. A rank whose operation completed has not run yet.
  std::map<int, std::pair<int, uint64_t>> awaited_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::deque<std::vector<Op>>> streams_;
  std::set<std::tuple<int, int, uint64_t>> done_;
  std::map<std::pair<int, int>, SplitEntry> splits_;
  int next_comm_id_ = 1;
  int live_;
  int waiting_ = 0;
  bool failed_ = false;
};

// A Comm grouping its point-to-point operations as NcclComm does, executed by ModelDevices.
class ModelComm : public Comm {
 public:
  ModelComm(ModelDevices* devices, int id, std::vector<int> members, int global_rank)
      : devices_(devices),
        id_(id),
        members_(std::move(members)),
        global_rank_(global_rank),
        groups_([this](const std::vector<P2pOp>& ops) {
          devices_->Enqueue(global_rank_, id_, members_, ops);
        }) {
    for (size_t i = 0; i < members_.size(); ++i) {
      if (members_[i] == global_rank) rank_ = static_cast<int>(i);
    }
  }
  ~ModelComm() override = default;

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(members_.size()); }
  std::string transport_name() const override { return "model"; }
  MemoryOps& memory() override { return HostMemory(); }

  class Request : public CommRequest {
   public:
    Request(ModelComm* comm, uint64_t id) : comm_(comm), id_(id) {}
    void Wait() override {
      comm_->groups_.Issue(id_);
      comm_->devices_->Wait(comm_->global_rank_, comm_->id_, id_);
    }

   private:
    ModelComm* comm_;
    uint64_t id_;
  };

  std::unique_ptr<CommRequest> Isend(const void* buf, size_t bytes, int peer, int) override {
    traffic_.messages_sent += 1;
    traffic_.bytes_sent += bytes;
    return std::make_unique<Request>(this,
                                     groups_.Add(true, const_cast<void*>(buf), bytes, peer));
  }
  std::unique_ptr<CommRequest> Irecv(void* buf, size_t bytes, int peer, int) override {
    return std::make_unique<Request>(this, groups_.Add(false, buf, bytes, peer));
  }
  void Send(const void* buf, size_t bytes, int peer, int tag) override {
    Isend(buf, bytes, peer, tag)->Wait();
  }
  void Recv(void* buf, size_t bytes, int peer, int tag) override {
    Irecv(buf, bytes, peer, tag)->Wait();
  }
  void SendRecv(const void* sendbuf, size_t send_bytes, int dst, void* recvbuf, size_t recv_bytes,
                int src, int tag) override {
    auto recv = Irecv(recvbuf, recv_bytes, src, tag);
    auto send = Isend(sendbuf, send_bytes, dst, tag);
    recv->Wait();
    send->Wait();
  }
  std::unique_ptr<Comm> Split(int color, int key) override {
    groups_.IssueAll();
    std::vector<int> members;
    int id = devices_->CommId(id_, splits_++, color, &members, global_rank_, key, size());
    if (id < 0) return nullptr;
    return std::make_unique<ModelComm>(devices_, id, members, global_rank_);
  }
  void NativeAllreduce(void*, size_t, DataType, ReduceOp) override { Unused(); }
  void NativeBroadcast(void*, size_t, int) override { Unused(); }
  void NativeAllgatherv(const void*, size_t, void*, const std::vector<size_t>&) override {
    Unused();
  }
  void NativeAlltoallv(const void*, const std::vector<size_t>&, void*,
                       const std::vector<size_t>&) override {
    Unused();
  }
  void NativeReduceScatterv(const void*, void*, const std::vector<size_t>&, DataType,
                            ReduceOp) override {
    Unused();
  }
  void Barrier() override { Unused(); }

 private:
  [[noreturn]] static void Unused() { throw std::logic_error("not used by the algorithms"); }

  ModelDevices* devices_;
  int id_;
  std::vector<int> members_;
  int global_rank_;
  int rank_ = 0;
  int splits_ = 0;
  P2pGroups groups_;
};

int32_t Input(int rank, size_t i) { return static_cast<int32_t>((rank + 1) * 1000 + i % 997); }

struct Case {
  int ranks;
  int local_size;
  int torus_x;
  AllreduceAlgorithm algorithm;
  size_t count;
  size_t segment_bytes;
};

// Runs one case on threads; returns an empty string or what went wrong.
std::string RunCase(const Case& c) {
  ModelDevices devices(c.ranks);
  std::vector<std::string> errors(c.ranks);
  std::vector<int> all(c.ranks);
  for (int r = 0; r < c.ranks; ++r) all[r] = r;
  std::vector<std::thread> threads;
  for (int r = 0; r < c.ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        ModelComm global(&devices, 0, all, r);
        std::vector<int> node_of(c.ranks);
        for (int q = 0; q < c.ranks; ++q) node_of[q] = q / c.local_size;
        Topology topo = SplitTopology(global, node_of, c.torus_x);
        topo.global = &global;
        std::vector<int32_t> buf(c.count);
        for (size_t i = 0; i < c.count; ++i) buf[i] = Input(r, i);
        const DataType dt = DataType::kInt32;
        const ReduceOp op = ReduceOp::kSum;
        const size_t seg = c.segment_bytes;
        switch (c.algorithm) {
          case AllreduceAlgorithm::kRing: RingAllreduce(global, buf.data(), c.count, dt, op, seg); break;
          case AllreduceAlgorithm::kRecursiveHalvingDoubling:
            RecursiveHalvingDoublingAllreduce(global, buf.data(), c.count, dt, op, seg);
            break;
          case AllreduceAlgorithm::kHierarchical:
            HierarchicalAllreduce(topo, buf.data(), c.count, dt, op, seg);
            break;
          case AllreduceAlgorithm::kHierarchicalScatter:
            HierarchicalScatterAllreduce(topo, buf.data(), c.count, dt, op, seg);
            break;
          case AllreduceAlgorithm::kTorus2D:
            Torus2DAllreduce(topo, buf.data(), c.count, dt, op, seg);
            break;
          default: throw std::logic_error("not a point-to-point algorithm");
        }
        for (size_t i = 0; i < c.count; ++i) {
          int32_t expected = 0;
          for (int q = 0; q < c.ranks; ++q) expected += Input(q, i);
          if (buf[i] != expected) {
            errors[r] = "rank " + std::to_string(r) + " element " + std::to_string(i) + ": " +
                        std::to_string(buf[i]) + " != " + std::to_string(expected);
            break;
          }
        }
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
      devices.Leave();
    });
  }
  for (auto& t : threads) t.join();
  std::string all_errors;
  for (int r = 0; r < c.ranks; ++r) {
    if (!errors[r].empty()) all_errors += "\n  rank " + std::to_string(r) + ": " + errors[r];
  }
  return all_errors;
}

}  // namespace

int main(int argc, char** argv) {
  int passed = 0, failed = 0;
  if (argc == 6) {  // one case: ranks local_size torus_x count segment_bytes, ring
    Case c{atoi(argv[1]), atoi(argv[2]), atoi(argv[3]), AllreduceAlgorithm::kRing,
           static_cast<size_t>(atol(argv[4])), static_cast<size_t>(atol(argv[5]))};
    std::string error = RunCase(c);
    std::printf("%s\n", error.empty() ? "ok" : error.c_str());
    return error.empty() ? 0 : 1;
  }
  const AllreduceAlgorithm algorithms[] = {
      AllreduceAlgorithm::kRing, AllreduceAlgorithm::kRecursiveHalvingDoubling,
      AllreduceAlgorithm::kHierarchical, AllreduceAlgorithm::kHierarchicalScatter,
      AllreduceAlgorithm::kTorus2D};
  // (ranks, local size, torus width): odd and even counts, uneven nodes, partial grids.
  const int configs[][3] = {{1, 1, 1}, {2, 1, 2}, {2, 2, 2}, {3, 2, 2}, {4, 2, 2},
                            {5, 2, 3}, {6, 4, 2}, {7, 3, 2}, {8, 4, 3}, {8, 2, 4}};
  // Counts: empty, fewer elements than ranks (empty blocks), primes; segments of 1 and 3
  // elements and whole blocks, so blocks go as one message or as many.
  const size_t counts[] = {0, 1, 2, 5, 13, 31, 97, 211};
  const size_t segments[] = {4, 12, size_t{1} << 20};
  for (auto& cfg : configs) {
    for (AllreduceAlgorithm a : algorithms) {
      for (size_t count : counts) {
        for (size_t seg : segments) {
          Case c{cfg[0], cfg[1], cfg[2], a, count, seg};
          std::string error = RunCase(c);
          if (error.empty()) {
            ++passed;
          } else {
            ++failed;
            std::printf("FAIL %s ranks=%d local=%d torus_x=%d count=%zu segment=%zu: %s\n",
                        AllreduceAlgorithmName(a), c.ranks, c.local_size, c.torus_x, count, seg,
                        error.c_str());
          }
        }
      }
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

#include "engine/executor.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <exception>

#include "collectives/allreduce.h"
#include "collectives/cost_model.h"
#include "collectives/dispatch.h"
#include "common/errors.h"
#include "common/logging.h"
#include "engine/device_executor.h"
#include "engine/fusion_planner.h"
#include "transport/abort.h"

namespace fusecomm {

namespace {

size_t ElementCount(const TensorSpec& spec) { return static_cast<size_t>(spec.num_elements()); }

// The timeline's arguments of an ALLREDUCE activity.
std::string CollectiveArgs(const char* algorithm, size_t bytes, size_t tensors,
                           const std::string& transport) {
  return std::string("{\"algorithm\":\"") + algorithm + "\",\"bytes\":" +
         std::to_string(bytes) + ",\"tensors\":" + std::to_string(tensors) +
         ",\"transport\":\"" + transport + "\"}";
}

// Rows of a reducescatter block on `rank`: the remainder rows go to the lowest ranks.
int64_t ScatterRows(int64_t rows, int ranks, int rank) {
  return rows / ranks + (rank < rows % ranks ? 1 : 0);
}

std::string ToUpper(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return s;
}

std::vector<int64_t> WithFirstDim(const std::vector<int64_t>& shape, int64_t first) {
  std::vector<int64_t> out = shape.empty() ? std::vector<int64_t>{first} : shape;
  out[0] = first;
  return out;
}

}  // namespace

Executor::Executor(Topology& topology, const AllreduceSelector& selector,
                   size_t fusion_threshold, AllreduceAlgorithm default_algorithm,
                   std::function<void(const std::string&)> release_name, Timeline* timeline,
                   FusionPlan fusion_plan, double cycle_time_ms)
    : timeline_(timeline),
      host_plane_(topology, selector),
      default_algorithm_(default_algorithm),
      release_name_(std::move(release_name)),
      scheduler_(
          fusion_plan, fusion_threshold, cycle_time_ms, topology.global->size(),
          [&topology, &selector](size_t bytes) {
            return selector.PredictSeconds(topology, AllreduceAlgorithm::kAuto, bytes);
          },
          [this](std::vector<double>& values) {
            if (host_plane_.comm().size() > 1 && !values.empty()) {
              RunAllreduce(host_plane_.topology(), AllreduceAlgorithm::kRing, values.data(),
                           values.size(), DataType::kFloat64, ReduceOp::kMax);
            }
          }) {}

Executor::~Executor() = default;

void Executor::Enter(const std::vector<Request*>& group, const std::string& activity,
                     const std::string& args_json) {
  if (!timeline_->active()) return;
  for (Request* r : group) {
    timeline_->ActivityEnd(r->spec.name);
    timeline_->ActivityStart(r->spec.name, activity, args_json);
  }
}

void Executor::Finish(Request& request, const std::string& error) {
  if (timeline_->active()) timeline_->ActivityEnd(request.spec.name);
  release_name_(request.spec.name);  // a stand-in's name is not in flight: erasing is harmless
  if (error.empty()) {
    request.handle->Complete();
  } else {
    request.handle->Fail(error);
  }
}

double Executor::PrepareFinish(DataPlane& plane, void* buf, size_t count,
                               const TensorSpec& spec) {
  double factor = spec.postscale;
  if (spec.reduce_op == ReduceOp::kAverage) {
    const int n = plane.comm().size();
    if (IsFloatingPoint(spec.dtype)) {
      factor /= n;
    } else {
      plane.memory().Divide(buf, buf, count, spec.dtype, n);  // exact, truncating
    }
  }
  return factor;
}

void Executor::RunAllreduceGroup(DataPlane& plane, const std::vector<Request*>& group) {
  const TensorSpec& kind = group[0]->spec;
  ReduceOp op = kind.reduce_op == ReduceOp::kAverage ? ReduceOp::kSum : kind.reduce_op;
  MemoryOps& mem = plane.memory();
  const size_t elem = DataTypeSize(kind.dtype);
  size_t total = 0;
  std::vector<size_t> counts;
  for (Request* r : group) counts.push_back(ElementCount(r->spec));
  for (size_t c : counts) total += c;
  // Adasum is an all-reduce of its own, on every member's counts (always on the host plane:
  // device tensors are staged through host memory); the other ops take the requested or chosen
  // algorithm.
  const bool adasum = kind.reduce_op == ReduceOp::kAdasum;
  const AllreduceAlgorithm algorithm =
      adasum ? AllreduceAlgorithm::kAuto
             : plane.Choose(kind.algorithm == AllreduceAlgorithm::kAuto ? default_algorithm_
                                                                        : kind.algorithm,
                            total * elem, kind.dtype);
  const char* algorithm_name = adasum ? "adasum" : AllreduceAlgorithmName(algorithm);
  auto reduce = [&](void* buf) {
    if (adasum) {
      AdasumAllreduce(plane.comm(), buf, counts, kind.dtype);
    } else {
      RunAllreduce(plane.topology(), algorithm, buf, total, kind.dtype, op);
    }
  };
  const std::string collective_args =
      timeline_->active() ? CollectiveArgs(algorithm_name, total * elem, group.size(),
                                           plane.comm().transport_name())
                          : std::string();
  FUSECOMM_LOG(kDebug, "allreduce of " << group.size() << " tensor(s) starting with '"
                                        << kind.name << "': " << total * elem << " bytes, "
                                        << algorithm_name << " on "
                                        << plane.comm().transport_name());
  if (group.size() == 1) {
    // Unfused: work in the caller's output directly, no fusion-buffer copies.
    Request& r = *group[0];
    mem.ScaledCopy(r.output, r.input, total, r.spec.dtype, r.spec.prescale);
    Enter(group, "ALLREDUCE", collective_args);
    reduce(r.output);
    mem.ScaledCopy(r.output, r.output, total, r.spec.dtype,
                   PrepareFinish(plane, r.output, total, r.spec));
    return;
  }
  // Members share dtype, op and scales (the planner fuses only those), so the fused buffer is
  // scaled as one and each copy is a single batched launch on a device.
  Enter(group, "MEMCPY_IN_FUSION_BUFFER");
  char* buffer = static_cast<char*>(plane.FusionBuffer(total * elem));
  std::vector<CopyEntry> copies;
  size_t offset = 0;
  for (Request* r : group) {
    size_t count = ElementCount(r->spec);
    copies.push_back({r->input, buffer + offset * elem, count});
    offset += count;
  }
  plane.CopyBatch(copies, kind.dtype, kind.prescale);
  Enter(group, "ALLREDUCE", collective_args);
  reduce(buffer);
  Enter(group, "MEMCPY_OUT_FUSION_BUFFER");
  const double factor = PrepareFinish(plane, buffer, total, kind);
  for (size_t i = 0; i < group.size(); ++i) {
    copies[i] = {copies[i].dst, group[i]->output, copies[i].count};
  }
  plane.CopyBatch(copies, kind.dtype, factor);
}

void Executor::RunAllgather(DataPlane& plane, Request& r) {
  Comm& comm = plane.comm();
  const int n = comm.size();
  int64_t my_rows = r.spec.shape.empty() ? 1 : r.spec.shape[0];
  std::vector<int64_t> rows(n);
  plane.host().NativeAllgatherv(&my_rows, sizeof(int64_t), rows.data(),
                         std::vector<size_t>(n, sizeof(int64_t)));
  const size_t row_bytes = static_cast<size_t>(r.spec.row_elements()) * DataTypeSize(r.spec.dtype);
  std::vector<size_t> block_bytes(n);
  int64_t total_rows = 0;
  for (int q = 0; q < n; ++q) {
    // Each rank validated its own size (< 2^50 bytes); their sum must stay sane too.
    if (rows[q] < 0 || rows[q] > (int64_t{1} << 50) || total_rows > (int64_t{1} << 56)) {
      throw CollectiveError("allgather of '" + r.spec.name + "': rank " + std::to_string(q) +
                            " sent an impossible row count " + std::to_string(rows[q]));
    }
    block_bytes[q] = static_cast<size_t>(rows[q]) * row_bytes;
    total_rows += rows[q];
  }
  auto out = plane.AllocateOutput(static_cast<size_t>(total_rows) * row_bytes);
  comm.NativeAllgatherv(r.input, block_bytes[comm.rank()], out->data.get(), block_bytes);
  r.handle->output = out;
  r.handle->output_shape = WithFirstDim(r.spec.shape, total_rows);
}

void Executor::RunBroadcast(DataPlane& plane, Request& r) {
  size_t bytes = r.spec.num_bytes();
  Comm& comm = plane.comm();
  if (comm.rank() == r.spec.root && r.output != r.input) {
    comm.memory().Copy(r.output, r.input, bytes);
  }
  comm.NativeBroadcast(r.output, bytes, r.spec.root);
}

void Executor::RunReducescatter(DataPlane& plane, Request& r) {
  Comm& comm = plane.comm();
  const int n = comm.size();
  const int64_t rows = r.spec.shape.empty() ? 1 : r.spec.shape[0];
  const int64_t row_elems = r.spec.row_elements();
  std::vector<size_t> counts(n);
  for (int q = 0; q < n; ++q) counts[q] = static_cast<size_t>(ScatterRows(rows, n, q) * row_elems);
  const size_t total = ElementCount(r.spec);
  const size_t elem = DataTypeSize(r.spec.dtype);
  const void* send = r.input;
  std::shared_ptr<void> scaled;
  if (r.spec.prescale != 1.0) {
    scaled = comm.memory().Allocate(total * elem);
    comm.memory().ScaledCopy(scaled.get(), r.input, total, r.spec.dtype, r.spec.prescale);
    send = scaled.get();
  }
  ReduceOp op = r.spec.reduce_op == ReduceOp::kAverage ? ReduceOp::kSum : r.spec.reduce_op;
  size_t mine = counts[comm.rank()];
  auto out = plane.AllocateOutput(mine * elem);
  if (comm.NativeReductionSupports(r.spec.dtype, op)) {
    comm.NativeReduceScatterv(send, out->data.get(), counts, r.spec.dtype, op);
  } else {
    // The transport cannot reduce this (see NativeReductionSupports): the engine's ring
    // all-reduces a copy of the whole tensor and this rank keeps its block.
    size_t before = 0;
    for (int q = 0; q < comm.rank(); ++q) before += counts[q];
    std::shared_ptr<void> whole = comm.memory().Allocate(total * elem);
    comm.memory().Copy(whole.get(), send, total * elem);
    RingAllreduce(comm, whole.get(), total, r.spec.dtype, op);
    comm.memory().Copy(out->data.get(), static_cast<char*>(whole.get()) + before * elem,
                       mine * elem);
  }
  comm.memory().ScaledCopy(out->data.get(), out->data.get(), mine, r.spec.dtype,
                           PrepareFinish(plane, out->data.get(), mine, r.spec));
  r.handle->output = out;
  r.handle->output_shape = WithFirstDim(r.spec.shape, ScatterRows(rows, n, comm.rank()));
}

void Executor::RunAlltoall(DataPlane& plane, Request& r) {
  Comm& comm = plane.comm();
  const int n = comm.size();
  const int64_t rows = r.spec.shape.empty() ? 1 : r.spec.shape[0];
  std::vector<int64_t> send_rows = r.splits;
  if (send_rows.empty()) send_rows.assign(n, rows / n);  // equal split, checked at submit
  std::vector<int64_t> recv_rows(n);
  plane.host().NativeAlltoallv(send_rows.data(), std::vector<size_t>(n, sizeof(int64_t)),
                        recv_rows.data(), std::vector<size_t>(n, sizeof(int64_t)));
  const size_t row_bytes = static_cast<size_t>(r.spec.row_elements()) * DataTypeSize(r.spec.dtype);
  std::vector<size_t> send_bytes(n), recv_bytes(n);
  int64_t total_rows = 0;
  for (int q = 0; q < n; ++q) {
    send_bytes[q] = static_cast<size_t>(send_rows[q]) * row_bytes;
    recv_bytes[q] = static_cast<size_t>(recv_rows[q]) * row_bytes;
    total_rows += recv_rows[q];
  }
  auto out = plane.AllocateOutput(static_cast<size_t>(total_rows) * row_bytes);
  comm.NativeAlltoallv(r.input, send_bytes, out->data.get(), recv_bytes);
  r.handle->output = out;
  r.handle->output_shape = WithFirstDim(r.spec.shape, total_rows);
  r.handle->received_splits = recv_rows;
}

Request Executor::StandIn(const TensorSpec& spec) {
  Request r;
  r.spec = spec;
  r.handle = std::make_shared<HandleState>();
  r.stand_in = true;
  r.submitted = std::chrono::steady_clock::now();  // a joined rank has no ready time of its own
  const bool by_rows = spec.op_type == OpType::kAllgather || spec.op_type == OpType::kAlltoall;
  if (by_rows) {
    r.spec.shape[0] = 0;  // sends no rows
    r.splits.assign(host_plane_.comm().size(), 0);
  }
  // Host memory even for a device tensor: the device plane moves stand-ins to the GPU.
  auto input = std::make_shared<EngineBuffer>(r.spec.num_bytes());
  auto output = std::make_shared<EngineBuffer>(r.spec.num_bytes());
  std::memset(input->data.get(), 0, input->bytes);
  r.input = input->data.get();
  r.output = output->data.get();
  stand_in_buffers_.push_back(input);
  stand_in_buffers_.push_back(output);
  return r;
}

void Executor::Execute(const std::vector<Response>& responses, PendingTable& pending,
                       bool joined) {
  // Take this rank's request for every response out of the pending table.
  std::vector<FusionScheduler::Ready> ready;
  ready.reserve(responses.size());
  // A held stand-in still points into its buffers.
  if (!scheduler_.holding()) stand_in_buffers_.clear();
  for (const Response& response : responses) {
    auto it = pending.find(response.spec.name);
    if (response.reduced_in_negotiation && it != pending.end()) {
      // Its result is in its output already: no data collective, no place in the fusion plan.
      Request done = std::move(it->second.request);
      pending.erase(it);
      if (timeline_->active()) {
        Enter({&done}, "ALLREDUCE", CollectiveArgs("negotiation slot", done.spec.num_bytes(), 1,
                                                   host_plane_.comm().transport_name()));
      }
      Finish(done, "");
      continue;
    }
    if (it == pending.end() && joined) {
      ready.push_back({response, StandIn(response.spec)});
      Enter({&ready.back().request}, "QUEUE");
      continue;
    }
    if (it == pending.end()) {
      // Cannot happen while negotiation is correct: every response names a request of ours.
      throw CollectiveError("internal error: no local request for tensor '" +
                            response.spec.name + "'");
    }
    ready.push_back({response, std::move(it->second.request)});
    pending.erase(it);
    Enter({&ready.back().request}, "QUEUE");
  }
  FusionScheduler::Batch batch = scheduler_.Schedule(std::move(ready));
  const std::vector<Response>& run = batch.responses;
  std::vector<Request>& requests = batch.requests;
  for (const auto& group : batch.groups) {
    const Response& first = run[group[0]];
    if (!first.error.empty()) {
      Finish(requests[group[0]], first.error);
      continue;
    }
    std::string error;
    try {
      const OpType type = first.spec.op_type;
      Request& single = requests[group[0]];
      if (type != OpType::kAllreduce) {
        FUSECOMM_LOG(kDebug, OpTypeName(type) << " of '" << first.spec.name << "': "
                                              << first.spec.num_bytes() << " bytes");
      }
      if (type != OpType::kAllreduce && type != OpType::kBarrier && type != OpType::kJoin) {
        Enter({&single}, ToUpper(OpTypeName(type)),
              "{\"bytes\":" + std::to_string(first.spec.num_bytes()) + "}");
      }
      std::vector<Request*> members;
      for (size_t i : group) members.push_back(&requests[i]);
      if (first.spec.device < 0) {
        Run(host_plane_, type, members);
      } else {
#if FUSECOMM_WITH_CUDA
        if (!device_) device_ = std::make_unique<DeviceExecutor>(host_plane_.topology(),
                                                                  host_plane_.selector());
        device_->Run(members, [&](DataPlane& plane, const std::vector<Request*>& on_plane) {
          Run(plane, type, on_plane);
        });
#else
        throw CollectiveError("fusecomm was built without CUDA");
#endif
      }
    } catch (const std::exception& e) {
      error = std::string(OpTypeName(first.spec.op_type)) + " of '" + first.spec.name +
              "' failed: " + e.what();
      FUSECOMM_LOG(kError, error);
      // The peers may still be inside this collective: going on would leave them waiting on
      // this rank and let its next messages match their abandoned receives. Aborting the
      // transport fails every later call here and reaches the peers (through liveness).
      if (host_plane_.comm().size() > 1) AbortTransport(error);
    }
    for (size_t i : group) Finish(requests[i], error);
  }
}

void Executor::Run(DataPlane& plane, OpType type, const std::vector<Request*>& group) {
  Request& single = *group[0];
  switch (type) {
    case OpType::kAllreduce: RunAllreduceGroup(plane, group); break;
    case OpType::kAllgather: RunAllgather(plane, single); break;
    case OpType::kBroadcast: RunBroadcast(plane, single); break;
    case OpType::kReducescatter: RunReducescatter(plane, single); break;
    case OpType::kAlltoall: RunAlltoall(plane, single); break;
    case OpType::kBarrier:  // negotiation completing on every rank is the barrier
    case OpType::kJoin: break;
  }
}

void Executor::FailAll(PendingTable& pending, const std::string& message) {
  for (Request& held : scheduler_.TakeHeld()) Finish(held, message);
  for (auto& [name, entry] : pending) Finish(entry.request, message);
  pending.clear();
}

}  // namespace fusecomm

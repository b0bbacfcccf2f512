#include "engine/executor.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <exception>

#include "collectives/dispatch.h"
#include "common/errors.h"
#include "common/logging.h"
#include "engine/fusion_planner.h"

namespace fusecomm {

namespace {

size_t ElementCount(const TensorSpec& spec) { return static_cast<size_t>(spec.num_elements()); }

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

Executor::Executor(Topology& topology, size_t fusion_threshold,
                   AllreduceAlgorithm default_algorithm,
                   std::function<void(const std::string&)> release_name, Timeline* timeline)
    : timeline_(timeline),
      topology_(topology),
      comm_(*topology.global),
      fusion_threshold_(fusion_threshold),
      default_algorithm_(default_algorithm),
      release_name_(std::move(release_name)) {}

void* Executor::FusionBuffer(size_t bytes) {
  if (bytes > fusion_capacity_) {
    fusion_buffer_ = comm_.memory().Allocate(bytes);
    fusion_capacity_ = bytes;
  }
  return fusion_buffer_.get();
}

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

void Executor::FinishScale(void* dst, const void* src, size_t count, const TensorSpec& spec) {
  MemoryOps& mem = comm_.memory();
  double factor = spec.postscale;
  if (spec.reduce_op == ReduceOp::kAverage) {
    if (IsFloatingPoint(spec.dtype)) {
      factor /= comm_.size();
    } else {
      // Integers average exactly (truncating), then take any postscale.
      mem.Divide(dst, src, count, spec.dtype, comm_.size());
      src = dst;
    }
  }
  mem.ScaledCopy(dst, src, count, spec.dtype, factor);
}

void Executor::RunAllreduceGroup(const std::vector<Request*>& group) {
  const TensorSpec& kind = group[0]->spec;
  ReduceOp op = kind.reduce_op == ReduceOp::kAverage ? ReduceOp::kSum : kind.reduce_op;
  MemoryOps& mem = comm_.memory();
  const size_t elem = DataTypeSize(kind.dtype);
  size_t total = 0;
  for (Request* r : group) total += ElementCount(r->spec);
  AllreduceAlgorithm algorithm =
      kind.algorithm == AllreduceAlgorithm::kAuto ? default_algorithm_ : kind.algorithm;
  if (algorithm == AllreduceAlgorithm::kAuto) {
    algorithm = ChooseAllreduceAlgorithm(topology_, total * elem);
  }
  const std::string collective_args =
      timeline_->active() ? std::string("{\"algorithm\":\"") + AllreduceAlgorithmName(algorithm) +
                                "\",\"bytes\":" + std::to_string(total * elem) +
                                ",\"tensors\":" + std::to_string(group.size()) + "}"
                          : std::string();
  FUSECOMM_LOG(kDebug, "allreduce of " << group.size() << " tensor(s) starting with '"
                                        << kind.name << "': " << total * elem << " bytes, "
                                        << AllreduceAlgorithmName(algorithm));
  if (group.size() == 1) {
    // Unfused: work in the caller's output directly, no fusion-buffer copies.
    Request& r = *group[0];
    mem.ScaledCopy(r.output, r.input, total, r.spec.dtype, r.spec.prescale);
    Enter(group, "ALLREDUCE", collective_args);
    RunAllreduce(topology_, algorithm, r.output, total, r.spec.dtype, op);
    FinishScale(r.output, r.output, total, r.spec);
    return;
  }
  Enter(group, "MEMCPY_IN_FUSION_BUFFER");
  char* buffer = static_cast<char*>(FusionBuffer(total * elem));
  size_t offset = 0;
  for (Request* r : group) {
    size_t count = ElementCount(r->spec);
    mem.ScaledCopy(buffer + offset * elem, r->input, count, kind.dtype, kind.prescale);
    offset += count;
  }
  Enter(group, "ALLREDUCE", collective_args);
  RunAllreduce(topology_, algorithm, buffer, total, kind.dtype, op);
  Enter(group, "MEMCPY_OUT_FUSION_BUFFER");
  offset = 0;
  for (Request* r : group) {
    size_t count = ElementCount(r->spec);
    FinishScale(r->output, buffer + offset * elem, count, r->spec);
    offset += count;
  }
}

void Executor::RunAllgather(Request& r) {
  const int n = comm_.size();
  int64_t my_rows = r.spec.shape.empty() ? 1 : r.spec.shape[0];
  std::vector<int64_t> rows(n);
  comm_.NativeAllgatherv(&my_rows, sizeof(int64_t), rows.data(),
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
  auto out = std::make_shared<HostBuffer>(static_cast<size_t>(total_rows) * row_bytes);
  comm_.NativeAllgatherv(r.input, block_bytes[comm_.rank()], out->data.get(), block_bytes);
  r.handle->output = out;
  r.handle->output_shape = WithFirstDim(r.spec.shape, total_rows);
}

void Executor::RunBroadcast(Request& r) {
  size_t bytes = r.spec.num_bytes();
  if (comm_.rank() == r.spec.root && r.output != r.input) {
    comm_.memory().Copy(r.output, r.input, bytes);
  }
  comm_.NativeBroadcast(r.output, bytes, r.spec.root);
}

void Executor::RunReducescatter(Request& r) {
  const int n = comm_.size();
  const int64_t rows = r.spec.shape.empty() ? 1 : r.spec.shape[0];
  const int64_t row_elems = r.spec.row_elements();
  std::vector<size_t> counts(n);
  for (int q = 0; q < n; ++q) counts[q] = static_cast<size_t>(ScatterRows(rows, n, q) * row_elems);
  const size_t total = ElementCount(r.spec);
  const size_t elem = DataTypeSize(r.spec.dtype);
  const void* send = r.input;
  std::shared_ptr<void> scaled;
  if (r.spec.prescale != 1.0) {
    scaled = comm_.memory().Allocate(total * elem);
    comm_.memory().ScaledCopy(scaled.get(), r.input, total, r.spec.dtype, r.spec.prescale);
    send = scaled.get();
  }
  ReduceOp op = r.spec.reduce_op == ReduceOp::kAverage ? ReduceOp::kSum : r.spec.reduce_op;
  size_t mine = counts[comm_.rank()];
  auto out = std::make_shared<HostBuffer>(mine * elem);
  comm_.NativeReduceScatterv(send, out->data.get(), counts, r.spec.dtype, op);
  FinishScale(out->data.get(), out->data.get(), mine, r.spec);
  r.handle->output = out;
  r.handle->output_shape = WithFirstDim(r.spec.shape, ScatterRows(rows, n, comm_.rank()));
}

void Executor::RunAlltoall(Request& r) {
  const int n = comm_.size();
  const int64_t rows = r.spec.shape.empty() ? 1 : r.spec.shape[0];
  std::vector<int64_t> send_rows = r.splits;
  if (send_rows.empty()) send_rows.assign(n, rows / n);  // equal split, checked at submit
  std::vector<int64_t> recv_rows(n);
  comm_.NativeAlltoallv(send_rows.data(), std::vector<size_t>(n, sizeof(int64_t)),
                        recv_rows.data(), std::vector<size_t>(n, sizeof(int64_t)));
  const size_t row_bytes = static_cast<size_t>(r.spec.row_elements()) * DataTypeSize(r.spec.dtype);
  std::vector<size_t> send_bytes(n), recv_bytes(n);
  int64_t total_rows = 0;
  for (int q = 0; q < n; ++q) {
    send_bytes[q] = static_cast<size_t>(send_rows[q]) * row_bytes;
    recv_bytes[q] = static_cast<size_t>(recv_rows[q]) * row_bytes;
    total_rows += recv_rows[q];
  }
  auto out = std::make_shared<HostBuffer>(static_cast<size_t>(total_rows) * row_bytes);
  comm_.NativeAlltoallv(r.input, send_bytes, out->data.get(), recv_bytes);
  r.handle->output = out;
  r.handle->output_shape = WithFirstDim(r.spec.shape, total_rows);
  r.handle->received_splits = recv_rows;
}

Request Executor::StandIn(const TensorSpec& spec) {
  Request r;
  r.spec = spec;
  r.handle = std::make_shared<HandleState>();
  const bool by_rows = spec.op_type == OpType::kAllgather || spec.op_type == OpType::kAlltoall;
  if (by_rows) {
    r.spec.shape[0] = 0;  // sends no rows
    r.splits.assign(comm_.size(), 0);
  }
  auto input = std::make_shared<HostBuffer>(r.spec.num_bytes());
  auto output = std::make_shared<HostBuffer>(r.spec.num_bytes());
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
  std::vector<Request> requests;
  requests.reserve(responses.size());
  stand_in_buffers_.clear();
  for (const Response& response : responses) {
    auto it = pending.find(response.spec.name);
    if (it == pending.end() && joined) {
      requests.push_back(StandIn(response.spec));
      continue;
    }
    if (it == pending.end()) {
      // Cannot happen while negotiation is correct: every response names a request of ours.
      throw CollectiveError("internal error: no local request for tensor '" +
                            response.spec.name + "'");
    }
    requests.push_back(std::move(it->second.request));
    pending.erase(it);
  }
  for (Request& r : requests) Enter({&r}, "QUEUE");
  for (const auto& group : PlanFusion(responses, fusion_threshold_)) {
    const Response& first = responses[group[0]];
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
      switch (type) {
        case OpType::kAllreduce: {
          std::vector<Request*> members;
          for (size_t i : group) members.push_back(&requests[i]);
          RunAllreduceGroup(members);
          break;
        }
        case OpType::kAllgather: RunAllgather(single); break;
        case OpType::kBroadcast: RunBroadcast(single); break;
        case OpType::kReducescatter: RunReducescatter(single); break;
        case OpType::kAlltoall: RunAlltoall(single); break;
        case OpType::kBarrier:  // negotiation completing on every rank is the barrier
        case OpType::kJoin: break;
      }
    } catch (const std::exception& e) {
      error = std::string(OpTypeName(first.spec.op_type)) + " of '" + first.spec.name +
              "' failed: " + e.what();
      FUSECOMM_LOG(kError, error);
    }
    for (size_t i : group) Finish(requests[i], error);
  }
}

void Executor::FailAll(PendingTable& pending, const std::string& message) {
  for (auto& [name, entry] : pending) Finish(entry.request, message);
  pending.clear();
}

}  // namespace fusecomm

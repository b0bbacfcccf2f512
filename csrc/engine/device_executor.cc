#if FUSECOMM_WITH_CUDA

#include "engine/device_executor.h"

#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "common/config.h"
#include "common/errors.h"
#include "common/logging.h"
#include "reduce/cuda_kernels.h"
#include "transport/cuda_memory.h"
#include "transport/nccl/nccl_api.h"
#include "transport/nccl/nccl_comm.h"
#include "transport/split_topology.h"

namespace fusecomm {

namespace {

// The node of every rank as SplitTopology wants it: the lowest global rank of each rank's node,
// taken from the host topology so that the device grid is the host grid.
std::vector<int> NodeOfEachRank(Topology& host) {
  Comm& global = *host.global;
  int node = global.rank();
  if (host.local) host.local->NativeAllreduce(&node, 1, DataType::kInt32, ReduceOp::kMin);
  std::vector<int> node_of(global.size());
  global.NativeAllgatherv(&node, sizeof(int), node_of.data(),
                          std::vector<size_t>(global.size(), sizeof(int)));
  return node_of;
}

// Device memory over a GPU's NCCL communicators. The algorithms' sub-communicators are split
// off only when an algorithm other than NCCL's own is asked for.
class NcclPlane : public DataPlane {
 public:
  NcclPlane(Topology& host_topology, CudaMemoryOps& memory)
      : host_topology_(host_topology), memory_(memory) {
    global_ = NcclComm::Create(*host_topology.global, memory);
    topology_.global = global_.get();
  }
  Topology& topology() override { return topology_; }
  Comm& host() override { return *host_topology_.global; }

  AllreduceAlgorithm Choose(AllreduceAlgorithm requested, size_t, DataType) override {
    // NCCL's own all-reduce is tuned for the hardware (NVLink, rings and trees per channel);
    // ours run on it when asked for by name.
    if (requested == AllreduceAlgorithm::kAuto || requested == AllreduceAlgorithm::kNative) {
      return AllreduceAlgorithm::kNative;
    }
    if (!topology_.local) {
      // Collective: every rank resolves the same agreed algorithm at the same response.
      Topology split = SplitTopology(*global_, NodeOfEachRank(host_topology_),
                                     host_topology_.torus_x);
      split.global = global_.get();
      topology_ = std::move(split);
    }
    return requested;
  }

  std::shared_ptr<EngineBuffer> AllocateOutput(size_t bytes) override {
    return std::make_shared<EngineBuffer>(memory_.Allocate(bytes), bytes, memory_.device());
  }

  void CopyBatch(const std::vector<CopyEntry>& entries, DataType dtype, double factor) override {
    std::vector<CudaCopyEntry> cuda_entries;
    cuda_entries.reserve(entries.size());
    for (const CopyEntry& e : entries) cuda_entries.push_back({e.src, e.dst, e.count});
    CudaBatchedScaledCopy(cuda_entries.data(), cuda_entries.size(), dtype, dtype, factor,
                          memory_.stream());
  }

  // Every communicator that may have work queued, for waiting and error checks.
  std::vector<NcclComm*> Comms() {
    std::vector<NcclComm*> comms;
    for (Comm* c : {topology_.global, topology_.local.get(), topology_.cross.get(),
                    topology_.torus_row.get(), topology_.torus_col.get(),
                    topology_.torus_col_full.get()}) {
      if (c != nullptr) comms.push_back(static_cast<NcclComm*>(c));
    }
    return comms;
  }

 private:
  Topology& host_topology_;
  CudaMemoryOps& memory_;
  std::unique_ptr<NcclComm> global_;
  Topology topology_;  // declared after global_: its sub-communicators go first
};

// Pinned host memory for staging, grown on demand.
class PinnedArena {
 public:
  ~PinnedArena() {
    if (data_) cudaFreeHost(data_);
  }
  char* Reserve(size_t bytes) {
    if (bytes > capacity_) {
      if (data_) cudaFreeHost(data_);
      data_ = nullptr;
      capacity_ = 0;
      CheckCuda(cudaHostAlloc(reinterpret_cast<void**>(&data_), bytes, cudaHostAllocDefault),
                "cudaHostAlloc (staging buffer)");
      capacity_ = bytes;
    }
    return data_;
  }

 private:
  char* data_ = nullptr;
  size_t capacity_ = 0;
};

bool CallerOutput(OpType type) { return type == OpType::kAllreduce || type == OpType::kBroadcast; }

// Operations that only the host plane implements (the planner fuses one reduce op per group).
bool NeedsHost(const std::vector<Request*>& group) {
  return !group.empty() && group[0]->spec.op_type == OpType::kAllreduce &&
         group[0]->spec.reduce_op == ReduceOp::kAdasum;
}

// What each rank tells the others when its GPU context is created.
struct GpuIdentity {
  char ok = 0;
  char text[255] = {};  // "<host name>|<PCI bus id>", or why this rank cannot use its GPU
};

}  // namespace

struct DeviceExecutor::Context {
  int device = 0;
  cudaStream_t stream = nullptr;
  std::unique_ptr<CudaMemoryOps> memory;
  std::unique_ptr<NcclPlane> nccl;  // null: host staging
  PinnedArena staging;
  ~Context() {
    nccl.reset();
    memory.reset();
    if (stream) cudaStreamDestroy(stream);
  }
};

DeviceExecutor::DeviceExecutor(Topology& host_topology, const AllreduceSelector& host_selector)
    : host_topology_(host_topology), host_plane_(host_topology, host_selector) {}

DeviceExecutor::~DeviceExecutor() = default;

DeviceExecutor::Context& DeviceExecutor::ContextFor(int device) {
  if (context_) {
    if (context_->device != device) {
      throw CollectiveError("fusecomm uses one GPU per process in a process set: this rank uses "
                            "cuda:" + std::to_string(context_->device) + ", not cuda:" +
                            std::to_string(device));
    }
    return *context_;
  }
  Comm& host = *host_topology_.global;
  // Every rank says whether its GPU works and which it is before anything collective on the
  // device, so that one rank's failure fails all of them instead of leaving them in NCCL init.
  GpuIdentity mine;
  char bus_id[64] = {};
  cudaError_t status = cudaSetDevice(device);
  if (status == cudaSuccess) status = cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), device);
  if (status == cudaSuccess) {
    char host_name[128] = {};
    gethostname(host_name, sizeof(host_name) - 1);
    mine.ok = 1;
    std::snprintf(mine.text, sizeof(mine.text), "%s|%s", host_name, bus_id);
  } else {
    std::snprintf(mine.text, sizeof(mine.text), "cuda:%d: %s", device, cudaGetErrorString(status));
  }
  std::vector<GpuIdentity> all(host.size());
  host.NativeAllgatherv(&mine, sizeof(mine), all.data(),
                        std::vector<size_t>(host.size(), sizeof(GpuIdentity)));
  bool shared = false;
  for (int q = 0; q < host.size(); ++q) {
    if (!all[q].ok) {
      throw CollectiveError("rank " + std::to_string(q) + " cannot use its GPU (" +
                            std::string(all[q].text) + ")");
    }
    for (int p = 0; p < q; ++p) shared = shared || std::strcmp(all[p].text, all[q].text) == 0;
  }
  const std::string setting = GpuTransportSetting();
  const bool use_nccl = setting == "nccl" || (setting == "auto" && !shared);
  auto context = std::make_unique<Context>();
  context->device = device;
  CheckCuda(cudaStreamCreateWithFlags(&context->stream, cudaStreamNonBlocking),
            "cudaStreamCreate");
  context->memory = std::make_unique<CudaMemoryOps>(device, context->stream);
  if (use_nccl) context->nccl = std::make_unique<NcclPlane>(host_topology_, *context->memory);
  FUSECOMM_LOG(kDebug, "GPU cuda:" << device << " (" << mine.text << "): "
                                   << (use_nccl ? "NCCL" : "host staging over MPI")
                                   << (shared ? " (ranks share GPUs)" : ""));
  context_ = std::move(context);
  return *context_;
}

void DeviceExecutor::Run(const std::vector<Request*>& group,
                         const std::function<void(DataPlane&, const std::vector<Request*>&)>& run) {
  // A joined rank has no tensor of its own: its stand-ins go to the GPU it already uses.
  int device = -1;
  for (Request* r : group) {
    if (r->stand_in) continue;
    if (device >= 0 && r->spec.device != device) {
      throw CollectiveError("tensors fused together are on different GPUs on this rank (cuda:" +
                            std::to_string(device) + " and cuda:" +
                            std::to_string(r->spec.device) + ")");
    }
    device = r->spec.device;
  }
  if (device < 0) {
    int count = 0;
    CheckCuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    device = context_ ? context_->device : host_topology_.local_rank() % std::max(count, 1);
  }
  Context& context = ContextFor(device);
  CheckCuda(cudaSetDevice(context.device), "cudaSetDevice");
  for (Request* r : group) {
    if (r->ready_event) {
      CheckCuda(cudaStreamWaitEvent(context.stream, static_cast<cudaEvent_t>(r->ready_event.get()),
                                    0),
                "cudaStreamWaitEvent");
    }
  }
  // Adasum runs staged on host memory even where NCCL is up: its per-tensor dot products and
  // pairwise combinations are host code (csrc/collectives/adasum_allreduce.cc over MPI).
  if (!context.nccl || NeedsHost(group)) {
    RunStaged(context, group, run);
    return;
  }
  // Stand-ins' zeros move to device memory; their results are dropped.
  std::vector<Request> moved;
  moved.reserve(group.size());
  std::vector<std::shared_ptr<void>> keep;
  std::vector<Request*> on_device;
  for (Request* r : group) {
    if (!r->stand_in) {
      on_device.push_back(r);
      continue;
    }
    moved.push_back(*r);
    Request& m = moved.back();
    const size_t bytes = m.spec.num_bytes();
    keep.push_back(context.memory->Allocate(bytes));
    keep.push_back(context.memory->Allocate(bytes));
    CheckCuda(cudaMemsetAsync(keep[keep.size() - 2].get(), 0, bytes, context.stream),
              "cudaMemsetAsync");
    m.input = keep[keep.size() - 2].get();
    m.output = keep.back().get();
    on_device.push_back(&m);
  }
  run(*context.nccl, on_device);
  WaitForStream(context.stream, context.nccl->Comms());
}

void DeviceExecutor::RunStaged(
    Context& context, const std::vector<Request*>& group,
    const std::function<void(DataPlane&, const std::vector<Request*>&)>& run) {
  size_t total = 0;
  for (Request* r : group) {
    total += r->spec.num_bytes() * (CallerOutput(r->spec.op_type) ? 2 : 1);
  }
  char* arena = context.staging.Reserve(std::max<size_t>(total, 1));
  std::vector<Request> staged;
  staged.reserve(group.size());
  size_t offset = 0;
  // Device -> pinned host. Stand-ins already live in host memory.
  for (Request* r : group) {
    staged.push_back(*r);
    if (r->stand_in) continue;
    Request& s = staged.back();
    const size_t bytes = r->spec.num_bytes();
    s.input = arena + offset;
    offset += bytes;
    if (bytes) {
      CheckCuda(cudaMemcpyAsync(arena + offset - bytes, r->input, bytes, cudaMemcpyDefault,
                                context.stream),
                "cudaMemcpyAsync (device to staging)");
    }
    if (CallerOutput(r->spec.op_type)) {
      s.output = arena + offset;
      offset += bytes;
    }
  }
  WaitForStream(context.stream, {});
  std::vector<Request*> on_host;
  for (Request& s : staged) on_host.push_back(&s);
  run(host_plane_, on_host);
  // Pinned host -> device; outputs the engine allocated move to device memory.
  for (size_t i = 0; i < group.size(); ++i) {
    Request& r = *group[i];
    if (r.stand_in) continue;
    const size_t bytes = r.spec.num_bytes();
    if (CallerOutput(r.spec.op_type) && bytes) {
      CheckCuda(cudaMemcpyAsync(r.output, staged[i].output, bytes, cudaMemcpyDefault,
                                context.stream),
                "cudaMemcpyAsync (staging to device)");
    }
    std::shared_ptr<EngineBuffer> host_output = r.handle->output;
    if (host_output && host_output->device < 0) {
      auto device_output = std::make_shared<EngineBuffer>(
          context.memory->Allocate(host_output->bytes), host_output->bytes, context.device);
      if (host_output->bytes) {
        CheckCuda(cudaMemcpyAsync(device_output->data.get(), host_output->data.get(),
                                  host_output->bytes, cudaMemcpyDefault, context.stream),
                  "cudaMemcpyAsync (staging to device)");
      }
      r.handle->output = device_output;
    }
  }
  // The host copies of engine outputs must outlive the copies above.
  WaitForStream(context.stream, {});
}

std::shared_ptr<void> RecordSubmitEvent(int device, uintptr_t stream) {
  int previous = 0;
  CheckCuda(cudaGetDevice(&previous), "cudaGetDevice");
  if (previous != device) CheckCuda(cudaSetDevice(device), "cudaSetDevice");
  cudaEvent_t event = nullptr;
  cudaError_t status = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
  if (status == cudaSuccess) {
    status = cudaEventRecord(event, reinterpret_cast<cudaStream_t>(stream));
    if (status != cudaSuccess) cudaEventDestroy(event);
  }
  if (previous != device) cudaSetDevice(previous);
  CheckCuda(status, "recording the submission event on the caller's stream");
  return std::shared_ptr<void>(event, [](void* e) { cudaEventDestroy(static_cast<cudaEvent_t>(e)); });
}

CudaBuildInfo GetCudaBuildInfo() {
  CudaBuildInfo info;
  auto version = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
  int runtime = 0, driver = 0;
  info.runtime_version = cudaRuntimeGetVersion(&runtime) == cudaSuccess ? version(runtime) : "unknown";
  info.driver_version =
      cudaDriverGetVersion(&driver) == cudaSuccess && driver > 0 ? version(driver) : "none";
  info.nccl_version = NcclVersionString();
  return info;
}

}  // namespace fusecomm

#endif  // FUSECOMM_WITH_CUDA

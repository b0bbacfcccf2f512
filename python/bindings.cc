// pybind11 bindings: fusecomm._core. Thin by design: argument conversion, GIL handling and
// exception mapping only; all logic lives in csrc/ (C++) or fusecomm/ (Python).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/errors.h"
#include "engine/engine.h"
#include "transport/mpi/mpi_context.h"

namespace py = pybind11;
using namespace fusecomm;

namespace {

// One collective as the Python frontend core builds it (fusecomm/_frontend/collectives.py):
// plain fields, converted here to the engine's typed Request. The data addresses are not among
// them but arguments of each submission, so the frontend can reuse one Request for every call
// of a named collective (building one costs about as much as the engine's own work on 8 bytes).
struct EnqueueRequest {
  int op_type = 0;
  std::string name;
  int dtype = 0;
  std::vector<int64_t> shape;
  int reduce_op = 0;
  double prescale = 1.0;
  double postscale = 1.0;
  int root = 0;
  int device = -1;
  uintptr_t stream = 0;
  std::string algorithm = "auto";
  std::vector<int64_t> splits;
  int process_set = 0;
  bool caller_waits = false;
};

int64_t Enqueue(const EnqueueRequest& in, uintptr_t input, uintptr_t output, bool caller_waits) {
  // Range checks only: the casts to the engine's enums must not invent values.
  if (in.op_type < 0 || in.op_type > static_cast<int>(OpType::kJoin)) {
    throw InvalidArgument("unknown operation code " + std::to_string(in.op_type));
  }
  CheckDataType(in.dtype);
  CheckReduceOp(in.reduce_op);
  Request request;
  request.spec.name = in.name;
  request.spec.op_type = static_cast<OpType>(in.op_type);
  request.spec.dtype = static_cast<DataType>(in.dtype);
  request.spec.reduce_op = static_cast<ReduceOp>(in.reduce_op);
  request.spec.shape = in.shape;
  request.spec.root = in.root;
  request.spec.prescale = in.prescale;
  request.spec.postscale = in.postscale;
  request.spec.device = in.device;
  request.spec.algorithm = ParseAllreduceAlgorithm(in.algorithm);
  request.input = reinterpret_cast<const void*>(input);
  request.output = reinterpret_cast<void*>(output);
  request.splits = in.splits;
  request.stream = in.stream;
  request.caller_waits = caller_waits;
  return Engine::Get().Submit(in.process_set, std::move(request));
}

// Waits for handle `id` with the GIL released, waking periodically to run Python's signal
// handlers (Ctrl-C); one that raises abandons the wait (py::error_already_set) and the handle
// stays valid. A failed collective releases the handle.
void WaitRunningSignalHandlers(int64_t id) {
  auto handle = Engine::Get().GetHandle(id);
  try {
    py::gil_scoped_release release;
    handle->Wait([] {
      py::gil_scoped_acquire acquire;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    });
  } catch (const CollectiveError&) {
    Engine::Get().ReleaseHandle(id);
    throw;
  }
}

// Engine-allocated device memory as Python sees it: the frontends wrap it (no copy) through
// __cuda_array_interface__; the object keeps the memory alive.
struct DeviceBuffer {
  std::shared_ptr<EngineBuffer> buffer;
};

// The engine-allocated output of a finished handle as (uint8 array, DeviceBuffer or None,
// shape, splits). A host array shares the engine's buffer; the capsule keeps it alive.
py::tuple TakeResult(int64_t id) {
  auto handle = Engine::Get().GetHandle(id);
  Engine::Get().ReleaseHandle(id);
  py::object array = py::none();
  if (handle->output && handle->output->device >= 0) {
    array = py::cast(DeviceBuffer{handle->output});
  } else if (handle->output) {
    auto* keep = new std::shared_ptr<EngineBuffer>(handle->output);
    py::capsule owner(keep, [](void* p) { delete static_cast<std::shared_ptr<EngineBuffer>*>(p); });
    array = py::array_t<uint8_t>({static_cast<py::ssize_t>(handle->output->bytes)},
                                 static_cast<uint8_t*>(handle->output->data.get()), owner);
  }
  return py::make_tuple(array, handle->output_shape, handle->received_splits,
                        handle->last_joined_rank);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusecomm core engine (C++)";
  static py::exception<CollectiveError> collective_error(m, "CollectiveError", PyExc_RuntimeError);
  static py::exception<NotInitialized> not_initialized(m, "NotInitializedError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const CollectiveError& e) {
      py::set_error(collective_error, e.what());
    } catch (const NotInitialized& e) {
      py::set_error(not_initialized, e.what());
    } catch (const InvalidArgument& e) {
      py::set_error(PyExc_ValueError, e.what());
    }
  });

  py::class_<DeviceBuffer>(m, "DeviceBuffer")
      .def_property_readonly("ptr", [](const DeviceBuffer& b) {
        return reinterpret_cast<uintptr_t>(b.buffer->data.get());
      })
      .def_property_readonly("nbytes", [](const DeviceBuffer& b) { return b.buffer->bytes; })
      .def_property_readonly("device", [](const DeviceBuffer& b) { return b.buffer->device; });

  m.def("init", [](uintptr_t comm_address, const std::vector<int>& ranks) {
    // comm_address: the address of an MPI_Comm to run on (mpi4py's), 0 for MPI_COMM_WORLD.
    MpiBootstrap bootstrap(
        comm_address ? *reinterpret_cast<const MPI_Comm*>(comm_address) : MPI_COMM_WORLD, ranks);
    Engine::Get().Init(bootstrap);
  }, py::arg("comm_address") = 0, py::arg("ranks") = std::vector<int>{},
     py::call_guard<py::gil_scoped_release>());
  m.def("shutdown", [](bool at_exit) { Engine::Get().Shutdown(at_exit); },
        py::arg("at_exit") = false, py::call_guard<py::gil_scoped_release>());
  m.def("finalize_mpi", &FinalizeMpiIfOwned, py::call_guard<py::gil_scoped_release>());
  m.def("is_initialized", [] { return Engine::Get().initialized(); });
  m.def("stopped", [] { return Engine::Get().stopped(); });
  m.def("rank", [] { return Engine::Get().rank(); });
  m.def("size", [] { return Engine::Get().size(); });
  m.def("local_rank", [] { return Engine::Get().local_rank(); });
  m.def("local_size", [] { return Engine::Get().local_size(); });
  m.def("cross_rank", [] { return Engine::Get().cross_rank(); });
  m.def("cross_size", [] { return Engine::Get().cross_size(); });
  m.def("is_homogeneous", [] { return Engine::Get().is_homogeneous(); });
  m.def("add_process_set", [](const std::vector<int>& ranks) {
    return Engine::Get().AddProcessSet(ranks);
  }, py::call_guard<py::gil_scoped_release>());
  m.def("remove_process_set", [](int id) { Engine::Get().RemoveProcessSet(id); },
        py::call_guard<py::gil_scoped_release>());
  m.def("process_set_ranks", [](int id) { return Engine::Get().ProcessSetRanks(id); });
  m.def("process_set_ids", [] { return Engine::Get().ProcessSetIds(); });
  m.def("process_set_rank", [](int id) { return Engine::Get().ProcessSetRank(id); });
  py::class_<EnqueueRequest>(m, "Request")
      .def(py::init<>())
      // The fields every collective sets, in one call: each attribute set is a pybind11 call
      // of its own (about 0.1 us), and a small synchronous call is a few microseconds in all.
      .def(py::init([](int op_type, std::string name, int dtype, std::vector<int64_t> shape) {
             EnqueueRequest r;
             r.op_type = op_type;
             r.name = std::move(name);
             r.dtype = dtype;
             r.shape = std::move(shape);
             return r;
           }),
           py::arg("op_type"), py::arg("name"), py::arg("dtype"), py::arg("shape"))
      .def_readwrite("op_type", &EnqueueRequest::op_type)
      .def_readwrite("name", &EnqueueRequest::name)
      .def_readwrite("dtype", &EnqueueRequest::dtype)
      .def_readwrite("shape", &EnqueueRequest::shape)
      .def_readwrite("reduce_op", &EnqueueRequest::reduce_op)
      .def_readwrite("prescale", &EnqueueRequest::prescale)
      .def_readwrite("postscale", &EnqueueRequest::postscale)
      .def_readwrite("root", &EnqueueRequest::root)
      .def_readwrite("device", &EnqueueRequest::device)
      .def_readwrite("stream", &EnqueueRequest::stream)
      .def_readwrite("algorithm", &EnqueueRequest::algorithm)
      .def_readwrite("splits", &EnqueueRequest::splits)
      .def_readwrite("process_set", &EnqueueRequest::process_set)
      .def_readwrite("caller_waits", &EnqueueRequest::caller_waits);
  m.def("enqueue", [](const EnqueueRequest& in, uintptr_t input, uintptr_t output) {
    return Enqueue(in, input, output, in.caller_waits);
  }, py::arg("request"), py::arg("input"), py::arg("output"));
  // A synchronous collective in one call (enqueue marked caller_waits, wait, take_result): a
  // small call costs a few microseconds, each pybind11 call about 0.1-0.3. Should a signal
  // handler abandon the wait, adopt(handle, keep) runs first, so that the buffers `keep` holds
  // outlive the collective still in flight.
  m.def("run", [](const EnqueueRequest& in, uintptr_t input, uintptr_t output,
                  const py::function& adopt, const py::object& keep) {
    const int64_t id = Enqueue(in, input, output, /*caller_waits=*/true);
    try {
      WaitRunningSignalHandlers(id);
    } catch (py::error_already_set&) {
      adopt(id, keep);
      throw;
    }
    return TakeResult(id);
  }, py::arg("request"), py::arg("input"), py::arg("output"), py::arg("adopt"), py::arg("keep"));
  // A NumPy array's data address; from Python (__array_interface__) it costs about 2 us.
  m.def("array_address", [](const py::array& array) {
    return reinterpret_cast<uintptr_t>(array.data());
  });
  m.def("begin_group", [](int process_set) { Engine::Get().BeginGroup(process_set); });
  m.def("end_group", [](int process_set) { Engine::Get().EndGroup(process_set); });
  m.def("poll", [](int64_t id) { return Engine::Get().GetHandle(id)->Done(); });
  m.def("wait", &WaitRunningSignalHandlers);
  m.def("take_result", &TakeResult);
  m.def("release", [](int64_t id) { Engine::Get().ReleaseHandle(id); });
  m.def("start_timeline", [](const std::string& path, bool mark_cycles) {
    Engine::Get().StartTimeline(path, mark_cycles);
  }, py::arg("path"), py::arg("mark_cycles") = false);
  m.def("stop_timeline", [] { Engine::Get().StopTimeline(); },
        py::call_guard<py::gil_scoped_release>());
  m.def("auto_algorithm", [](size_t bytes, int32_t dtype) {
    CheckDataType(dtype);
    return Engine::Get().AutoAlgorithm(bytes, static_cast<DataType>(dtype));
  }, py::arg("bytes"), py::arg("dtype") = static_cast<int32_t>(DataType::kFloat32));
  m.def("tuned_classes", [] {
    py::list out;
    for (const TunedClass& c : Engine::Get().TunedClasses()) {
      py::dict seconds;
      for (const auto& [algorithm, s] : c.seconds) seconds[AllreduceAlgorithmName(algorithm)] = s;
      py::dict entry;
      entry["dtype"] = DataTypeName(c.dtype);
      entry["bytes"] = c.bytes;
      entry["chosen"] = AllreduceAlgorithmName(c.chosen);
      entry["seconds"] = seconds;
      out.append(entry);
    }
    return out;
  });
  m.def("predict_seconds", [](const std::string& algorithm, size_t bytes) {
    return Engine::Get().PredictSeconds(algorithm, bytes);
  });
  m.def("cost_model", [] { return Engine::Get().CostModelText(); });
  m.def(
      "fusion_plan",
      [](int process_set_id) {
        FusionPlanState state = Engine::Get().FusionPlanOf(process_set_id);
        py::dict d;
        d["kind"] = state.kind;
        d["buckets"] = state.buckets;
        d["plans_made"] = state.plans_made;
        d["steps_seen"] = state.steps_seen;
        return d;
      },
      py::arg("process_set_id") = 0);
  m.def(
      "hand_off_counts",
      [](int process_set_id) {
        auto counts = Engine::Get().HandOffCountsOf(process_set_id);
        py::dict d;
        d["cycles_by_engine_thread"] = counts.cycles_by_engine_thread;
        d["cycles_by_callers"] = counts.cycles_by_callers;
        d["engine_thread_wakeups"] = counts.engine_thread_wakeups;
        d["allreduces_in_negotiation"] = counts.allreduces_in_negotiation;
        return d;
      },
      py::arg("process_set_id") = 0);
  m.def("mpi_nonblocking_allreduce_algorithm", &MpiNonBlockingAllreduceAlgorithm);
  m.def("build_info", [] {
    BuildInfo info = GetBuildInfo();
    info.mpi_version = MpiLibraryVersion();
    if (info.cuda) info.cuda_aware_mpi = MpiCudaAwareness();
    py::dict d;
    d["mpi_version"] = info.mpi_version;
    d["cuda"] = info.cuda;
    d["nccl"] = info.nccl;
    d["cuda_runtime_version"] = info.cuda_runtime_version;
    d["cuda_driver_version"] = info.cuda_driver_version;
    d["nccl_version"] = info.nccl_version;
    d["cuda_aware_mpi"] = info.cuda_aware_mpi;
    return d;
  });
  m.def("config", [] {
    const Config& c = Engine::Get().config();
    py::dict d;
    d["cycle_time_ms"] = c.cycle_time_ms;
    d["fusion_threshold_bytes"] = c.fusion_threshold_bytes;
    d["cache_capacity"] = c.cache_capacity;
    d["allreduce_algorithm"] = std::string(AllreduceAlgorithmName(c.allreduce_algorithm));
    d["local_size"] = c.local_size;
    d["torus_x"] = c.torus_x;
    d["deadlock_seconds"] = c.deadlock_seconds;
    return d;
  });
}

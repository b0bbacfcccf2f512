"""`fusecomm check-build`: what this copy of fusecomm was built with."""
import importlib.metadata
import importlib.util

import fusecomm
from fusecomm import _core


def _framework_version(module, *dists):
    """The installed version of `module`, from the first distribution that provides it."""
    if importlib.util.find_spec(module) is None:
        return None
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown version"


def report():
    info = _core.build_info()
    try:
        from fusecomm import _build_config

        mpicc, mpiexec = _build_config.MPI_C_COMPILER, _build_config.MPIEXEC
    except ImportError:
        mpicc = mpiexec = "unknown"
    torch_version = _framework_version("torch", "torch")
    tf_version = _framework_version("tensorflow", "tensorflow", "tensorflow-cpu",
                                    "tensorflow-gpu", "tf-nightly")

    def mark(flag):
        return "[X]" if flag else "[ ]"

    lines = [
        f"fusecomm v{fusecomm.__version__}:",
        "",
        "Available Frameworks:",
        f"    {mark(torch_version)} PyTorch" + (f" {torch_version}" if torch_version else ""),
        f"    {mark(tf_version)} TensorFlow" + (f" {tf_version}" if tf_version else ""),
        "",
        "Available Controllers:",
        f"    [X] MPI: {info['mpi_version'].splitlines()[0]}",
        f"        built with {mpicc}, launched with {mpiexec}",
        "",
        "Available Tensor Operations:",
        f"    {mark(info['nccl'])} NCCL" + (f" {info['nccl_version']}" if info["nccl"] else ""),
        f"    [X] MPI" + (f" (CUDA-aware: {info['cuda_aware_mpi']}; device tensors on MPI are "
                          "staged through host memory)" if info["cuda"] else ""),
        f"    {mark(info['cuda'])} CUDA" + (
            f" runtime {info['cuda_runtime_version']}, driver {info['cuda_driver_version']}"
            if info["cuda"] else ""),
    ]
    return "\n".join(lines)

"""fusecomm: collective communication for data-parallel training.

The framework-agnostic face works on NumPy arrays (and anything NumPy views without a copy);
fusecomm.torch and fusecomm.tensorflow carry the same API for their tensors. Names and
signatures follow Horovod's, so `import fusecomm as hvd` reads as it always did."""
from fusecomm._engine import Adasum, Average, Max, Min, Product, Sum
from fusecomm.basics import (ProcessSet, add_process_set, ccl_built, cross_rank, cross_size,
                             cuda_built, ddl_built, global_process_set, gloo_built, gloo_enabled,
                             init, is_homogeneous, is_initialized, local_rank, local_size,
                             mpi_built, mpi_enabled, mpi_threads_supported, nccl_built, rank,
                             remove_process_set, rocm_built, shutdown, size, start_timeline,
                             stop_timeline)
from fusecomm.exceptions import CollectiveError, HorovodInternalError, NotInitializedError
from fusecomm.ops import (allgather, allgather_async, allgather_object, allreduce, allreduce_,
                          allreduce_async, allreduce_async_, alltoall, alltoall_async, barrier,
                          broadcast, broadcast_, broadcast_async, broadcast_async_,
                          broadcast_object, grouped_allgather, grouped_allreduce,
                          grouped_allreduce_, grouped_allreduce_async, grouped_allreduce_async_,
                          grouped_reducescatter, join, poll, reducescatter, reducescatter_async,
                          synchronize)
from fusecomm.runner.api import run

__version__ = "0.1.0"

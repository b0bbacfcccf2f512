"""fusecomm for PyTorch: a drop-in for horovod.torch.

Change `import horovod.torch as hvd` to `import fusecomm.torch as hvd`; names, arguments,
defaults and return values are Horovod's (v0.28). Differences: CUDA tensors need a CUDA build
(Adasum on them is staged through host memory); fusecomm.torch.elastic only names
horovod.torch.elastic's API (using it raises NotImplementedError)."""
from fusecomm.torch import elastic
from fusecomm.torch.compression import Compression
from fusecomm.torch.functions import (allgather_object, broadcast_object,
                                      broadcast_optimizer_state, broadcast_parameters)
from fusecomm.torch.mpi_ops import (Adasum, Average, CollectiveError, HorovodInternalError, Max,
                                    Min, NotInitializedError, ProcessSet, Product, Sum,
                                    add_process_set, allgather, allgather_async, allreduce,
                                    allreduce_, allreduce_async, allreduce_async_, alltoall,
                                    alltoall_async, barrier, broadcast, broadcast_,
                                    broadcast_async, broadcast_async_, ccl_built, cross_rank,
                                    cross_size, cuda_built, ddl_built, global_process_set,
                                    gloo_built, gloo_enabled, grouped_allgather,
                                    grouped_allgather_async, grouped_allreduce,
                                    grouped_allreduce_, grouped_allreduce_async,
                                    grouped_allreduce_async_, grouped_reducescatter,
                                    grouped_reducescatter_async, init, is_homogeneous,
                                    is_initialized, join, local_rank, local_size, mpi_built,
                                    mpi_enabled, mpi_threads_supported, nccl_built, poll, rank,
                                    reducescatter, reducescatter_async, remove_process_set,
                                    rocm_built, shutdown, size, sparse_allreduce_async,
                                    start_timeline, stop_timeline, synchronize)
from fusecomm.torch.optimizer import DistributedOptimizer, PartialDistributedOptimizer
from fusecomm.torch.sync_batch_norm import SyncBatchNorm

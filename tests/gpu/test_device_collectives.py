"""The GPU path end to end, under mpirun (scripts in tests/gpu/mp): one rank on NCCL through
every collective; 2 and 4 ranks sharing one GPU (fusecomm stages device tensors through MPI)
with every all-reduce algorithm; DistributedOptimizer on CUDA parameters; CuPy arrays in
fusecomm.ops. Each skips, with the reason, where there is no GPU, no CUDA build of fusecomm or
no torch with CUDA (CuPy: not installed).

On a GPU machine: FUSECOMM_WITH_CUDA=1 pip install . (with nvidia-nccl-cu13 and a CUDA torch),
then python -P -m pytest tests/gpu -v"""
import importlib.util

import pytest

from gpu_available import requires_gpu, run_gpu_ranks

ALGORITHMS = ["ring", "rhd", "hierarchical", "torus2d", "mpi", "auto"]


@requires_gpu
def test_one_rank_nccl_every_collective():
    out = run_gpu_ranks("device_collectives.py", 1, env={"FUSECOMM_GPU_TRANSPORT": "nccl"})
    assert "device collectives ok (nccl" in out


@requires_gpu
@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ranks_sharing_a_gpu_staged_through_mpi(ranks, algorithm):
    env = {"FUSECOMM_GPU_TRANSPORT": "mpi", "FUSECOMM_ALLREDUCE_ALGORITHM": algorithm,
           "FUSECOMM_LOCAL_SIZE": "2", "FUSECOMM_TORUS_X": "2",
           "CUDA_VISIBLE_DEVICES": "0"}
    out = run_gpu_ranks("device_collectives.py", ranks, env=env)
    assert out.count("device collectives ok") == ranks


@requires_gpu
def test_auto_transport_stages_when_ranks_share_a_gpu():
    out = run_gpu_ranks("device_collectives.py", 2, env={"CUDA_VISIBLE_DEVICES": "0",
                                                        "FUSECOMM_LOG_LEVEL": "debug"})
    assert "host staging over MPI" in out


@requires_gpu
@pytest.mark.parametrize("algorithm", ["ring", "rhd", "auto"])
def test_one_rank_nccl_algorithms(algorithm):
    env = {"FUSECOMM_GPU_TRANSPORT": "nccl", "FUSECOMM_ALLREDUCE_ALGORITHM": algorithm}
    run_gpu_ranks("device_collectives.py", 1, env=env)


@requires_gpu
@pytest.mark.parametrize("ranks", [1, 2])
def test_distributed_optimizer_on_cuda_matches_single_process(ranks):
    out = run_gpu_ranks("device_optimizer.py", ranks, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert out.count("matches single-process training") == ranks


@requires_gpu
@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="CuPy is not installed")
@pytest.mark.parametrize("ranks", [1, 2])
def test_cupy_arrays(ranks):
    out = run_gpu_ranks("cupy_ops.py", ranks, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert out.count("CuPy collectives ok") == ranks

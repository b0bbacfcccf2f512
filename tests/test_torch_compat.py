"""Horovod compatibility of fusecomm.torch and of fusecomm.run (issue 13): the multi-rank checks
of tests/mp/torch_compat.py at 2, 3 and 4 ranks, a Horovod-style PyTorch training script run
with only its import changed, Horovod's run API, and single-process checks of error types and of
the optimizer-state helpers' device choice."""
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import mpi_env, run_ranks

torch = pytest.importorskip("torch")
import fusecomm.torch as hvd  # noqa: E402
from fusecomm.torch import functions as hvd_functions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("np_", [2, 3, 4])
def test_torch_compat_multirank(np_):
    # A regression that strands a request shows as a stall: fail with its report, not a hang.
    out = run_ranks("torch_compat.py", np_, env={"FUSECOMM_STALL_SHUTDOWN_SECONDS": "90"},
                    timeout=400)
    assert out.count(f"torch_compat OK on {np_} ranks") == np_, out[-4000:]


@pytest.mark.parametrize("np_", [2, 3])
def test_horovod_style_pytorch_mnist(np_):
    """examples/horovod_style/pytorch_mnist.py is Horovod's PyTorch MNIST example with only the
    import (and the data source) changed; it must train to high accuracy under fusecomm run."""
    cmd = [sys.executable, "-P", "-m", "fusecomm.runner.cli", "run", "-np", str(np_), "--",
           sys.executable, str(ROOT / "examples" / "horovod_style" / "pytorch_mnist.py")]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=500, env=mpi_env())
    assert proc.returncode == 0, proc.stdout[-6000:]
    results = re.findall(r"Test set: Average loss: ([0-9.]+), Accuracy: ([0-9.]+)%", proc.stdout)
    assert len(results) == 2, proc.stdout[-4000:]  # one line per epoch: rank 0 only prints
    assert float(results[-1][1]) > 90.0, proc.stdout[-4000:]
    assert float(results[-1][0]) < float(results[0][0]), results


# ---- fusecomm.run ----------------------------------------------------------------------------

def run_driver(body, timeout=400):
    """Runs `body` in a fresh Python (MPI not initialized there, as for a real driver); returns
    its output. The functions it defines live in __main__, so they travel by value."""
    code = "import fusecomm\n" + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-P", "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, env=mpi_env())
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


@pytest.mark.parametrize("np_", [2, 3])
def test_run_returns_every_ranks_result_in_rank_order(np_):
    out = run_driver(f"""
        import numpy as np

        def work(scale, offset=0):
            fusecomm.init()
            r, n = fusecomm.rank(), fusecomm.size()
            total = fusecomm.allreduce(np.array([r + 1.0]), op=fusecomm.Sum)[0]
            fusecomm.shutdown()
            return {{"rank": r, "size": n, "total": total * scale + offset}}

        results = fusecomm.run(work, args=(2,), kwargs={{"offset": 1}}, num_proc={np_},
                               timeout=300)
        print("RESULTS", results)
        expected = [{{"rank": r, "size": {np_}, "total": {np_ * (np_ + 1)} + 1.0}}
                    for r in range({np_})]
        assert results == expected, (results, expected)
        assert fusecomm.run(lambda: 7, np={np_}, timeout=300) == [7] * {np_}
        import os, tempfile
        log = os.path.join(tempfile.mkdtemp(), "out.txt")

        def greet():
            print("hello from a rank")
            return os.environ["FUSECOMM_CYCLE_TIME_MS"]

        seen = fusecomm.run(greet, num_proc={np_}, settings={{"cycle_time_ms": 3}},
                            output_filename=log, timeout=300)
        assert seen == ["3"] * {np_}, seen
        assert open(log).read().count("hello from a rank") == {np_}, open(log).read()
        print("DRIVER OK")
    """)
    assert "DRIVER OK" in out, out[-4000:]


def test_run_reports_the_failing_rank_and_stops_at_its_timeout():
    out = run_driver("""
        import os, time

        def fails_on_rank_one():
            if int(os.environ["OMPI_COMM_WORLD_RANK"]) == 1:
                raise ValueError("rank one refuses")
            return "fine"

        try:
            fusecomm.run(fails_on_rank_one, num_proc=2, timeout=300)
        except RuntimeError as e:
            message = str(e)
        else:
            raise AssertionError("no error")
        assert "rank 1 failed" in message and "ValueError: rank one refuses" in message, message

        start = time.monotonic()
        try:
            fusecomm.run(time.sleep, args=(600,), num_proc=2, timeout=6)
        except TimeoutError as e:
            assert "did not finish in 6 s" in str(e), e
        else:
            raise AssertionError("no timeout")
        assert time.monotonic() - start < 200, "the job was not stopped"
        print("DRIVER OK")
    """)
    assert "DRIVER OK" in out, out[-4000:]


def test_run_argument_errors():
    def work():
        return 1

    with pytest.raises(ValueError, match="num_proc"):
        hvd_run(work)
    with pytest.raises(ValueError, match="positive integer"):
        hvd_run(work, num_proc=0)
    with pytest.raises(ValueError, match="disagree"):
        hvd_run(work, num_proc=2, np=3)
    with pytest.raises(NotImplementedError, match="min_num_proc"):
        hvd_run(work, num_proc=2, min_num_proc=1)
    with pytest.raises(NotImplementedError, match="MPI"):
        hvd_run(work, num_proc=2, use_mpi=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        hvd_run(work, num_proc=2, not_an_option=1)
    with pytest.raises(TypeError, match="callable"):
        hvd_run(42, num_proc=2)
    with pytest.raises(ValueError, match="unknown settings"):
        hvd_run(work, num_proc=2, settings={"no_such_setting": 1})


def hvd_run(*args, **kwargs):
    import fusecomm

    return fusecomm.run(*args, **kwargs)


# ---- single-process checks -------------------------------------------------------------------

def test_alltoall_bad_splits_raise_value_error_as_in_horovod():
    x = torch.ones(4)
    for splits in ([2.5, 1.5], ["a"], [True, False], torch.tensor([2.0, 2.0]),
                   torch.ones(2, 2, dtype=torch.int32), torch.tensor([True])):
        with pytest.raises(ValueError, match="splits"):
            hvd.alltoall_async(x, splits=splits)


def test_missing_optimizer_state_follows_the_roots_device_choice():
    """A state tensor the root keeps on its parameter's device is created on this rank's
    parameter's device (a GPU one in real jobs; 'meta' stands in for it here), one the root
    keeps on the CPU (Adam's step) on the CPU; a matching tensor of this rank is reused."""
    param = torch.empty(3, 2, device="meta")
    made = hvd_functions._state_tensor(None, (3, 2), torch.float32, True, param)
    assert made.device == param.device and made.shape == (3, 2) and made.dtype == torch.float32
    step = hvd_functions._state_tensor(None, (), torch.float32, False, param)
    assert step.device.type == "cpu"
    mine = torch.empty(3, 2, device="meta")
    assert hvd_functions._state_tensor(mine, (3, 2), torch.float32, True, param) is mine
    assert hvd_functions._state_tensor(mine, (3, 2), torch.float64, True, param) is not mine
    cpu_param = torch.zeros(2)
    assert hvd_functions._describe(torch.zeros(2), cpu_param) == \
        ("tensor", (2,), torch.float32, True)
    assert hvd_functions._describe(5, cpu_param) == ("value", 5)


def test_fresh_optimizer_parameters_get_zero_grads():
    model = torch.nn.Linear(3, 2)
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    optimizer = torch.optim.SGD(list(model.parameters()) + [frozen], lr=0.1)
    model.bias.grad = torch.full((2,), 5.0)  # an existing gradient is kept
    hvd_functions._create_missing_grads(optimizer)
    assert torch.equal(model.weight.grad, torch.zeros(2, 3))
    assert torch.equal(model.bias.grad, torch.full((2,), 5.0))
    assert frozen.grad is None
    sparse = torch.nn.Embedding(4, 2, sparse=True)
    sparse_optimizer = torch.optim.SparseAdam(sparse.parameters())
    hvd_functions._create_missing_grads(sparse_optimizer)
    assert sparse.weight.grad.is_sparse


def test_elastic_names_exist_and_fail_clearly():
    from fusecomm.torch import elastic

    for name in ("State", "ObjectState", "TorchState", "ElasticSampler"):
        with pytest.raises(NotImplementedError, match="elastic"):
            getattr(elastic, name)()
    with pytest.raises(NotImplementedError, match="elastic"):
        hvd.elastic.run(lambda state: None)


def test_partial_distributed_optimizer_rejects_bad_local_layers():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="local_layers"):
        hvd.PartialDistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                        local_layers=[model[0], "x"])
    outsider = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="does not optimize"):
        hvd.PartialDistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                        local_layers=outsider)
    with pytest.raises(ValueError, match="groups"):
        hvd.PartialDistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                        local_layers=model[1], groups=[[model[1].weight]])

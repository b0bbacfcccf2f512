"""fusecomm.torch in one process (size 1): Horovod's API surface and signatures, every op's
result and return convention, gradients, errors for bad input, compression, optimizer
wrapping, broadcasts and SyncBatchNorm. Multi-rank behaviour: test_torch_multirank.py."""
import inspect
import json
import warnings

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fusecomm.torch as hvd  # noqa: E402

DTYPES = [torch.uint8, torch.int8, torch.int32, torch.int64, torch.float16, torch.bfloat16,
          torch.float32, torch.float64, torch.bool]

# Horovod v0.28's horovod.torch names (elastic aside).
HOROVOD_NAMES = """
Compression allgather_object broadcast_object broadcast_optimizer_state broadcast_parameters
allreduce allreduce_async allreduce_ allreduce_async_ grouped_allreduce grouped_allreduce_async
grouped_allreduce_ grouped_allreduce_async_ sparse_allreduce_async allgather allgather_async
grouped_allgather grouped_allgather_async broadcast broadcast_async broadcast_ broadcast_async_
alltoall alltoall_async reducescatter reducescatter_async grouped_reducescatter
grouped_reducescatter_async join barrier poll synchronize init shutdown is_initialized
start_timeline stop_timeline size local_size cross_size rank local_rank cross_rank
mpi_threads_supported mpi_enabled mpi_built gloo_enabled gloo_built nccl_built ddl_built
ccl_built cuda_built rocm_built ProcessSet global_process_set add_process_set remove_process_set
Average Sum Adasum Min Max Product HorovodInternalError DistributedOptimizer SyncBatchNorm
is_homogeneous PartialDistributedOptimizer elastic""".split()

# name -> Horovod's parameters with defaults ("<required>" where there is none).
REQ = "<required>"
SIGNATURES = {
    "allreduce": dict(tensor=REQ, average=None, name=None, compression=hvd.Compression.none,
                      op=None, prescale_factor=1.0, postscale_factor=1.0,
                      process_set=hvd.global_process_set),
    "allreduce_async": dict(tensor=REQ, average=None, name=None, op=None, prescale_factor=1.0,
                            postscale_factor=1.0, process_set=hvd.global_process_set),
    "allreduce_": dict(tensor=REQ, average=None, name=None, op=None, prescale_factor=1.0,
                       postscale_factor=1.0, process_set=hvd.global_process_set),
    "grouped_allreduce": dict(tensors=REQ, average=None, name=None,
                              compression=hvd.Compression.none, op=None, prescale_factor=1.0,
                              postscale_factor=1.0, process_set=hvd.global_process_set),
    "allgather": dict(tensor=REQ, name=None, process_set=hvd.global_process_set),
    "grouped_allgather": dict(tensors=REQ, name=None, process_set=hvd.global_process_set),
    "broadcast": dict(tensor=REQ, root_rank=REQ, name=None, process_set=hvd.global_process_set),
    "broadcast_async_": dict(tensor=REQ, root_rank=REQ, name=None,
                             process_set=hvd.global_process_set),
    "alltoall": dict(tensor=REQ, splits=None, name=None, process_set=hvd.global_process_set),
    "reducescatter": dict(tensor=REQ, name=None, compression=hvd.Compression.none,
                          op=hvd.Average, process_set=hvd.global_process_set,
                          prescale_factor=1.0, postscale_factor=1.0),
    "reducescatter_async": dict(tensor=REQ, name=None, op=hvd.Average,
                                process_set=hvd.global_process_set, prescale_factor=1.0,
                                postscale_factor=1.0),
    "grouped_reducescatter": dict(tensors=REQ, name=None, compression=hvd.Compression.none,
                                  op=hvd.Average, process_set=hvd.global_process_set,
                                  prescale_factor=1.0, postscale_factor=1.0),
    "barrier": dict(process_set=hvd.global_process_set),
    "join": dict(device=-1),
    "start_timeline": dict(file_path=REQ, mark_cycles=False),
    "broadcast_parameters": dict(params=REQ, root_rank=REQ, process_set=hvd.global_process_set),
    "broadcast_optimizer_state": dict(optimizer=REQ, root_rank=REQ,
                                      process_set=hvd.global_process_set),
    "broadcast_object": dict(obj=REQ, root_rank=0, name=None, process_set=hvd.global_process_set),
    "allgather_object": dict(obj=REQ, name=None, process_set=hvd.global_process_set),
    "DistributedOptimizer": dict(optimizer=REQ, named_parameters=None,
                                 compression=hvd.Compression.none, backward_passes_per_step=1,
                                 op=hvd.Average, gradient_predivide_factor=1.0, num_groups=0,
                                 groups=None, sparse_as_dense=False,
                                 process_set=hvd.global_process_set),
    "PartialDistributedOptimizer": dict(optimizer=REQ, named_parameters=None,
                                        compression=hvd.Compression.none,
                                        backward_passes_per_step=1, op=hvd.Average,
                                        gradient_predivide_factor=1.0, num_groups=0,
                                        groups=None, sparse_as_dense=False,
                                        process_set=hvd.global_process_set, local_layers=None),
}


@pytest.fixture(scope="module", autouse=True)
def initialized():
    hvd.init()
    assert hvd.size() == 1 and hvd.rank() == 0
    yield


def data(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-3, 4, shape, generator=g)
    if dtype == torch.bool:
        return values > 0
    if dtype == torch.uint8:
        return values.abs().to(dtype)
    return values.to(dtype)


# ---- API surface ------------------------------------------------------------------------------

def test_horovod_names_exist():
    missing = [name for name in HOROVOD_NAMES if not hasattr(hvd, name)]
    assert not missing, missing
    assert hvd.HorovodInternalError is hvd.CollectiveError
    assert issubclass(hvd.HorovodInternalError, RuntimeError)
    assert (hvd.Sum, hvd.Average, hvd.Min, hvd.Max, hvd.Product) == (0, 1, 2, 3, 4)


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature_matches_horovod(name):
    params = inspect.signature(getattr(hvd, name)).parameters
    got = {k: (REQ if p.default is inspect.Parameter.empty else p.default)
           for k, p in params.items()}
    assert got == SIGNATURES[name]


def test_basics_at_size_one():
    assert hvd.is_initialized()
    assert (hvd.local_rank(), hvd.local_size(), hvd.cross_rank(), hvd.cross_size()) == (0, 1, 0, 1)
    assert hvd.mpi_built() and hvd.mpi_enabled() and not hvd.gloo_built()
    assert hvd.global_process_set.size() == 1 and hvd.global_process_set.rank() == 0


# ---- collectives at size 1 --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_collectives_return_the_input_at_size_one(dtype):
    x = data((5, 3), dtype)
    ops = [hvd.Sum, hvd.Min, hvd.Max, hvd.Product] + ([] if dtype == torch.bool else [hvd.Average])
    for op in ops:
        out = hvd.allreduce(x, op=op)
        assert out.dtype == dtype and torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    assert torch.equal(hvd.allgather(x), x)
    assert torch.equal(hvd.broadcast(x, 0), x)
    assert torch.equal(hvd.reducescatter(x, op=hvd.Sum if dtype == torch.bool else hvd.Average), x)
    assert torch.equal(hvd.grouped_allgather([x, x[:2]])[1], x[:2])
    assert all(torch.equal(a, b) for a, b in zip(hvd.grouped_allreduce([x, x[0]], op=hvd.Max),
                                                 [x, x[0]]))


def test_empty_scalar_and_large_tensors():
    for shape in [(0,), (), (65537,), (4, 0, 3)]:
        x = data(shape, torch.float32)
        assert torch.equal(hvd.allreduce(x), x)
        assert hvd.allreduce(x).shape == x.shape
        if len(shape):
            assert torch.equal(hvd.allgather(x), x)
    bf = data((1021,), torch.bfloat16)
    assert torch.equal(hvd.allgather(bf), bf)  # engine bytes viewed as bfloat16


def test_scaling():
    x = data((7,), torch.float64)
    assert torch.equal(hvd.allreduce(x, op=hvd.Sum, prescale_factor=0.5, postscale_factor=6),
                       x * 3)
    assert torch.equal(hvd.allreduce(x, average=False), x)
    out = hvd.reducescatter(x.view(7, 1), op=hvd.Sum, prescale_factor=2.0)
    assert torch.equal(out, x.view(7, 1) * 2)


def test_in_place_ops_write_the_callers_tensor():
    base = data((4, 6), torch.float32)
    expected = base.clone() * 2
    view = base.t()  # non-contiguous: worked on as a copy, written back
    assert hvd.allreduce_(view, op=hvd.Sum, prescale_factor=2.0) is view
    assert torch.equal(base, expected)
    y = data((3,), torch.int64)
    handle = hvd.allreduce_async_(y, op=hvd.Sum, postscale_factor=3)
    assert hvd.synchronize(handle) is y and torch.equal(y, data((3,), torch.int64) * 3)
    z = data((4, 6), torch.float32)[:, ::2]
    assert hvd.broadcast_(z, 0) is z
    tensors = [data((2,), torch.float32), data((3,), torch.int32)]
    assert all(a is b for a, b in zip(hvd.grouped_allreduce_(tensors), tensors))
    leaf = torch.ones(3, 2, requires_grad=True)  # a view of a leaf that requires grad
    hvd.allreduce_(leaf.t(), op=hvd.Sum, prescale_factor=2.0)
    assert torch.equal(leaf.detach(), torch.full((3, 2), 2.0))


def test_async_handles():
    x = data((9,), torch.float32)
    handle = hvd.allreduce_async(x, name="async.one")
    while not hvd.poll(handle):
        pass
    assert torch.equal(hvd.synchronize(handle), x)
    group = hvd.grouped_allreduce_async([x, x * 2], op=hvd.Sum)
    assert isinstance(hvd.poll(group), bool)
    out = hvd.synchronize(group)
    assert isinstance(out, list) and torch.equal(out[1], x * 2)
    assert torch.equal(hvd.synchronize(hvd.allgather_async(x)), x)
    assert torch.equal(hvd.synchronize(hvd.broadcast_async(x, 0)), x)
    assert torch.equal(hvd.synchronize(hvd.reducescatter_async(x.view(9, 1))), x.view(9, 1))
    rs = hvd.synchronize(hvd.grouped_reducescatter_async([x.view(9, 1)], op=hvd.Sum))
    assert torch.equal(rs[0], x.view(9, 1))
    assert torch.equal(hvd.synchronize(hvd.grouped_allgather_async([x]))[0], x)
    with pytest.raises(ValueError, match="unknown handle"):
        hvd.synchronize(handle)  # already synchronized


def test_alltoall_return_conventions():
    x = data((6, 2), torch.float32)
    out = hvd.alltoall(x)  # no splits: the tensor alone
    assert isinstance(out, torch.Tensor) and torch.equal(out, x)
    out, received = hvd.alltoall(x, splits=[6])  # splits: (tensor, received splits)
    assert torch.equal(out, x) and received.dtype == torch.int32 and received.tolist() == [6]
    out, received = hvd.alltoall(x, splits=torch.tensor([6]))
    assert received.tolist() == [6]
    out, received = hvd.synchronize(hvd.alltoall_async(x))  # async always gives both
    assert torch.equal(out, x) and received.tolist() == [6]


def test_barrier():
    assert hvd.barrier() is None


# ---- gradients at size 1 ----------------------------------------------------------------------

def test_gradients_at_size_one():
    g = torch.arange(1.0, 7.0, dtype=torch.float64).view(3, 2)
    cases = {
        "allreduce": (lambda x: hvd.allreduce(x, op=hvd.Sum, prescale_factor=2.0), g * 2),
        "allreduce average": (lambda x: hvd.allreduce(x), g),
        "allgather": (lambda x: hvd.allgather(x), g),
        "broadcast": (lambda x: hvd.broadcast(x, 0), g),
        "alltoall": (lambda x: hvd.alltoall(x, splits=[3])[0], g),
        "reducescatter": (lambda x: hvd.reducescatter(x, op=hvd.Sum), g),
        "grouped_allreduce": (lambda x: hvd.grouped_allreduce([x])[0], g),
        "fp16 compression": (lambda x: hvd.allreduce(x, compression=hvd.Compression.fp16), g),
    }
    for label, (fn, expected) in cases.items():
        x = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
        (fn(x) * g).sum().backward()
        assert torch.equal(x.grad, expected), label


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.complex64, torch.uint32, torch.float8_e4m3fn]
                         if hasattr(torch, "float8_e4m3fn") else [torch.complex64])
def test_unsupported_dtypes_name_the_supported_ones(dtype):
    x = torch.zeros(3).to(dtype)
    for fn in (hvd.allreduce, hvd.allgather, lambda t: hvd.broadcast_(t, 0), hvd.alltoall,
               hvd.reducescatter):
        with pytest.raises(TypeError, match="torch.bfloat16"):
            fn(x)
    with pytest.raises(TypeError, match=str(dtype)):
        hvd.grouped_allreduce([torch.zeros(2), x])
    with pytest.raises(ValueError, match=str(dtype)):  # what Horovod raises
        hvd.allreduce(x)


def test_bad_input():
    x = torch.ones(4)
    with pytest.raises(TypeError, match="torch.Tensor"):
        hvd.allreduce_async([1.0, 2.0])
    with pytest.raises(TypeError, match="sparse"):
        hvd.allreduce(torch.eye(3).to_sparse())
    with pytest.raises(ValueError, match="meta"):
        hvd.allreduce(torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match="either op= or"):
        hvd.allreduce(x, average=True, op=hvd.Sum)
    with pytest.raises(NotImplementedError, match="Adasum"):
        hvd.allreduce(x, op=hvd.Adasum)
    with pytest.raises(ValueError, match="unknown reduce op"):
        hvd.allreduce(x, op=17)
    with pytest.raises(ValueError, match="Average is not defined for bool"):
        hvd.allreduce(torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="cannot be scaled"):
        hvd.allreduce(torch.ones(2, dtype=torch.bool), op=hvd.Sum, prescale_factor=2)
    with pytest.raises(TypeError, match="prescale_factor"):
        hvd.allreduce(x, prescale_factor="two")
    with pytest.raises(ValueError, match="at least one dimension"):
        hvd.allgather(torch.tensor(1.0))
    with pytest.raises(ValueError, match="integers"):  # Horovod: ValueError
        hvd.alltoall(x, splits=[2.5, 1.5])
    with pytest.raises(ValueError, match="sum to"):
        hvd.alltoall(x, splits=[3])
    with pytest.raises(ValueError, match="out of range"):
        hvd.broadcast(x, 1)
    with pytest.raises(TypeError, match="root_rank"):
        hvd.broadcast(x, "zero")
    with pytest.raises(TypeError, match="name"):
        hvd.allreduce(x, name=3)
    with pytest.raises(ValueError, match="at least one tensor"):
        hvd.grouped_allreduce_async([])
    with pytest.raises(ValueError, match="has not been added"):
        hvd.allreduce(x, process_set=hvd.ProcessSet([0]))
    with pytest.raises(NotImplementedError, match="gradient of reducescatter"):
        y = torch.ones(2, 1, requires_grad=True)
        hvd.reducescatter(y, op=hvd.Max).sum().backward()


def test_join_and_timeline_at_size_one(tmp_path):
    assert hvd.join() == 0
    path = tmp_path / "timeline.json"
    hvd.start_timeline(str(path), mark_cycles=False)
    hvd.allreduce(torch.ones(4), name="timed")
    hvd.stop_timeline()
    events = json.loads(path.read_text())
    assert any(e.get("args", {}).get("name") == "allreduce.timed" for e in events), events[:5]


# ---- compression ------------------------------------------------------------------------------

@pytest.mark.parametrize("compression,wire", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_cast_compression(compression, wire):
    compressor = getattr(hvd.Compression, compression)
    x = torch.tensor([1.0, 2.5, -3.0], dtype=torch.float64)
    sent, ctx = compressor.compress(x)
    assert sent.dtype == wire
    back = compressor.decompress(sent, ctx)
    assert back.dtype == torch.float64 and torch.equal(back, x)
    ints = torch.arange(3)
    sent, ctx = compressor.compress(ints)
    assert sent is ints and compressor.decompress(sent, ctx) is ints
    assert hvd.allreduce(x, compression=compressor).dtype == torch.float64


def test_no_compression_is_identity():
    x = torch.ones(2)
    sent, ctx = hvd.Compression.none.compress(x)
    assert sent is x and hvd.Compression.none.decompress(sent, ctx) is x


# ---- DistributedOptimizer ---------------------------------------------------------------------

def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def train(model, opt, steps=3, scheduler=None):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return [p.detach().clone() for p in model.parameters()]


def test_distributed_optimizer_matches_plain_optimizer_at_size_one():
    plain_model = make_model()
    plain = train(plain_model, torch.optim.Adam(plain_model.parameters(), lr=0.01))
    model = make_model()
    opt = hvd.DistributedOptimizer(torch.optim.Adam(model.parameters(), lr=0.01),
                                   named_parameters=model.named_parameters())
    assert isinstance(opt, torch.optim.Adam) and type(opt).__name__ == "Adam"
    got = train(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(got, plain))


def test_distributed_optimizer_keeps_state_defaults_and_works_with_schedulers():
    model = make_model()
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, base, steps=1)
    opt = hvd.DistributedOptimizer(base)
    assert opt.defaults["momentum"] == 0.9
    assert set(opt.state) == set(base.state)  # momentum buffers carried over
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "step() before optimizer.step()" warning
        train(model, opt, steps=2, scheduler=scheduler)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    loss = opt.step(lambda: torch.tensor(1.5))  # closure
    assert loss.item() == 1.5


def test_distributed_optimizer_rejects_bad_arguments():
    model = make_model()

    def sgd():
        return torch.optim.SGD(model.parameters(), lr=0.1)

    with pytest.raises(ValueError, match="tuples"):
        hvd.DistributedOptimizer(sgd(), named_parameters=list(model.parameters()))
    with pytest.raises(ValueError, match="unique"):
        hvd.DistributedOptimizer(sgd(), named_parameters=[("w", p) for p in model.parameters()])
    with pytest.raises(ValueError, match="not named"):
        hvd.DistributedOptimizer(sgd(), named_parameters=list(model.named_parameters())[:2])
    with pytest.raises(ValueError, match="gradient_predivide_factor"):
        hvd.DistributedOptimizer(sgd(), op=hvd.Sum, gradient_predivide_factor=2.0)
    with pytest.raises(NotImplementedError, match="Adasum"):
        hvd.DistributedOptimizer(sgd(), op=hvd.Adasum)
    with pytest.raises(ValueError, match="groups"):
        hvd.DistributedOptimizer(sgd(), groups=-1)
    with pytest.raises(ValueError, match="only appear once"):
        p = next(model.parameters())
        hvd.DistributedOptimizer(sgd(), groups=[[p], [p]])
    with pytest.raises(ValueError, match="backward_passes_per_step"):
        hvd.DistributedOptimizer(sgd(), backward_passes_per_step=0)
    with pytest.raises(ValueError, match="already"):
        hvd.DistributedOptimizer(hvd.DistributedOptimizer(sgd()))
    with pytest.warns(DeprecationWarning, match="num_groups"):
        hvd.DistributedOptimizer(sgd(), num_groups=2)


# ---- broadcasts -------------------------------------------------------------------------------

def test_broadcast_helpers_at_size_one():
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_parameters(model.named_parameters(), root_rank=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    with pytest.raises(ValueError, match="invalid params"):
        hvd.broadcast_parameters(3, root_rank=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train(model, opt, steps=1)
    state = {k: v.clone() for k, v in opt.state[next(model.parameters())].items()}
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    after = opt.state[next(model.parameters())]
    assert all(torch.equal(after[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="LBFGS"):
        hvd.broadcast_optimizer_state(torch.optim.LBFGS(model.parameters()), root_rank=0)
    assert hvd.broadcast_object({"a": [1, 2]}) == {"a": [1, 2]}
    assert hvd.allgather_object(("x", 3)) == [("x", 3)]


# ---- SyncBatchNorm ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 3), (6, 3, 5), (4, 3, 2, 2)])
def test_sync_batch_norm_is_batch_norm_at_size_one(shape):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    ref = nn.BatchNorm1d(3) if len(shape) < 4 else nn.BatchNorm2d(3)
    sync = hvd.SyncBatchNorm(3)
    xr, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    up = torch.randn(shape, generator=g)
    (ref(xr) * up).sum().backward()
    (sync(xs) * up).sum().backward()
    assert torch.allclose(xs.grad, xr.grad, atol=1e-6)
    assert torch.allclose(sync.running_var, ref.running_var)
    ref.eval()
    sync.eval()
    assert torch.allclose(sync(x), ref(x))
    with pytest.raises(ValueError, match="2D"):
        sync(torch.ones(3))


def test_convert_sync_batchnorm():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2),
                          nn.Sequential(nn.BatchNorm1d(4)))
    model[1].running_mean.fill_(3)
    weight = model[1].weight
    converted = hvd.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted[1], hvd.SyncBatchNorm)
    assert isinstance(converted[2][0], hvd.SyncBatchNorm)
    assert converted[1].weight is weight and torch.equal(converted[1].running_mean,
                                                         torch.full((2,), 3.0))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_sync_batch_norm_function_matches_batch_norm(momentum):
    # The synchronized path itself (a 1-rank set would take torch's own batch_norm).
    from fusecomm.torch.sync_batch_norm import _SyncBatchNormFunction

    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 3, 4, generator=g, dtype=torch.float64) * 2 + 1
    up = torch.randn(x.shape, generator=g, dtype=torch.float64)
    ref = nn.BatchNorm1d(3, momentum=momentum).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5, generator=g)
        ref.bias.uniform_(-1, 1, generator=g)
    weight = ref.weight.detach().clone().requires_grad_()
    bias = ref.bias.detach().clone().requires_grad_()
    running_mean = torch.zeros(3, dtype=torch.float64)
    running_var = torch.ones(3, dtype=torch.float64)
    xr, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ref(xr) * up).sum().backward()
    factor = 1.0 if momentum is None else momentum  # first batch of a cumulative average
    y = _SyncBatchNormFunction.apply(xs, weight, bias, running_mean, running_var, 1e-5, factor,
                                     hvd.global_process_set)
    (y * up).sum().backward()
    for got, exp in [(xs.grad, xr.grad), (weight.grad, ref.weight.grad),
                     (bias.grad, ref.bias.grad), (running_mean, ref.running_mean),
                     (running_var, ref.running_var)]:
        assert torch.allclose(got, exp, rtol=1e-10, atol=1e-12)

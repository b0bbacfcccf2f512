"""The Python frontend core (fusecomm/_frontend): handle, naming, the gradient rules table and
the optimizer rules, and that the torch and TensorFlow faces read the same rules."""
import numpy as np
import pytest

import fusecomm as hvd
from fusecomm import _core, _engine
from fusecomm._engine import ALLGATHER, ALLREDUCE, ALLTOALL, BROADCAST, REDUCESCATTER
from fusecomm._frontend import gradients, naming
from fusecomm._frontend import optimizer_rules as rules
from fusecomm._frontend.handle import Handle
from fusecomm._frontend.validate import SplitsError, split_list


@pytest.fixture(scope="module", autouse=True)
def engine():
    hvd.init()
    yield
    hvd.shutdown()


# ---- Handle -----------------------------------------------------------------------------------

def test_one_handle_type_for_single_grouped_and_alltoall_results():
    x = np.arange(6, dtype=np.float32)
    single = hvd.allreduce_async(x, op=hvd.Sum, name="core.single")
    members = hvd.grouped_allreduce_async([x, x * 2], op=hvd.Sum, name="core.group")
    pair = hvd.alltoall_async(x.reshape(6, 1), name="core.pair")
    assert all(isinstance(h, Handle) for h in [single, pair, *members])
    group = Handle.group(members)
    assert np.array_equal(hvd.synchronize(single), x)
    assert [r.tolist() for r in hvd.synchronize(group)] == [x.tolist(), (x * 2).tolist()]
    rows, splits = hvd.synchronize(pair)
    assert rows.ravel().tolist() == x.tolist() and splits.tolist() == [6]
    for h in (single, group, pair):
        with pytest.raises(ValueError, match="unknown handle"):
            hvd.synchronize(h)
        with pytest.raises(ValueError, match="unknown handle"):
            hvd.poll(h)
    for not_a_handle in (7, None, lambda: 1, [single]):
        with pytest.raises(ValueError, match="unknown handle"):
            hvd.synchronize(not_a_handle)


def test_a_group_waits_for_every_member_when_one_fails(monkeypatch):
    handles = [hvd.allreduce_async(np.ones(2), name=f"core.fail.{i}") for i in range(3)]
    group = Handle.group(handles)
    waited, real = [], _engine.synchronize

    def failing_second(engine_id):
        waited.append(engine_id)
        result = real(engine_id)
        if len(waited) == 2:
            raise _engine.CollectiveError("member 2 failed")
        return result

    monkeypatch.setattr(_engine, "synchronize", failing_second)
    with pytest.raises(_engine.CollectiveError, match="member 2 failed"):
        group.wait()
    assert len(waited) == 3  # no engine handle left behind
    with pytest.raises(ValueError, match="unknown handle"):
        group.wait()


def test_the_binding_takes_one_request_object():
    request = _core.Request()
    assert (request.op_type, request.device, request.prescale, request.algorithm) == \
        (0, -1, 1.0, "auto")
    x, out = np.arange(4, dtype=np.float64), np.empty(4)
    request.name, request.dtype, request.shape = "core.raw", _engine.DTYPE_CODES["float64"], [4]
    address, out_address = (a.__array_interface__["data"][0] for a in (x, out))
    engine_id = _engine.submit(request, address, out_address, (x, out), lambda result: out)
    assert _engine.synchronize(engine_id).tolist() == [0, 1, 2, 3]
    request.dtype = 99
    with pytest.raises(ValueError, match="type"):
        _core.enqueue(request, address, out_address)


def test_a_repeated_call_keeps_every_check_of_its_first():
    """The second and later synchronous calls of a name run from the request of the first; an
    array or argument that the first call would refuse is refused just the same."""
    x = np.arange(4, dtype=np.float32)
    for _ in range(2):  # the first call builds the request, the second reuses it
        assert np.array_equal(hvd.allreduce_(x.copy(), op=hvd.Sum, name="core.repeat",
                                             prescale_factor=2.0), x * 2)
    read_only = x.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        hvd.allreduce_(read_only, op=hvd.Sum, name="core.repeat", prescale_factor=2.0)
    strided = np.arange(8, dtype=np.float32)[::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        hvd.allreduce_(strided, op=hvd.Sum, name="core.repeat", prescale_factor=2.0)
    with pytest.raises(TypeError, match="byte order"):
        hvd.allreduce_(x.astype(">f4"), op=hvd.Sum, name="core.repeat", prescale_factor=2.0)
    with pytest.raises(TypeError, match="algorithm"):
        hvd.allreduce_(x.copy(), op=hvd.Sum, name="core.repeat", prescale_factor=2.0,
                       algorithm=["ring"])
    with pytest.raises(ValueError, match="finite"):
        hvd.allreduce_(x.copy(), op=hvd.Sum, name="core.repeat", prescale_factor=float("nan"))
    with pytest.raises(TypeError, match="finite number"):
        hvd.allreduce_(x.copy(), op=hvd.Sum, name="core.repeat", prescale_factor=2 + 0j)
    # Scales the full path converts: a 0-d array, a NumPy scalar, an int.
    for scale in (np.array(2.0), np.float32(2.0), 2):
        assert np.array_equal(hvd.allreduce_(x.copy(), op=hvd.Sum, name="core.repeat",
                                             prescale_factor=scale), x * 2)
    # Not an ndarray, or read-only but not written to: the whole way, and right.
    assert np.array_equal(hvd.allreduce([0.0, 1.0, 2.0, 3.0], op=hvd.Sum, name="core.repeat.l"),
                          x.astype(np.float64))
    assert np.array_equal(hvd.allreduce(read_only, op=hvd.Sum, name="core.repeat.ro"), x)
    assert np.array_equal(hvd.allreduce(read_only, op=hvd.Sum, name="core.repeat.ro"), x)


# ---- naming and validation --------------------------------------------------------------------

def test_names_count_per_operation_and_process_set():
    naming.reset()
    assert naming.engine_name(ALLREDUCE, None, 0) == "allreduce.noname.0"
    assert naming.engine_name(ALLREDUCE, None, 3) == "allreduce.noname.set3.0"
    assert naming.engine_name(ALLREDUCE, None, 0) == "allreduce.noname.1"
    assert naming.engine_name(BROADCAST, None, 0) == "broadcast.noname.0"
    assert naming.engine_name(ALLREDUCE, "w", 0) == "w"
    assert naming.engine_name(ALLREDUCE, "w", 0, prefix_op=True) == "allreduce.w"
    members = naming.member_names("allreduce.w", 2)
    assert members == ["allreduce.w.0", "allreduce.w.1"]
    assert naming.engine_name(ALLREDUCE, members[1], 0, prefix_op=True) == "allreduce.w.1"
    with pytest.raises(TypeError, match="string"):
        naming.engine_name(ALLREDUCE, 5, 0)
    with pytest.raises(ValueError, match="empty"):
        naming.engine_name(ALLREDUCE, "", 0)


def test_splits_are_checked_once_for_every_face():
    assert split_list(None) is None
    assert split_list(np.array([1, 2], np.uint8)) == [1, 2]
    for bad in ([1.5, 2], np.array([1.0, 2.0]), [True, 1], np.ones((2, 2), np.int32), 3):
        with pytest.raises(SplitsError):
            split_list(bad)
    assert issubclass(SplitsError, TypeError) and issubclass(SplitsError, ValueError)
    with pytest.raises(ValueError, match="empty"):
        split_list([])


# ---- gradient rules ---------------------------------------------------------------------------

def test_rules_table_holds_horovods_conventions():
    same = gradients.backward_rule(ALLREDUCE, hvd.Sum, 2.0, 3.0, size=4)
    assert (same.collective, same.op, same.prescale, same.postscale, same.keep) == \
        (ALLREDUCE, hvd.Sum, 2.0, 3.0, gradients.KEEP_ALL)
    gather = gradients.backward_rule(ALLGATHER, size=4)
    assert (gather.collective, gather.op, gather.keep) == \
        (ALLREDUCE, hvd.Average, gradients.KEEP_OWN_ROWS)
    root = gradients.backward_rule(BROADCAST, size=4)
    assert (root.collective, root.op, root.keep) == (ALLREDUCE, hvd.Average,
                                                     gradients.KEEP_ON_ROOT)
    summed = gradients.backward_rule(REDUCESCATTER, hvd.Sum, 0.5, 3.0, size=4)
    assert (summed.collective, summed.multiplier) == (ALLGATHER, 4 * 0.5 * 3.0)
    assert gradients.backward_rule(REDUCESCATTER, hvd.Average, size=4).multiplier == 1.0
    assert gradients.backward_rule(ALLTOALL).collective == ALLTOALL
    for op_type in (ALLREDUCE, REDUCESCATTER):
        with pytest.raises(NotImplementedError, match="Sum and Average"):
            gradients.backward_rule(op_type, hvd.Max)
    assert gradients.own_row_offsets([[2, 1], [3, 0], [1, 4]], 2) == [5, 1]
    assert gradients.sparse_scale(hvd.Average, 4, 2.0) == 0.5
    with pytest.raises(NotImplementedError, match="Sum and Average"):
        gradients.sparse_scale(hvd.Min, 2)


def _torch_and_tf_gradients(op_type_call):
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("tensorflow")
    import fusecomm.tensorflow as hvd_tf
    import fusecomm.torch as hvd_torch

    x = torch.arange(1.0, 5.0).reshape(4, 1).requires_grad_()
    op_type_call(hvd_torch, x).sum().backward()
    xt = tf.reshape(tf.range(1.0, 5.0), [4, 1])
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = tf.reduce_sum(op_type_call(hvd_tf, xt))
    return x.grad.flatten().tolist(), tape.gradient(y, xt).numpy().ravel().tolist()


def test_torch_and_tensorflow_read_the_same_rules_table(monkeypatch):
    # Horovod's reducescatter gradient carries the scale factors (TensorFlow's used to drop them).
    def scattered(face, x):
        return face.reducescatter(x, op=hvd.Sum, prescale_factor=2.0, postscale_factor=1.5)

    assert _torch_and_tf_gradients(scattered) == ([3.0] * 4, [3.0] * 4)
    # A changed rule changes both faces: they read the one table.
    seen = []

    def doubled(op, prescale, postscale, size):
        seen.append(size)
        return gradients.BackwardRule(ALLREDUCE, hvd.Sum, 1.0, 1.0, 2.0, gradients.KEEP_ALL)

    monkeypatch.setitem(gradients.RULES, BROADCAST, doubled)
    got = _torch_and_tf_gradients(lambda face, x: face.broadcast(x, 0))
    assert got == ([2.0] * 4, [2.0] * 4) and seen == [1, 1]


# ---- optimizer rules --------------------------------------------------------------------------

def test_optimizer_rules():
    assert rules.check_predivide(2.0, hvd.Average) == 2.0
    assert rules.check_predivide(-2.0, hvd.Average) == -2.0  # Horovod: any non-zero factor
    for factor, op in ((0.0, hvd.Average), (2.0, hvd.Sum), (float("nan"), hvd.Average)):
        with pytest.raises(ValueError, match="gradient_predivide_factor"):
            rules.check_predivide(factor, op)
    assert rules.reduction_scales(hvd.Average, 4.0) == (0.25, 4.0)
    assert rules.reduction_scales(hvd.Sum, 1.0) == (1.0, 1.0)
    assert rules.check_backward_passes(np.int64(3)) == 3
    for bad in (0, -1, 1.5, 2.0, True, "2", None):
        with pytest.raises(ValueError, match="backward_passes_per_step"):
            rules.check_backward_passes(bad)
    a, b = object(), object()
    assert rules.check_groups([[a], [b]]) == [[a], [b]]
    with pytest.warns(DeprecationWarning, match="num_groups"):
        assert rules.check_groups(None, num_groups=3) == 3
    for bad in (0, -1, True, 1.5, [[a], [a]], [a]):
        with pytest.raises(ValueError, match="groups"):
            rules.check_groups(bad)
    with pytest.raises(ValueError, match="consist of"):
        rules.check_groups([[a]], is_member=lambda p: False)
    assert rules.split_evenly(list(range(5)), 3) == [[0, 1], [2, 3], [4]]
    assert rules.submission_order(4, [[3, 9], [1]], {3: 3, 1: 1}.get) == [3, 1, 0, 2]
    assert rules.submission_order(3, 2, None) == [0, 1, 2]


def test_torch_and_tensorflow_optimizers_validate_alike():
    torch = pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    import fusecomm.tensorflow as hvd_tf
    import fusecomm.tensorflow.keras as hvd_keras
    import fusecomm.torch as hvd_torch
    import tensorflow as tf

    model = torch.nn.Linear(2, 1)

    def torch_opt(**kwargs):
        return hvd_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                              named_parameters=model.named_parameters(), **kwargs)

    def tf_tape(**kwargs):
        return hvd_tf.DistributedGradientTape(tf.GradientTape(), **kwargs)

    def keras_opt(**kwargs):
        return hvd_keras.DistributedOptimizer(keras.optimizers.SGD(), **kwargs)

    for bad in (dict(gradient_predivide_factor=0.0),
                dict(gradient_predivide_factor=2.0, op=hvd.Sum), dict(groups=0)):
        for make in (torch_opt, tf_tape, keras_opt):
            with pytest.raises(ValueError, match="gradient_predivide_factor|groups"):
                make(**bad)
    for passes in (0, 1.5, 2.0):
        for make in (torch_opt, keras_opt):
            with pytest.raises(ValueError, match="backward_passes_per_step"):
                make(backward_passes_per_step=passes)
    assert torch_opt(gradient_predivide_factor=-2.0).gradient_predivide_factor == -2.0
    tf_tape(gradient_predivide_factor=-2.0)

"""Single-process tests of fusecomm.tensorflow and fusecomm.tensorflow.keras: the API surface,
errors on bad input (eagerly and while tracing), tf.function tracing, the Keras optimizer and
callbacks. Multi-rank behaviour: tests/test_tensorflow_multirank.py."""
import inspect
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import fusecomm  # noqa: E402
import fusecomm.tensorflow as hvd  # noqa: E402
import fusecomm.tensorflow.keras as hvd_keras  # noqa: E402
from fusecomm.tensorflow import mpi_ops  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def engine():
    hvd.init()
    yield
    hvd.shutdown()


# --- API surface ---------------------------------------------------------------------------------

HOROVOD_TF_NAMES = """init shutdown is_initialized size local_size cross_size rank local_rank
cross_rank is_homogeneous mpi_threads_supported mpi_enabled mpi_built gloo_enabled gloo_built
nccl_built ddl_built ccl_built cuda_built rocm_built ProcessSet global_process_set add_process_set
remove_process_set Average Sum Adasum Min Max Product Compression allreduce grouped_allreduce
allgather grouped_allgather broadcast broadcast_ alltoall reducescatter grouped_reducescatter join
barrier broadcast_variables broadcast_object allgather_object DistributedGradientTape
DistributedOptimizer size_op rank_op local_size_op local_rank_op process_set_included_op
HorovodInternalError""".split()

HOROVOD_KERAS_NAMES = """init shutdown is_initialized size local_size cross_size rank local_rank
cross_rank mpi_built nccl_built Average Sum Compression ProcessSet global_process_set
add_process_set remove_process_set DistributedOptimizer allreduce allgather broadcast
reducescatter broadcast_object allgather_object callbacks""".split()


def test_horovod_names_exist():
    assert [n for n in HOROVOD_TF_NAMES if not hasattr(hvd, n)] == []
    assert [n for n in HOROVOD_KERAS_NAMES if not hasattr(hvd_keras, n)] == []
    for name in ("BroadcastGlobalVariablesCallback", "MetricAverageCallback",
                 "LearningRateWarmupCallback", "LearningRateScheduleCallback"):
        assert issubclass(getattr(hvd_keras.callbacks, name), keras.callbacks.Callback)


def defaults(fn):
    return {k: v.default for k, v in inspect.signature(fn).parameters.items()}


def test_signatures_follow_horovod():
    none = hvd.Compression.none
    assert defaults(hvd.allreduce) == {
        "tensor": inspect.Parameter.empty, "average": None, "device_dense": "",
        "device_sparse": "", "compression": none, "op": None, "prescale_factor": 1.0,
        "postscale_factor": 1.0, "name": None, "process_set": hvd.global_process_set}
    assert defaults(hvd.DistributedGradientTape) == {
        "gradtape": inspect.Parameter.empty, "device_dense": "", "device_sparse": "",
        "compression": none, "sparse_as_dense": False, "op": hvd.Average,
        "gradient_predivide_factor": 1.0, "num_groups": 0, "groups": None,
        "process_set": hvd.global_process_set}
    assert defaults(hvd_keras.DistributedOptimizer) == {
        "optimizer": inspect.Parameter.empty, "name": None, "device_dense": "",
        "device_sparse": "", "compression": none, "sparse_as_dense": False,
        "gradient_predivide_factor": 1.0, "op": hvd.Average, "backward_passes_per_step": 1,
        "average_aggregated_gradients": False, "groups": None,
        "process_set": hvd.global_process_set}
    assert list(defaults(hvd.allgather)) == ["tensor", "name", "process_set"]
    assert list(defaults(hvd.broadcast)) == ["tensor", "root_rank", "name", "process_set"]
    assert list(defaults(hvd.alltoall)) == ["tensor", "splits", "name", "process_set"]
    assert defaults(hvd_keras.callbacks.LearningRateWarmupCallback) == {
        "initial_lr": inspect.Parameter.empty, "warmup_epochs": 5, "momentum_correction": True,
        "steps_per_epoch": None, "verbose": 0}
    assert defaults(hvd_keras.callbacks.LearningRateScheduleCallback) == {
        "initial_lr": inspect.Parameter.empty, "multiplier": inspect.Parameter.empty,
        "start_epoch": 0, "end_epoch": None, "staircase": True, "momentum_correction": True,
        "steps_per_epoch": None}


# --- results on one rank, eager and traced -------------------------------------------------------


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64", "float16", "bfloat16", "float32",
                                   "float64", "bool"])
def test_single_rank_identities(compiled, dtype):
    x = tf.cast(tf.reshape(tf.range(12) % 3, [4, 3]), dtype)

    def ops(t):
        reduce_op = hvd.Max if dtype == "bool" else hvd.Average
        return [hvd.allreduce(t, op=reduce_op), hvd.allreduce(t, op=hvd.Sum),
                hvd.allgather(t), hvd.broadcast(t, 0), hvd.reducescatter(t, op=hvd.Sum),
                hvd.alltoall(t), *hvd.grouped_allreduce([t, t], op=hvd.Max)]

    fn = tf.function(ops) if compiled else ops
    for out in fn(x):
        assert out.dtype == x.dtype and out.shape == x.shape
        assert np.array_equal(np.asarray(out), np.asarray(x))
    received = (tf.function(hvd.alltoall) if compiled else hvd.alltoall)(x, splits=[4])
    assert received[1].numpy().tolist() == [4]


def test_static_shapes_and_single_trace():
    shapes = {}

    @tf.function
    def fn(x, unknown):
        shapes["allreduce"] = hvd.allreduce(x).shape
        shapes["allgather"] = hvd.allgather(x).shape
        shapes["reducescatter"] = hvd.reducescatter(x).shape
        shapes["alltoall"] = hvd.alltoall(x, splits=[5])[1].shape
        shapes["unknown"] = hvd.allreduce(unknown).shape
        return hvd.allreduce(x)

    spec = tf.TensorSpec(None, tf.float32)
    concrete = fn.get_concrete_function(tf.TensorSpec([5, 2], tf.float32), spec)
    assert shapes["allreduce"] == (5, 2)
    assert shapes["allgather"].as_list() == [None, 2]
    assert shapes["reducescatter"] == (5, 2)  # one rank keeps every row
    assert shapes["alltoall"] == (1,)
    assert shapes["unknown"].rank is None
    for _ in range(3):
        concrete(tf.ones([5, 2]), tf.ones([7]))
    assert fn.experimental_get_tracing_count() == 1


def test_a_batch_is_one_numpy_function_and_submits_before_waiting(monkeypatch):
    events = []
    submit, sync = fusecomm._engine.submit, fusecomm._engine.synchronize
    monkeypatch.setattr(fusecomm._engine, "submit",
                        lambda *a, **k: events.append("submit") or submit(*a, **k))
    monkeypatch.setattr(fusecomm._engine, "synchronize",
                        lambda h: events.append("wait") or sync(h))
    tensors = [tf.ones([3]), tf.ones([2, 2], tf.float64), tf.range(4)]
    hvd.grouped_allreduce(tensors, op=hvd.Sum)
    assert events == ["submit"] * 3 + ["wait"] * 3
    graph = tf.function(lambda ts: hvd.grouped_allreduce(ts)).get_concrete_function(tensors).graph
    assert [op.type for op in graph.get_operations()].count("PyFunc") == 1


def test_eager_results_share_memory_and_never_misalign():
    aligned = mpi_ops._aligned_empty_like(np.zeros(1000, np.float32))
    aligned[:] = 7
    shared = mpi_ops._to_tensor(aligned)
    address = np.asarray(shared).__array_interface__["data"][0]
    assert address == aligned.__array_interface__["data"][0]
    # TensorFlow aborts the process on tensors adopted from buffers not 64-byte aligned.
    misaligned = np.arange(1025, dtype=np.float32)[1:]
    assert misaligned.__array_interface__["data"][0] % 64
    copied = mpi_ops._to_tensor(misaligned)
    assert np.array_equal((copied * 2).numpy(), misaligned * 2)
    bf16 = mpi_ops._to_tensor(np.ones(3, tf.bfloat16.as_numpy_dtype))
    assert bf16.dtype == tf.bfloat16 and bf16.numpy().tolist() == [1, 1, 1]


def test_gradients_single_rank():
    x = tf.constant([1.0, 2.0, 3.0])

    @tf.function
    def grad(op, pre, post):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = hvd.allreduce(x, op=op, prescale_factor=pre, postscale_factor=post)
            loss = tf.reduce_sum(y * tf.constant([1.0, 10.0, 100.0]))
        return tape.gradient(loss, x)

    assert grad(hvd.Average, 2.0, 3.0).numpy().tolist() == [6.0, 60.0, 600.0]
    assert grad(hvd.Sum, 1.0, 1.0).numpy().tolist() == [1.0, 10.0, 100.0]
    with pytest.raises(NotImplementedError, match="op=Min/Max/Product"):
        grad(hvd.Max, 1.0, 1.0)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tracing"])
@pytest.mark.parametrize("call, exc, match", [
    (lambda: hvd.allreduce(tf.ones([2], tf.uint32)), TypeError, "does not support dtype uint32"),
    (lambda: hvd.allreduce(tf.constant(["a"])), TypeError, "does not support dtype string"),
    (lambda: hvd.allreduce(tf.ones([2], tf.complex64)), TypeError, "complex64"),
    (lambda: hvd.allgather(tf.constant(1.0)), ValueError, "at least one dimension"),
    (lambda: hvd.reducescatter(tf.constant(1.0)), ValueError, "at least one dimension"),
    (lambda: hvd.alltoall(tf.constant(1.0)), ValueError, "at least one dimension"),
    (lambda: hvd.alltoall(tf.ones([2]), splits=[[1, 1]]), ValueError, "1-D"),
    (lambda: hvd.alltoall(tf.ones([2]), splits=[0.5, 1.5]), TypeError, "integers"),
    (lambda: hvd.allreduce(tf.ones([2]), op=hvd.Adasum), NotImplementedError, "Adasum"),
    (lambda: hvd.allreduce(tf.ones([2]), op=hvd.Sum, average=True), ValueError, "not both"),
    (lambda: hvd.allreduce(tf.ones([2]), op=42), ValueError, "unknown reduce op"),
    (lambda: hvd.allreduce(tf.ones([2]), prescale_factor="x"), TypeError, "prescale_factor"),
    (lambda: hvd.broadcast(tf.ones([2]), 1), ValueError, "out of range"),
    (lambda: hvd.broadcast(tf.ones([2]), 0.0), TypeError, "root_rank must be an integer"),
    (lambda: hvd.allreduce(tf.ones([2]), process_set=hvd.ProcessSet([0])), ValueError,
     "has not been added"),
    (lambda: hvd.allreduce(tf.ones([2]), process_set=[0]), TypeError, "ProcessSet"),
    (lambda: hvd.allreduce(tf.IndexedSlices(tf.ones([1, 2]), tf.constant([0]),
                                            tf.constant([3, 2])), op=hvd.Max),
     NotImplementedError, "IndexedSlices"),
])
def test_bad_input_raises_before_anything_runs(compiled, call, exc, match):
    with pytest.raises(exc, match=match):
        if compiled:
            tf.function(call).get_concrete_function()
        else:
            call()


def test_join_on_one_rank_returns_it():
    assert hvd.join() == 0
    assert int(tf.function(hvd.join)()) == 0


def test_xla_is_refused_with_advice():
    fn = tf.function(lambda t: hvd.allreduce(t), jit_compile=True)
    with pytest.raises(RuntimeError, match="jit_compile=False"):
        fn.get_concrete_function(tf.TensorSpec([2], tf.float32))


def test_runtime_engine_error_in_graph_names_the_problem():
    # Average of booleans is refused by the engine, which only runs when the graph runs.
    fn = tf.function(lambda t: hvd.allreduce(t, op=hvd.Average, name="bool_avg"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Average is not defined for bool"):
        fn(tf.constant([True, False]))


def test_wrappers_reject_bad_arguments():
    with pytest.raises(TypeError, match="tf.GradientTape"):
        hvd.DistributedGradientTape(object())
    with pytest.raises(ValueError, match="only defined for op=Average"):
        hvd.DistributedGradientTape(tf.GradientTape(), op=hvd.Sum, gradient_predivide_factor=2.0)
    with pytest.raises(ValueError, match="groups"):
        hvd.DistributedGradientTape(tf.GradientTape(), groups=-1)
    with pytest.warns(DeprecationWarning, match="num_groups"):
        hvd.DistributedGradientTape(tf.GradientTape(), num_groups=2)
    with pytest.raises(TypeError, match="Keras 3 optimizer"):
        hvd_keras.DistributedOptimizer(object())
    with pytest.raises(ValueError, match="backward_passes_per_step"):
        hvd_keras.DistributedOptimizer(keras.optimizers.SGD(), backward_passes_per_step=0)
    with pytest.raises(ValueError, match="not both"):
        hvd_keras.DistributedOptimizer(keras.optimizers.SGD(gradient_accumulation_steps=2),
                                       backward_passes_per_step=2)
    with pytest.raises(ValueError, match="already"):
        hvd_keras.DistributedOptimizer(hvd_keras.DistributedOptimizer(keras.optimizers.SGD()))
    with pytest.raises(NotImplementedError, match="Adasum"):
        hvd_keras.DistributedOptimizer(keras.optimizers.SGD(), op=hvd.Adasum)
    with pytest.raises(ValueError, match="initial_lr"):
        hvd_keras.callbacks.LearningRateScheduleCallback(None, 0.5)


def test_use_after_shutdown_raises_then_init_again():
    hvd.shutdown()
    try:
        with pytest.raises(hvd.NotInitializedError):
            hvd.allreduce(tf.ones([2]))
    finally:
        hvd.init()
    assert hvd.allreduce(tf.ones([2]), op=hvd.Sum).numpy().tolist() == [1.0, 1.0]


# --- compression ---------------------------------------------------------------------------------


def test_compression_casts_floats_only():
    x = tf.constant([1.5, 2.25], tf.float32)
    for comp, wire in ((hvd.Compression.fp16, tf.float16), (hvd.Compression.bf16, tf.bfloat16)):
        sent, ctx = comp.compress(x)
        assert sent.dtype == wire
        back = comp.decompress(sent, ctx)
        assert back.dtype == tf.float32 and back.numpy().tolist() == [1.5, 2.25]
        ints, ctx = comp.compress(tf.constant([70000]))
        assert ints.dtype == tf.int32 and comp.decompress(ints, ctx).numpy().tolist() == [70000]
    out = hvd.allreduce(x, compression=hvd.Compression.fp16)
    assert out.dtype == tf.float32 and out.numpy().tolist() == [1.5, 2.25]


# --- DistributedGradientTape ---------------------------------------------------------------------


def test_tape_wraps_inside_or_after_the_with_block():
    w = {"a": tf.Variable([1.0, 2.0]), "b": [tf.Variable(3.0)]}
    with tf.GradientTape(persistent=True) as tape:
        loss = tf.reduce_sum(w["a"] ** 2) + w["b"][0] * 5
    for wrapped in (hvd.DistributedGradientTape(tape),):
        assert isinstance(wrapped, tf.GradientTape)
        grads = wrapped.gradient(loss, w)
        assert grads["a"].numpy().tolist() == [2.0, 4.0] and grads["b"][0].numpy() == 5.0
    with hvd.DistributedGradientTape(tf.GradientTape()) as tape2:
        x = tf.constant(3.0)
        tape2.watch(x)
        y = x * x
    assert tape2.gradient(y, x).numpy() == 6.0
    assert len(hvd.DistributedGradientTape(tape).watched_variables()) == 2


def test_groups_set_the_submission_order():
    from fusecomm.tensorflow.gradient_tape import GradientReducer

    a, b, c = (tf.Variable(float(i)) for i in range(3))
    k = keras.Variable(1.0)  # wraps a tf.Variable: either may be listed
    reducer = GradientReducer("t", groups=[[c, a], [k]])
    assert reducer._order([1, 2, 3, 4], [a, b, c, k]) == [2, 0, 3, 1]
    assert GradientReducer("t", groups=3)._order([1, 2], [a, b]) == [0, 1]


# --- Keras DistributedOptimizer ------------------------------------------------------------------


def test_distributed_optimizer_keeps_class_and_config():
    base = keras.optimizers.Adam(learning_rate=0.01, beta_1=0.8)
    opt = hvd_keras.DistributedOptimizer(base)
    assert isinstance(opt, keras.optimizers.Adam) and type(opt).__name__ == "Adam"
    assert opt.name == "DistributedAdam"
    config, base_config = opt.get_config(), base.get_config()
    assert {k: v for k, v in config.items() if k != "name"} == \
        {k: v for k, v in base_config.items() if k != "name"}
    assert hvd.DistributedOptimizer(keras.optimizers.SGD(), name="mine").name == "mine"
    copy = type(opt).from_config(opt.get_config())  # no fusecomm settings: refuses to step
    with pytest.raises(RuntimeError, match="wrap the plain optimizer"):
        copy.apply_gradients([(tf.ones([1]), tf.Variable([1.0]))])


def test_saved_model_loads_without_fusecomm(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1)), loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is keras.optimizers.SGD
    assert int(loaded.optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize("average", [False, True])
def test_backward_passes_accumulate_then_apply(average):
    var = tf.Variable([1.0, 1.0])
    opt = hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.5), backward_passes_per_step=2,
                                         average_aggregated_gradients=average)
    step = tf.function(lambda g: opt.apply_gradients([(g, var)]))
    step(tf.constant([1.0, 2.0]))
    assert var.numpy().tolist() == [1.0, 1.0] and int(opt.iterations.numpy()) == 1
    step(tf.constant([3.0, 4.0]))
    total = np.array([4.0, 6.0]) / (2 if average else 1)
    assert np.allclose(var.numpy(), 1.0 - 0.5 * total)
    assert int(opt.iterations.numpy()) == 2
    step(tf.constant([1.0, 1.0]))  # accumulators were reset after the update
    step(tf.constant([1.0, 1.0]))
    assert np.allclose(var.numpy(), 1.0 - 0.5 * total - 0.5 * np.array([2.0, 2.0]) /
                       (2 if average else 1))


def test_fit_and_broadcast_callback_builds_optimizer_first():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=hvd_keras.DistributedOptimizer(keras.optimizers.SGD(0.1,
                                                                                momentum=0.9)),
                  loss="mse")
    callback = hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0)
    callback.set_model(model)
    assert not model.optimizer.built
    callback.on_train_begin()
    assert model.optimizer.built and callback.broadcast_done
    history = model.fit(np.ones((8, 3)), np.zeros((8, 2)), batch_size=4, epochs=2, verbose=0,
                        callbacks=[callback, hvd_keras.callbacks.MetricAverageCallback()])
    assert len(history.history["loss"]) == 2


def test_broadcast_callback_waits_for_a_model_built_by_its_first_step():
    model = keras.Sequential([keras.layers.Dense(2)])  # no Input: built inside fit
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    callback = hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0)
    callback.set_model(model)
    callback.on_train_begin()
    assert not callback.broadcast_done
    model.fit(np.ones((8, 3)), np.zeros((8, 2)), batch_size=4, verbose=0, callbacks=[callback])
    assert callback.broadcast_done


# --- learning-rate callbacks ---------------------------------------------------------------------


class LrAndMomentum(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.begin, self.slots_begin, self.slots_end = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.begin.append(float(self.model.optimizer.learning_rate.numpy()))
        self.slots_begin.append(self.velocity())

    def on_train_batch_end(self, batch, logs=None):
        self.slots_end.append(self.velocity())

    def velocity(self):
        # Keras builds the optimizer (and its slots) in the first step.
        slots = getattr(self.model.optimizer, "momentums", None)
        return slots[0].numpy().copy() if slots else None


def fit_with(callback, epochs=4, steps=2, lr=0.1):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss="mse")
    record = LrAndMomentum()
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(4 * steps, 3)), rng.normal(size=(4 * steps, 1)), batch_size=4,
              epochs=epochs, shuffle=False, verbose=0, callbacks=[callback, record])
    return record


def test_schedule_staircase_with_constant_multiplier_and_momentum_correction():
    cb = hvd_keras.callbacks.LearningRateScheduleCallback(0.2, 0.5, start_epoch=1, end_epoch=3)
    rec = fit_with(cb)
    # Epoch 0 is before the window; epoch 1: 0.2 * 0.5**0; epoch 2: 0.2 * 0.5**1; then unchanged.
    assert np.allclose(rec.begin, [0.1, 0.1, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1])
    # The velocity was scaled by new/old rate where the rate changed, and only there.
    assert np.allclose(rec.slots_begin[2], rec.slots_end[1] * 2.0)
    assert np.allclose(rec.slots_begin[4], rec.slots_end[3] * 0.5)
    assert np.allclose(rec.slots_begin[3], rec.slots_end[2])
    rec = fit_with(hvd_keras.callbacks.LearningRateScheduleCallback(
        0.2, 0.5, start_epoch=1, end_epoch=3, momentum_correction=False))
    assert np.allclose(rec.slots_begin[2], rec.slots_end[1])


def test_schedule_smooth_reads_steps_from_fit():
    cb = hvd_keras.callbacks.LearningRateScheduleCallback(0.4, lambda epoch: 1.0 / (1 + epoch),
                                                          staircase=False)
    rec = fit_with(cb, epochs=2, steps=2)
    assert cb.steps_per_epoch == 2
    assert np.allclose(rec.begin, [0.4 / (1 + e) for e in (0.0, 0.5, 1.0, 1.5)])
    cb.params = {}
    with pytest.raises(ValueError, match="steps_per_epoch"):
        cb._autodetect_steps_per_epoch()


def test_schedule_refuses_an_optimizer_with_a_schedule():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    decay = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    model.compile(optimizer=keras.optimizers.SGD(decay), loss="mse")
    with pytest.raises(TypeError, match="needs a float learning_rate"):
        model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0,
                  callbacks=[hvd_keras.callbacks.LearningRateScheduleCallback(0.1, 0.5)])


def test_warmup_on_one_rank_is_the_initial_rate_and_logs_lr():
    cb = hvd_keras.callbacks.LearningRateWarmupCallback(0.3, warmup_epochs=2)
    rec = fit_with(cb, epochs=3, steps=2)
    assert np.allclose(rec.begin, 0.3)  # size 1: lr / 1 * (... * 0 + 1)
    logs = {}
    cb.on_epoch_end(0, logs)
    assert np.isclose(logs["lr"], 0.3)

"""fusecomm.tensorflow.keras.optim: LARS, LAMB and RMSpropWarmup step by step against the
NumPy transcriptions of their papers (tests/optim_reference.py), eagerly and inside
tf.function; the schedules against fusecomm.optim's closed forms; get_config/from_config and a
saved model reloading with them."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import optim_reference as ref  # noqa: E402
from fusecomm import optim  # noqa: E402
from fusecomm.tensorflow.keras import optim as kopt  # noqa: E402
from test_optim import gradients, initial_weights  # noqa: E402


def run_keras(opt, reference_step, seed, compiled, steps=4, rtol=1e-10):
    ws = initial_weights(seed)
    variables = [keras.Variable(w, dtype="float64", name=f"v{i}") for i, w in enumerate(ws)]
    opt.build(variables)

    def apply(grads):
        opt.apply(grads, variables)

    if compiled:
        apply = tf.function(apply)
    state = {}
    for step in range(steps):
        gs = gradients(seed, step)
        apply([tf.constant(g) for g in gs])
        ws = reference_step(ws, gs, state, step)
        for i, (v, w) in enumerate(zip(variables, ws)):
            np.testing.assert_allclose(v.numpy(), w, rtol=rtol, atol=1e-12,
                                       err_msg=f"seed {seed} step {step} variable {i}")


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("seed", [0, 1])
def test_keras_lars_matches_paper(seed, compiled):
    kw = dict(lr=0.5, momentum=0.9, weight_decay=5e-4, eta=0.02, eps=1e-9)
    opt = kopt.LARS(learning_rate=0.5, momentum=0.9, weight_decay_rate=5e-4, eta=0.02,
                    epsilon=1e-9)
    run_keras(opt, lambda ws, gs, st, t: ref.lars_step(ws, gs, st, **kw), seed, compiled)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_keras_lamb_matches_paper(compiled):
    lr = 2.0 ** -6  # exact in the float32 learning-rate variable
    opt = kopt.LAMB(learning_rate=lr, beta_1=0.9, beta_2=0.99, epsilon=1e-6,
                    weight_decay_rate=0.01)
    run_keras(opt, lambda ws, gs, st, t: ref.lamb_step(ws, gs, st, t + 1, lr, 0.9, 0.99, 1e-6,
                                                       0.01), seed=2, compiled=compiled)


def test_keras_rmsprop_warmup_matches_paper():
    lr = 2.0 ** -5
    opt = kopt.RMSpropWarmup(learning_rate=lr, steps_per_epoch=2, momentum=0.9, rho=0.9,
                             epsilon=1e-8, center=1.0, period=2.0)
    run_keras(opt, lambda ws, gs, st, t: ref.rmsprop_warmup_step(ws, gs, st, t / 2, lr, 0.9, 0.9,
                                                                 1e-8, 1.0, 2.0),
              seed=3, compiled=True, steps=6)


def test_keras_exclusions():
    """A 2-D variable excluded through Keras' exclude_from_weight_decay gets plain momentum SGD;
    a 1-D one is excluded by default and included with exclude_bias_and_norm=False."""
    w = keras.Variable(np.ones((2, 2)), dtype="float64", name="kernel")
    b = keras.Variable(np.ones(2), dtype="float64", name="bias")
    opt = kopt.LARS(learning_rate=0.5, weight_decay_rate=0.5, eta=0.001)
    opt.exclude_from_weight_decay(var_list=[w])
    opt.apply([tf.fill((2, 2), tf.constant(2.0, tf.float64)), tf.constant([2.0, 2.0], tf.float64)],
              [w, b])
    np.testing.assert_allclose(w.numpy(), np.zeros((2, 2)))
    np.testing.assert_allclose(b.numpy(), np.zeros(2))
    b2 = keras.Variable(np.ones(2), dtype="float64", name="bias2")
    opt = kopt.LARS(learning_rate=0.5, momentum=0.0, eta=0.001, exclude_bias_and_norm=False)
    opt.apply([tf.constant([2.0, 2.0], tf.float64)], [b2])
    trust = 0.001 * np.sqrt(2) / (np.sqrt(8) + 1e-9)
    np.testing.assert_allclose(b2.numpy(), 1.0 - 0.5 * trust * 2.0)
    with pytest.raises(ValueError, match="weight_decay_rate"):
        kopt.LAMB(weight_decay=0.1)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_keras_schedules_follow_closed_forms(compiled):
    cases = [(kopt.WarmupDecay(2.0, 5, 25, start_lr=0.4, end_lr=0.1, decay="cosine"),
              lambda s: optim.warmup_then_decay(s, 5, 25, 2.0, 0.4, 0.1, "cosine")),
             (kopt.WarmupDecay(2.0, 5, 25, decay="polynomial", power=3.0),
              lambda s: optim.warmup_then_decay(s, 5, 25, 2.0, 0.0, 0.0, "polynomial", 3.0)),
             (kopt.WarmupDecay(1.0, 4, decay=None, start_lr=0.25),
              lambda s: optim.goyal_warmup(s, 4, 1.0, 0.25)),
             (kopt.SlowStart(3.2, steps_per_epoch=3, total_epochs=9),
              lambda s: optim.slow_start(s / 3, 3.2, total_epochs=9))]
    for schedule, closed in cases:
        call = tf.function(schedule) if compiled else schedule
        for s in range(32):
            got = float(call(tf.constant(s, tf.int64)))
            # float32 steps: relative to the largest rate, 3.2
            assert got == pytest.approx(closed(s), rel=1e-6, abs=4e-6), (type(schedule).__name__, s)
        again = type(schedule).from_config(schedule.get_config())
        assert float(again(7)) == pytest.approx(closed(7), rel=1e-6)


def test_keras_config_round_trip_and_saved_model(tmp_path):
    for opt in [kopt.LARS(0.3, momentum=0.8, weight_decay_rate=1e-4, eta=0.01),
                kopt.LAMB(0.01, weight_decay_rate=0.02, exclude_bias_and_norm=False),
                kopt.RMSpropWarmup(0.1, steps_per_epoch=7, center=3.0, period=2.0)]:
        config = opt.get_config()
        again = type(opt).from_config(config)
        assert again.get_config() == config
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                              keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    model.compile(optimizer=kopt.LAMB(learning_rate=kopt.WarmupDecay(0.01, 2, 10)),
                  loss=kopt.label_smoothing_loss(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 4)), np.eye(3)[rng.integers(0, 3, 32)]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, kopt.LAMB)
    assert isinstance(loaded.optimizer.learning_rate_schedule if hasattr(
        loaded.optimizer, "learning_rate_schedule") else loaded.optimizer._learning_rate,
        kopt.WarmupDecay)
    assert loaded.loss.get_config()["label_smoothing"] == optim.LABEL_SMOOTHING
    assert int(loaded.optimizer.iterations) == 4
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Training continues identically from the loaded state.
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_keras_batch_size_control_refuses_accumulation_and_bare_data():
    from fusecomm.tensorflow.keras.callbacks import BatchSizeControlCallback

    accumulating = optim.BatchSizePlan([(0, 8), (2, 64)], ranks=1, base_lr=0.1, base_batch=8,
                                       max_rank_batch=16)
    with pytest.raises(ValueError, match="epoch 2 accumulates 4 micro-batches"):
        BatchSizeControlCallback(accumulating)
    control = BatchSizeControlCallback(optim.BatchSizePlan([(0, 4)], ranks=1, base_lr=0.1,
                                                           base_batch=4))
    with pytest.raises(ValueError, match="different lengths"):
        control.dataset(np.zeros((5, 2)), np.zeros(4))
    # Without shuffle the epochs take the dataset in order.
    control = BatchSizeControlCallback(optim.BatchSizePlan([(0, 4)], ranks=1, base_lr=0.1,
                                                           base_batch=4), shuffle=False)
    control.dataset(np.arange(10.0)[:, None])
    assert list(control.epoch_order(3)) == list(range(10))


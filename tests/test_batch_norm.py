"""Batch normalization across ranks: the Keras SyncBatchNormalization and batch normalization
without moving averages (Akiba et al.) in torch and Keras. One process here (the layers against
their frameworks' own batch norm and NumPy, and their usage errors); several ranks with uneven
batches in tests/mp/keras_sync_batch_norm.py and tests/mp/torch_batch_norm_stats.py."""
import os

import numpy as np
import pytest

import fusecomm

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A slow peer gets a minute to reach MPI_Finalize on the loaded machine.
SLOW_EXIT = {"FUSECOMM_LIVENESS_TIMEOUT_SECONDS": "60"}


@pytest.fixture(scope="module", autouse=True)
def engine():
    fusecomm.init()
    yield
    fusecomm.shutdown()


def numpy_batch_norm(x, axes, mean, var, eps, gamma, beta):
    shape = [1] * x.ndim
    channel_axis = next(a for a in range(x.ndim) if a not in axes)
    shape[channel_axis] = -1
    return ((x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(shape)
            + beta.reshape(shape))


# ---- torch ------------------------------------------------------------------------------------

def test_torch_without_moving_averages_one_rank():
    torch = pytest.importorskip("torch")
    import fusecomm.torch as hvd

    g = torch.Generator().manual_seed(5)
    bn = hvd.SyncBatchNorm(3, momentum=0.1, moving_averages=False)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=g)
        bn.bias.uniform_(-1, 1, generator=g)
    for step in range(2):
        x = torch.randn(6, 3, 5, generator=g) * 2 + step
        y = bn(x)
    x64 = x.double().numpy()
    mean, var = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
    assert np.allclose(bn.running_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    assert np.allclose(bn.running_var.numpy(), var, rtol=1e-5, atol=1e-6)
    assert "moving_averages=False" in repr(bn)
    bn.eval()
    probe = torch.randn(4, 3, 5, generator=g)
    want = numpy_batch_norm(probe.double().numpy(), (0, 2), mean, var, bn.eps,
                            bn.weight.detach().double().numpy(),
                            bn.bias.detach().double().numpy())
    assert np.allclose(bn(probe).detach().numpy(), want, rtol=1e-5, atol=1e-5)
    assert torch.allclose(bn(x), y, rtol=1e-5, atol=1e-5)  # the last batch reproduces
    with pytest.raises(ValueError, match="track_running_stats"):
        hvd.SyncBatchNorm(3, track_running_stats=False, moving_averages=False)


def test_torch_convert_without_moving_averages():
    torch = pytest.importorskip("torch")
    import fusecomm.torch as hvd

    model = torch.nn.Sequential(torch.nn.BatchNorm1d(2),
                                torch.nn.BatchNorm1d(2, track_running_stats=False))
    converted = hvd.SyncBatchNorm.convert_sync_batchnorm(model, moving_averages=False)
    assert not converted[0].moving_averages
    # Without running statistics there is nothing to keep: batch statistics, as before.
    assert converted[1].moving_averages and not converted[1].track_running_stats


# ---- Keras ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow")
    return pytest.importorskip("keras")


def test_keras_layer_names_follow_horovod(keras):
    import fusecomm.tensorflow as hvd_tf
    import fusecomm.tensorflow.keras as hvd
    from fusecomm.tensorflow.keras.layers import SyncBatchNormalization
    from fusecomm.tensorflow.sync_batch_norm import SyncBatchNormalization as from_module

    assert hvd_tf.SyncBatchNormalization is SyncBatchNormalization is from_module
    assert hvd.SyncBatchNormalization is SyncBatchNormalization
    assert issubclass(SyncBatchNormalization, keras.layers.BatchNormalization)
    assert SyncBatchNormalization().name.startswith("sync_batch_normalization")
    with pytest.raises(ValueError, match="fused=True"):
        SyncBatchNormalization(fused=True)
    with pytest.raises(ValueError, match="synchronized"):
        SyncBatchNormalization(synchronized=True)
    with pytest.raises(AttributeError):
        hvd_tf.NoSuchLayer  # noqa: B018


def test_keras_one_rank_is_batch_normalization(keras):
    from fusecomm.tensorflow.keras.layers import SyncBatchNormalization

    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32) * 2 + 1
    sync, ref = SyncBatchNormalization(momentum=0.5), keras.layers.BatchNormalization(momentum=0.5)
    for _ in range(2):
        assert np.allclose(sync(x, training=True), ref(x, training=True), atol=1e-6)
    assert np.allclose(sync.moving_variance.numpy(), ref.moving_variance.numpy(), atol=1e-6)


def test_keras_without_moving_averages_saves_and_loads(keras, tmp_path):
    from fusecomm.tensorflow.keras.layers import SyncBatchNormalization

    rng = np.random.default_rng(8)
    model = keras.Sequential([keras.Input((4,)), SyncBatchNormalization(moving_averages=False)])
    layer = model.layers[0]
    assert layer.momentum == 0.0
    for step in range(2):
        x = rng.standard_normal((6, 4)).astype(np.float32) * 3 + step
        model(x, training=True)
    mean, var = x.astype(np.float64).mean(0), x.astype(np.float64).var(0)
    assert np.allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    assert np.allclose(layer.moving_variance.numpy(), var, rtol=1e-5, atol=1e-6)
    path = str(tmp_path / "bn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[0], SyncBatchNormalization)
    assert loaded.layers[0].moving_averages is False
    probe = rng.standard_normal((3, 4)).astype(np.float32)
    want = numpy_batch_norm(probe.astype(np.float64), (0,), mean, var, layer.epsilon,
                            np.ones(4), np.zeros(4))
    assert np.allclose(loaded(probe, training=False), want, rtol=1e-5, atol=1e-5)


# ---- several ranks ----------------------------------------------------------------------------

@pytest.mark.parametrize("np_", [2, 3])
def test_keras_sync_batch_norm_multirank(ranks_runner, keras, np_):
    out = ranks_runner("keras_sync_batch_norm.py", np_, env=SLOW_EXIT, timeout=400)
    assert out.count(f"keras_sync_batch_norm OK on {np_} ranks") == np_, out[-4000:]


@pytest.mark.parametrize("np_", [2, 3])
def test_torch_batch_norm_without_moving_averages_multirank(ranks_runner, np_):
    pytest.importorskip("torch")
    out = ranks_runner("torch_batch_norm_stats.py", np_, env=SLOW_EXIT)
    assert out.count(f"torch_batch_norm_stats OK on {np_} ranks") == np_, out[-4000:]

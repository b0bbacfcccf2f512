"""The per-layer rules of LARS and LAMB, written once for every framework.

The trust ratios take the norms as scalars of any array library plus that library's `where`
(torch.where, keras.ops.where; plain floats by default), so the faces share these formulas
instead of restating them."""
import numpy as np

# Mikami et al.'s label-smoothing value (soft targets: 1 - eps on the label, eps/K spread).
LABEL_SMOOTHING = 0.1


def _scalar_where(condition, a, b):
    return a if condition else b


def lars_trust_ratio(w_norm, g_norm, eta, weight_decay, eps, where=_scalar_where):
    """You et al. 2017: local_lr = eta * ||w|| / (||g|| + weight_decay * ||w||). eps guards the
    denominator; where a layer's weights or gradient are all zero (a fresh zero-initialised
    layer, a layer without gradient) the ratio is 1, so plain momentum SGD applies."""
    ratio = eta * w_norm / (g_norm + weight_decay * w_norm + eps)
    return where((w_norm > 0) & (g_norm > 0), ratio, 1.0)


def lamb_trust_ratio(w_norm, update_norm, where=_scalar_where):
    """You et al. 2019 with phi the identity: ||w|| / ||update||, where the update is Adam's
    bias-corrected step plus weight decay; 1 where either norm is zero."""
    ratio = w_norm / update_norm
    return where((w_norm > 0) & (update_norm > 0), ratio, 1.0)


def is_excluded_shape(shape):
    """Bias and normalization parameters (scale, shift) are the parameters of rank <= 1: the
    recipes give them neither the trust ratio nor weight decay."""
    return len(tuple(shape)) <= 1


def smooth_labels(labels, num_classes, epsilon=LABEL_SMOOTHING):
    """One-hot targets with label smoothing: 1 - eps + eps/K on the label, eps/K elsewhere."""
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), not {epsilon!r}")
    labels = np.asarray(labels)
    out = np.full(labels.shape + (num_classes,), epsilon / num_classes)
    np.put_along_axis(out, labels[..., None], 1.0 - epsilon + epsilon / num_classes, axis=-1)
    return out

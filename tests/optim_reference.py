"""NumPy transcriptions of the papers' update rules, step by step, for the optimizer tests of
both frameworks (float64, written from the papers' algorithms, not from fusecomm's code)."""
import numpy as np


def excluded(w):
    return w.ndim <= 1


def lars_step(ws, gs, state, lr, momentum, weight_decay, eta, eps):
    """You et al. 2017, Algorithm 1, per layer; bias/BN: no trust ratio, no weight decay."""
    out = []
    for i, (w, g) in enumerate(zip(ws, gs)):
        v = state.setdefault(i, np.zeros_like(w))
        if excluded(w):
            local, d = lr, g
        else:
            wn, gn = np.linalg.norm(w), np.linalg.norm(g)
            trust = eta * wn / (gn + weight_decay * wn + eps) if wn > 0 and gn > 0 else 1.0
            local, d = lr * trust, g + weight_decay * w
        v = momentum * v + local * d
        state[i] = v
        out.append(w - v)
    return out


def lamb_step(ws, gs, state, t, lr, b1, b2, eps, weight_decay):
    """You et al. 2019, Algorithm 2 (phi = identity), per layer, t counting from 1."""
    out = []
    for i, (w, g) in enumerate(zip(ws, gs)):
        m, v = state.get(i, (np.zeros_like(w), np.zeros_like(w)))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        state[i] = (m, v)
        r = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        if excluded(w):
            out.append(w - lr * r)
            continue
        u = r + weight_decay * w
        wn, un = np.linalg.norm(w), np.linalg.norm(u)
        ratio = wn / un if wn > 0 and un > 0 else 1.0
        out.append(w - lr * ratio * u)
    return out


def akiba_weight(epoch, center, period):
    if epoch < center:
        return 0.5 * np.exp(2 * (epoch - center) / period)
    return min(1.0, 0.5 + 2 * (epoch - center) / period)


def rmsprop_warmup_step(ws, gs, state, epoch, lr, mu1, mu2, eps, center, period):
    """Akiba et al.: m <- mu2 m + (1-mu2) g^2; D <- mu1 D - (a + (1-a)/(sqrt(m)+eps)) g;
    w <- w + lr D."""
    a = akiba_weight(epoch, center, period)
    out = []
    for i, (w, g) in enumerate(zip(ws, gs)):
        m, d = state.get(i, (np.zeros_like(w), np.zeros_like(w)))
        m = mu2 * m + (1 - mu2) * g * g
        d = mu1 * d - (a + (1 - a) / (np.sqrt(m) + eps)) * g
        state[i] = (m, d)
        out.append(w + lr * d)
    return out

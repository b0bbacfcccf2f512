"""Workloads: message sizes, and a model's gradients in the order backward produces them.

ResNet-50 is built from its architecture (He et al. 2016, torchvision's v1.5 layout: the stride
in the 3x3 convolution), not from a table: 53 convolutions, 53 batch norms (weight and bias) and
the classifier (weight and bias) = 161 tensors, 25,557,032 parameters.

Per-layer backward times are not measured here (no GPU): a layer's share of the backward time
is its share of the backward FLOPs (2x the forward multiply-adds of a convolution or linear
layer: the input gradient and the weight gradient), batch norms costed as 8 operations per
activation element. The total is a parameter; the default, 60 ms, is a V100's fp32 backward of
a 32-image batch at ~350 images/s for forward+backward with backward two thirds of it (the
usual figure for ResNet-50 on V100; an assumption, stated in docs/simulate.md).
"""
import dataclasses
import re

import numpy as np

V100_RESNET50_BACKWARD_S = 0.060


@dataclasses.dataclass(frozen=True)
class Gradient:
    name: str
    elems: int
    compute_s: float  # backward time spent before this gradient is ready (after the previous)


def parse_size(text):
    """'100M' -> 100 * 2**20 bytes (K, M, G are binary, as in `fusecomm bench`); a plain
    number is bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not match:
        raise ValueError(f"size {text!r}: expected e.g. 100M, 64K, 1G or a number of bytes")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2)]
    return int(float(match.group(1)) * scale)


def parse_sizes(text):
    """'100M', '64K,1M,16M' or a sweep 'LO:HI' (powers of two from LO to HI)."""
    if ":" in text:
        lo, hi = (parse_size(part) for part in text.split(":"))
        if lo < 1 or hi < lo:
            raise ValueError(f"size sweep {text!r}: expected LO:HI with 1 <= LO <= HI")
        sizes, size = [], lo
        while size <= hi:
            sizes.append(size)
            size *= 2
        return sizes
    return [parse_size(part) for part in text.split(",") if part.strip()]


def _resnet50_layers(image=224, classes=1000):
    """(name, kind, params per tensor, backward work) in forward order."""
    layers = []

    def conv(name, cin, cout, k, out_hw):
        macs = cin * cout * k * k * out_hw * out_hw
        layers.append((name, "conv", [cin * cout * k * k], 2 * macs))

    def bn(name, c, hw):
        layers.append((name, "bn", [c, c], 8 * c * hw * hw))

    hw = image // 2
    conv("conv1", 3, 64, 7, hw)
    bn("bn1", 64, hw)
    hw //= 2  # max pool
    inplanes = 64
    for stage, (planes, blocks, stride) in enumerate(
            [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1):
        for b in range(blocks):
            s = stride if b == 0 else 1
            out_hw = hw // s
            prefix = f"layer{stage}.{b}"
            conv(f"{prefix}.conv1", inplanes, planes, 1, hw)
            bn(f"{prefix}.bn1", planes, hw)
            conv(f"{prefix}.conv2", planes, planes, 3, out_hw)
            bn(f"{prefix}.bn2", planes, out_hw)
            conv(f"{prefix}.conv3", planes, planes * 4, 1, out_hw)
            bn(f"{prefix}.bn3", planes * 4, out_hw)
            if b == 0:
                conv(f"{prefix}.downsample.0", inplanes, planes * 4, 1, out_hw)
                bn(f"{prefix}.downsample.1", planes * 4, out_hw)
            inplanes, hw = planes * 4, out_hw
    layers.append(("fc", "linear", [inplanes * classes, classes], 2 * 2 * inplanes * classes))
    return layers


def resnet50_gradients(backward_s=V100_RESNET50_BACKWARD_S):
    """ResNet-50's 161 gradients in the order backward makes them ready (the classifier first),
    each with the backward time spent since the previous one."""
    layers = _resnet50_layers()
    work = np.array([w for _, _, _, w in layers], dtype=float)
    seconds = work / work.sum() * backward_s
    grads = []
    for (name, kind, tensors, _), layer_s in zip(reversed(layers), reversed(seconds)):
        suffixes = {"conv": ["weight"], "bn": ["bias", "weight"],
                    "linear": ["bias", "weight"]}[kind]
        # Backward yields a layer's tensors together; the first carries the layer's time.
        for i, (suffix, elems) in enumerate(zip(suffixes, reversed(tensors))):
            grads.append(Gradient(f"{name}.{suffix}", elems, layer_s if i == 0 else 0.0))
    return grads


MODELS = {"resnet50": resnet50_gradients}

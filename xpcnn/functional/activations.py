"""Elementwise activations and their backward passes. Every function keeps x's shape, dtype and device.

Each ``NAME_forward(x) -> (out, cache)`` keeps only what ``NAME_backward(dout, cache) -> dx`` needs: the output where
the derivative is a function of it (ReLU, sigmoid, tanh), the input otherwise.

NaN passes through every forward pass. ReLU's gradient at exactly 0 is 0 (as PyTorch).

``where`` is a slow, branchy select on NumPy (10x an elementwise ``maximum`` on a 64 MiB array), so ReLU and
leaky ReLU are written as maxima and products where that gives the same values: always in the forward passes,
and in ReLU's backward where the upstream gradient is known to be finite (``0 * inf`` would be NaN; see
:func:`xpcnn._dispatch.known_finite`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._dispatch import known_finite
from .._precision import half_in_float32, half_in_float32_backward
from .._validation import check_floating, check_upstream, namespace_and_device

__all__ = [
    "relu_forward",
    "relu_backward",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "arctan_forward",
    "arctan_backward",
]


class LeakyReluCache(NamedTuple):
    x: Any
    negative_slope: float


@half_in_float32
def relu_forward(x):
    """max(x, 0); NaN stays NaN. Returns ``(out, cache)``, cache = out."""
    xp, device = _check_input(x)
    out = xp.maximum(x, xp.zeros((), dtype=x.dtype, device=device))  # maximum propagates NaN
    return out, out


@half_in_float32_backward
def relu_backward(dout, cache):
    """dx = dout where out > 0 or out is NaN, else 0 (0 at exactly 0)."""
    out = cache
    xp, _ = check_upstream(dout, out.shape, out, out.dtype)
    if known_finite(xp, dout):  # out is >= 0 or NaN, so out != 0 is the same test
        return dout * xp.astype(out != 0, dout.dtype)
    return xp.where(out <= 0, 0.0, dout)


@half_in_float32
def leaky_relu_forward(x, negative_slope=0.01):
    """x where x > 0, else negative_slope * x. Returns ``(out, cache)``."""
    xp, _ = _check_input(x)
    negative_slope = float(negative_slope)
    scaled = x * negative_slope
    # For 0 < slope <= 1 the larger of x and slope * x is that value (NaN propagates through maximum; a zero
    # slope would turn x = inf into max(inf, NaN)).
    out = xp.maximum(x, scaled) if 0.0 < negative_slope <= 1.0 else xp.where(x > 0, x, scaled)
    return out, LeakyReluCache(x, negative_slope)


@half_in_float32_backward
def leaky_relu_backward(dout, cache: LeakyReluCache):
    """dx = dout where x > 0, else negative_slope * dout."""
    x, negative_slope = cache
    xp, _ = check_upstream(dout, x.shape, x, x.dtype)
    if not math.isfinite(negative_slope):
        return xp.where(x > 0, dout, dout * negative_slope)
    positive = xp.astype(x > 0, dout.dtype)
    # The factor is exactly 1 or exactly the slope (1 + 0 * slope, 0 + 1 * slope): dout * factor is the select.
    return dout * (positive + (1.0 - positive) * negative_slope)


@half_in_float32
def sigmoid_forward(x):
    """1 / (1 + exp(-x)), without overflow for large |x|. Returns ``(out, cache)``, cache = out."""
    xp, _ = _check_input(x)
    e = xp.exp(-xp.abs(x))
    positive = 1.0 / (1.0 + e)
    out = xp.where(x >= 0, positive, e * positive)
    return out, out


@half_in_float32_backward
def sigmoid_backward(dout, cache):
    """dx = dout * out * (1 - out)."""
    out = cache
    check_upstream(dout, out.shape, out, out.dtype)
    return dout * out * (1.0 - out)


@half_in_float32
def tanh_forward(x):
    """tanh(x). Returns ``(out, cache)``, cache = out."""
    xp, _ = _check_input(x)
    out = xp.tanh(x)
    return out, out


@half_in_float32_backward
def tanh_backward(dout, cache):
    """dx = dout * (1 - out**2)."""
    out = cache
    check_upstream(dout, out.shape, out, out.dtype)
    return dout * (1.0 - out * out)


@half_in_float32
def arctan_forward(x):
    """arctan(x). Returns ``(out, cache)``, cache = x."""
    xp, _ = _check_input(x)
    return xp.atan(x), x


@half_in_float32_backward
def arctan_backward(dout, cache):
    """dx = dout / (1 + x**2)."""
    x = cache
    check_upstream(dout, x.shape, x, x.dtype)
    return dout / (1.0 + x * x)


def _check_input(x):
    xp, device = namespace_and_device(x=x)
    check_floating(xp, x, "x")
    return xp, device

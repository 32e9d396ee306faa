"""Elementwise activations and their backward passes. Every function keeps x's shape, dtype and device.

Each ``NAME_forward(x) -> (out, cache)`` keeps only what ``NAME_backward(dout, cache) -> dx`` needs: the output where
the derivative is a function of it (ReLU, sigmoid, tanh), the input otherwise.

NaN passes through every forward pass. ReLU's gradient at exactly 0 is 0 (as PyTorch).
"""

from __future__ import annotations

from typing import Any, NamedTuple

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


def relu_forward(x):
    """max(x, 0); NaN stays NaN. Returns ``(out, cache)``, cache = out."""
    xp, _ = _check_input(x)
    out = xp.where(x < 0, 0.0, x)
    return out, out


def relu_backward(dout, cache):
    """dx = dout where out > 0, else 0 (0 at exactly 0)."""
    out = cache
    xp, _ = check_upstream(dout, out.shape, out, out.dtype)
    return xp.where(out <= 0, 0.0, dout)


def leaky_relu_forward(x, negative_slope=0.01):
    """x where x > 0, else negative_slope * x. Returns ``(out, cache)``."""
    xp, _ = _check_input(x)
    negative_slope = float(negative_slope)
    return xp.where(x > 0, x, x * negative_slope), LeakyReluCache(x, negative_slope)


def leaky_relu_backward(dout, cache: LeakyReluCache):
    """dx = dout where x > 0, else negative_slope * dout."""
    x, negative_slope = cache
    xp, _ = check_upstream(dout, x.shape, x, x.dtype)
    return xp.where(x > 0, dout, dout * negative_slope)


def sigmoid_forward(x):
    """1 / (1 + exp(-x)), without overflow for large |x|. Returns ``(out, cache)``, cache = out."""
    xp, _ = _check_input(x)
    e = xp.exp(-xp.abs(x))
    positive = 1.0 / (1.0 + e)
    out = xp.where(x >= 0, positive, e * positive)
    return out, out


def sigmoid_backward(dout, cache):
    """dx = dout * out * (1 - out)."""
    out = cache
    check_upstream(dout, out.shape, out, out.dtype)
    return dout * out * (1.0 - out)


def tanh_forward(x):
    """tanh(x). Returns ``(out, cache)``, cache = out."""
    xp, _ = _check_input(x)
    out = xp.tanh(x)
    return out, out


def tanh_backward(dout, cache):
    """dx = dout * (1 - out**2)."""
    out = cache
    check_upstream(dout, out.shape, out, out.dtype)
    return dout * (1.0 - out * out)


def arctan_forward(x):
    """arctan(x). Returns ``(out, cache)``, cache = x."""
    xp, _ = _check_input(x)
    return xp.atan(x), x


def arctan_backward(dout, cache):
    """dx = dout / (1 + x**2)."""
    x = cache
    check_upstream(dout, x.shape, x, x.dtype)
    return dout / (1.0 + x * x)


def _check_input(x):
    xp, device = namespace_and_device(x=x)
    check_floating(xp, x, "x")
    return xp, device

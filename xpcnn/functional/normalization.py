"""2-D batch normalisation and its backward pass, as ``torch.nn.functional.batch_norm`` on NCHW input.

Training (statistics of the batch, per channel over N, H, W; M = N*H*W)::

    xhat = (x - mean) / sqrt(var + eps)            var biased (divided by M)
    out  = gamma * xhat + beta
    dx   = gamma / sqrt(var + eps) * (dout - mean(dout) - xhat * mean(dout * xhat))
    dgamma = sum(dout * xhat),  dbeta = sum(dout)

Evaluation (running statistics, constants for the backward pass)::

    out = gamma * (x - running_mean) / sqrt(running_var + eps) + beta,   dx = dout * gamma / sqrt(running_var + eps)

The running statistics are not updated here: :func:`batch_norm2d_forward` returns the batch's mean and unbiased
variance in its cache (``cache.batch_mean``, ``cache.batch_var``), and the caller blends them in.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._precision import half_in_float32, half_in_float32_backward
from .._validation import check_floating, check_ndim, check_same_dtype, check_shape, check_upstream, namespace_and_device

__all__ = ["BatchNorm2dCache", "batch_norm2d_forward", "batch_norm2d_backward"]

_AXES = (0, 2, 3)


class BatchNorm2dCache(NamedTuple):
    xhat: Any  # (N, C, H, W) normalised input
    inv_std: Any  # (1, C, 1, 1)
    gamma: Any  # (1, C, 1, 1) or None
    training: bool
    batch_mean: Any  # (C,) or None in evaluation
    batch_var: Any  # (C,) unbiased, or None in evaluation


@half_in_float32
def batch_norm2d_forward(x, weight=None, bias=None, *, running_mean=None, running_var=None, training=True, eps=1e-5):
    """x: (N, C, H, W); weight (gamma), bias (beta), running_mean, running_var: (C,) or None.

    With ``training=False`` the running statistics are used and must be given. Returns ``(out, cache)``.
    """
    xp, _ = namespace_and_device(
        x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var,
        optional=("weight", "bias", "running_mean", "running_var"),
    )
    check_floating(xp, x, "x")
    check_ndim(x, "x", 4, "(N, C, H, W)")
    channels = x.shape[1]
    named = dict(weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    for name, a in named.items():
        if a is not None:
            check_shape(a, name, (channels,), "one value per channel of x")
            check_same_dtype(a, name, x, "x")
    per_channel = lambda a: None if a is None else xp.reshape(a, (1, channels, 1, 1))  # noqa: E731
    if training:
        count = x.shape[0] * x.shape[2] * x.shape[3]
        if count < 2:
            raise ValueError(f"training batch norm needs more than one value per channel, got x of shape {tuple(x.shape)}")
        mean = xp.mean(x, axis=_AXES, keepdims=True)
        var = xp.mean((x - mean) ** 2, axis=_AXES, keepdims=True)
        batch_mean, batch_var = xp.reshape(mean, (channels,)), xp.reshape(var, (channels,)) * (count / (count - 1))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are needed when training=False")
        mean, var = per_channel(running_mean), per_channel(running_var)
        batch_mean = batch_var = None
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat = (x - mean) * inv_std
    gamma = per_channel(weight)
    out = xhat if gamma is None else xhat * gamma
    if bias is not None:
        out = out + per_channel(bias)
    return out, BatchNorm2dCache(xhat, inv_std, gamma, training, batch_mean, batch_var)


@half_in_float32_backward
def batch_norm2d_backward(dout, cache: BatchNorm2dCache):
    """Returns ``(dx, dweight, dbias)``; dweight and dbias are (C,), None when weight/bias were None."""
    xhat, inv_std, gamma, training, _, _ = cache
    xp, _ = check_upstream(dout, xhat.shape, xhat, xhat.dtype)
    channels = xhat.shape[1]
    dxhat = dout if gamma is None else dout * gamma
    if training:
        dx = inv_std * (
            dxhat - xp.mean(dxhat, axis=_AXES, keepdims=True) - xhat * xp.mean(dxhat * xhat, axis=_AXES, keepdims=True)
        )
    else:
        dx = dxhat * inv_std
    dweight = None if gamma is None else xp.reshape(xp.sum(dout * xhat, axis=_AXES), (channels,))
    dbias = xp.sum(dout, axis=_AXES)
    return dx, dweight, dbias

"""Batch, layer and group normalisation and their backward passes, as ``torch.nn.functional.batch_norm``,
``layer_norm`` and ``group_norm``.

All three standardise x over some axes, then scale and shift it with per-feature parameters::

    xhat = (x - mean) / sqrt(var + eps)        mean and var (biased, divided by M) over the M values of each group
    out  = weight * xhat + bias                weight, bias broadcast along the axes they do not cover

and share one backward pass, the statistics' dependence on x included::

    dxhat   = dout * weight
    dx      = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / sqrt(var + eps)
    dweight = sum(dout * xhat),   dbias = sum(dout)             over the axes the parameters are broadcast along

They differ only in which values share statistics and which share parameters:

    op           x           statistics over (M values)                     weight, bias
    batch norm   (N, C, *)   N and *, per channel                           (C,)
    layer norm   (*, S)      the trailing axes S = normalized_shape         S
    group norm   (N, C, *)   C / G channels and *, per sample and group     (C,)

Batch norm in evaluation (``training=False``) uses running statistics instead, constants for the backward pass
(``dx = dxhat / sqrt(running_var + eps)``). In training it returns the updated running statistics in its cache
(the caller's arrays are never written)::

    running_mean' = momentum * mean + (1 - momentum) * running_mean
    running_var'  = momentum * var * M / (M - 1) + (1 - momentum) * running_var      (the unbiased batch variance)

float16 and bfloat16 inputs are computed in float32 and rounded once (:mod:`xpcnn._precision`): statistics, the
running statistics' blend and every gradient.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._precision import half_in_float32, half_in_float32_backward
from .._validation import (
    as_bool,
    as_float,
    as_int,
    check_cache,
    check_floating,
    check_same_dtype,
    check_shape,
    check_upstream,
    namespace_and_device,
)

__all__ = [
    "BatchNormCache",
    "BatchNorm2dCache",
    "LayerNormCache",
    "GroupNormCache",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm2d_forward",
    "batch_norm2d_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
]

CHANNEL_AXIS = 1  # x is (N, C, *) for batch and group norm


# -- the shared core ----------------------------------------------------------------------------------------------


class Normalized(NamedTuple):
    """What the shared backward pass needs from a forward pass (the same for batch, layer and group norm)."""

    xhat: Any  # x's shape: the standardised input
    inv_std: Any  # 1 / sqrt(var + eps), broadcastable to stats_shape
    stats_shape: tuple  # x's shape with each group of values that share statistics on axes of their own
    stats_axes: tuple | None  # the axes of stats_shape those groups span; None: the statistics were constants
    weight: Any  # broadcastable to x's shape, or None
    has_bias: bool
    param_axes: tuple  # the axes of x the parameters are broadcast along (summed for dweight, dbias)
    param_shape: tuple  # the parameters' own shape


def _mean(xp, a, axes: tuple, count: int):
    """Mean over ``axes`` (kept); ``count`` values each. An empty group gives 0, not NaN (it only meets empty
    arrays)."""
    return xp.sum(a, axis=axes, keepdims=True) / max(count, 1)


def _standardize(xp, x, stats_shape: tuple, stats_axes: tuple, eps: float):
    """``(xhat, mean, var, inv_std)``: x standardised over ``stats_axes`` of ``stats_shape``; mean, var (biased)
    and inv_std keep those axes (length 1)."""
    count = math.prod(stats_shape[a] for a in stats_axes)
    v = xp.reshape(x, stats_shape)
    mean = _mean(xp, v, stats_axes, count)
    centred = v - mean
    var = _mean(xp, centred * centred, stats_axes, count)
    inv_std = 1.0 / xp.sqrt(var + eps)
    return xp.reshape(centred * inv_std, x.shape), mean, var, inv_std


def _scale_shift(xhat, weight, bias):
    out = xhat if weight is None else xhat * weight
    return out if bias is None else out + bias


def _backward(xp, dout, norm: Normalized, input_grad: bool):
    """``(dx, dweight, dbias)`` of ``out = weight * standardize(x) + bias`` (see the module docstring)."""
    xhat, inv_std, stats_shape, stats_axes, weight, has_bias, param_axes, param_shape = norm
    dweight = None if weight is None else xp.reshape(xp.sum(dout * xhat, axis=param_axes), param_shape)
    dbias = xp.reshape(xp.sum(dout, axis=param_axes), param_shape) if has_bias else None
    if not input_grad:
        return None, dweight, dbias
    dxhat = dout if weight is None else dout * weight
    if stats_axes is None:  # constant statistics (batch norm in evaluation)
        dx = dxhat * inv_std
    else:
        count = math.prod(stats_shape[a] for a in stats_axes)
        g, h = xp.reshape(dxhat, stats_shape), xp.reshape(xhat, stats_shape)
        dx = inv_std * (g - _mean(xp, g, stats_axes, count) - h * _mean(xp, g * h, stats_axes, count))
        dx = xp.reshape(dx, xhat.shape)
    return dx, dweight, dbias


def _check_eps(eps, *, positive: bool = False) -> float:
    eps = as_float(eps, "eps", minimum=0.0)
    if positive and eps == 0.0:
        raise ValueError("eps must be > 0 for training batch norm (a constant channel would divide 0 by 0), got 0.0")
    return eps


def _check_params(x, shape: tuple, what: str, **params) -> None:
    for name, a in params.items():
        if a is not None:
            check_shape(a, name, shape, what)
            check_same_dtype(a, name, x, "x")


def _check_channels_first(xp, x, layout: str) -> None:
    check_floating(xp, x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must be at least 2-D {layout}, got shape {tuple(x.shape)}")


def _per_channel(xp, a, ndim: int):
    """A (C,) array broadcastable against (N, C, *) of ``ndim`` axes."""
    return None if a is None else xp.reshape(a, (1, a.shape[0]) + (1,) * (ndim - 2))


def _channel_param_axes(ndim: int) -> tuple:
    return (0, *range(2, ndim))


# -- batch norm ---------------------------------------------------------------------------------------------------


class BatchNormCache(NamedTuple):
    """The cache of :func:`batch_norm_forward`: the backward pass's needs, the batch's statistics and the updated
    running statistics."""

    normalized: Normalized
    batch_mean: Any  # (C,), or None in evaluation and for an empty batch
    batch_var: Any  # (C,) unbiased, or None likewise
    running_mean: Any  # (C,) after this batch: updated in training, as given otherwise; None without them
    running_var: Any  # (C,) likewise


BatchNorm2dCache = BatchNormCache  # the name it had when only 2-D batch norm existed


def _batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps, layout):
    xp, _ = namespace_and_device(
        x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var,
        num_batches_tracked=num_batches_tracked,
        optional=("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
    )
    _check_channels_first(xp, x, layout)
    training = as_bool(training, "training")
    eps = _check_eps(eps, positive=training)
    momentum = None if momentum is None else as_float(momentum, "momentum")
    channels, ndim = x.shape[CHANNEL_AXIS], x.ndim
    _check_params(x, (channels,), "one value per channel of x", weight=weight, bias=bias,
                  running_mean=running_mean, running_var=running_var)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or neither)")
    tracked = running_mean is not None
    if num_batches_tracked is not None:
        if num_batches_tracked.ndim != 0 or not xp.isdtype(num_batches_tracked.dtype, "integral"):
            raise TypeError(
                "num_batches_tracked must be a 0-d integer array, "
                f"got shape {tuple(num_batches_tracked.shape)} and dtype {num_batches_tracked.dtype}"
            )
    if training and tracked and momentum is None and num_batches_tracked is None:
        raise ValueError("momentum=None (the cumulative average of the running statistics) needs num_batches_tracked")
    if not training and not tracked:
        raise ValueError("running_mean and running_var are needed when training=False")

    param_axes = _channel_param_axes(ndim)
    count = x.shape[0] * math.prod(x.shape[2:])  # values per channel
    batch_mean = batch_var = None
    new_mean, new_var = running_mean, running_var
    if training:
        if count == 1:
            raise ValueError(
                f"training batch norm needs more than one value per channel, got x of shape {tuple(x.shape)}"
            )
        xhat, mean, var, inv_std = _standardize(xp, x, tuple(x.shape), param_axes, eps)
        stats_axes = param_axes
        if count > 0:  # an empty batch leaves the running statistics as they were, as PyTorch
            batch_mean = xp.reshape(mean, (channels,))
            batch_var = xp.reshape(var, (channels,)) * (count / (count - 1))
            if tracked:
                factor = momentum if momentum is not None else 1.0 / xp.astype(num_batches_tracked, x.dtype)
                new_mean = factor * batch_mean + (1.0 - factor) * running_mean
                new_var = factor * batch_var + (1.0 - factor) * running_var
    else:
        inv_std = _per_channel(xp, 1.0 / xp.sqrt(running_var + eps), ndim)
        xhat = (x - _per_channel(xp, running_mean, ndim)) * inv_std
        stats_axes = None
    gamma = _per_channel(xp, weight, ndim)
    out = _scale_shift(xhat, gamma, _per_channel(xp, bias, ndim))
    norm = Normalized(xhat, inv_std, tuple(x.shape), stats_axes, gamma, bias is not None, param_axes, (channels,))
    return out, BatchNormCache(norm, batch_mean, batch_var, new_mean, new_var)


@half_in_float32
def batch_norm_forward(x, weight=None, bias=None, *, running_mean=None, running_var=None, training: bool = True,
                       momentum: float | None = 0.1, eps: float = 1e-5, num_batches_tracked=None):
    """Batch normalisation of ``(N, C, *)`` input (``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``...), per channel, as
    ``torch.nn.functional.batch_norm``.

    Parameters
    ----------
    x : array (N, C, *), real floating
    weight, bias : arrays (C,) or None
        The per-channel scale (gamma) and shift (beta); None leaves them out.
    running_mean, running_var : arrays (C,) or None
        Running statistics, given together. In evaluation they normalise x; in training the cache holds their
        update (the arrays given are not written).
    training : bool
        True: normalise with the batch's statistics (biased variance). False: with the running statistics.
    momentum : float or None
        The weight of this batch in the running statistics' update; None: their cumulative average, weight
        ``1 / num_batches_tracked``.
    eps : float
        Added to the variance; >= 0, and > 0 in training.
    num_batches_tracked : 0-d integer array or None
        Batches averaged so far, this one included (needed for ``momentum=None`` in training only).

    Returns
    -------
    out : array (N, C, *)
    cache : BatchNormCache
        For :func:`batch_norm_backward`; ``cache.running_mean``, ``cache.running_var``: the running statistics
        after this batch (updated in training; as given in evaluation and for an empty batch; None without
        them); ``cache.batch_mean``, ``cache.batch_var``: the batch's mean and unbiased variance (None in
        evaluation or for an empty batch).

    Raises
    ------
    ValueError
        x not at least 2-D; parameters or statistics not of shape (C,); exactly one value per channel in training;
        running statistics missing in evaluation or given alone; ``momentum=None`` without
        ``num_batches_tracked``; eps negative, NaN, infinite, or 0 in training.
    TypeError
        Non-floating x; dtypes that differ from x's; strings or None for numbers or flags.
    """
    return _batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps,
                       "(N, C, *)")


@half_in_float32_backward
def batch_norm_backward(dout, cache: BatchNormCache, *, input_grad: bool = True):
    """Gradients of :func:`batch_norm_forward`.

    Parameters
    ----------
    dout : array of the forward output's shape and dtype
    cache : BatchNormCache
        What :func:`batch_norm_forward` returned.
    input_grad : bool
        False skips dx (returned as None).

    Returns
    -------
    dx : array (N, C, *) or None
    dweight, dbias : arrays (C,), or None where the forward pass had no weight or no bias
    """
    check_cache(cache, BatchNormCache, "batch_norm")
    return _checked_backward(dout, cache.normalized, input_grad)


@half_in_float32
def batch_norm2d_forward(x, weight=None, bias=None, *, running_mean=None, running_var=None, training: bool = True,
                         momentum: float | None = 0.1, eps: float = 1e-5, num_batches_tracked=None):
    """:func:`batch_norm_forward` for ``(N, C, H, W)`` input only (x of another rank is a ValueError)."""
    namespace_and_device(x=x)  # a TypeError for a non-array
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    return _batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps,
                       "(N, C, H, W)")


@half_in_float32_backward
def batch_norm2d_backward(dout, cache: BatchNormCache, *, input_grad: bool = True):
    """Gradients of :func:`batch_norm2d_forward`: ``(dx, dweight, dbias)`` as :func:`batch_norm_backward`."""
    check_cache(cache, BatchNormCache, "batch_norm2d")
    return _checked_backward(dout, cache.normalized, input_grad)


def _checked_backward(dout, norm: Normalized, input_grad):
    xp, _ = check_upstream(dout, norm.xhat.shape, norm.xhat, norm.xhat.dtype)
    return _backward(xp, dout, norm, as_bool(input_grad, "input_grad"))


# -- layer norm ---------------------------------------------------------------------------------------------------


class LayerNormCache(NamedTuple):
    normalized: Normalized


def as_normalized_shape(value) -> tuple:
    """``normalized_shape`` (an int or a sequence of ints, each >= 0, at least one) as a tuple."""
    if isinstance(value, (tuple, list)):
        shape = tuple(as_int(v, "normalized_shape", minimum=0) for v in value)
    else:
        try:
            shape = (as_int(value, "normalized_shape", minimum=0),)
        except TypeError:
            raise TypeError(
                f"normalized_shape must be an int or a tuple of ints, got {type(value).__name__} {value!r}"
            ) from None
    if not shape:
        raise ValueError("normalized_shape must have at least one axis, got ()")
    return shape


@half_in_float32
def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """Layer normalisation over the trailing ``normalized_shape`` axes of x, as ``torch.nn.functional.layer_norm``.

    Parameters
    ----------
    x : array (*, *normalized_shape), real floating
    normalized_shape : int or tuple of ints
        The shape of the trailing axes normalised together (one set of statistics per leading index).
    weight, bias : arrays of shape normalized_shape, or None
        Elementwise scale and shift.
    eps : float
        Added to the variance; >= 0.

    Returns
    -------
    out : array of x's shape
    cache : LayerNormCache
        For :func:`layer_norm_backward`.

    Raises
    ------
    ValueError
        x's trailing axes not normalized_shape; an empty normalized_shape; weight or bias not of that shape; eps
        negative, NaN or infinite.
    TypeError
        Non-floating x; dtypes that differ from x's; normalized_shape, eps not numbers.
    """
    xp, _ = namespace_and_device(x=x, weight=weight, bias=bias, optional=("weight", "bias"))
    check_floating(xp, x, "x")
    shape = as_normalized_shape(normalized_shape)
    eps = _check_eps(eps)
    k = len(shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k:]) != shape:
        layout = ", ".join(map(str, shape))
        raise ValueError(
            f"x must have shape (*, {layout}) for normalized_shape={shape}, got shape {tuple(x.shape)}"
        )
    _check_params(x, shape, "normalized_shape", weight=weight, bias=bias)
    stats_axes = tuple(range(x.ndim - k, x.ndim))
    xhat, _, _, inv_std = _standardize(xp, x, tuple(x.shape), stats_axes, eps)
    out = _scale_shift(xhat, weight, bias)
    norm = Normalized(xhat, inv_std, tuple(x.shape), stats_axes, weight, bias is not None,
                      tuple(range(x.ndim - k)), shape)
    return out, LayerNormCache(norm)


@half_in_float32_backward
def layer_norm_backward(dout, cache: LayerNormCache, *, input_grad: bool = True):
    """Gradients of :func:`layer_norm_forward`: ``(dx, dweight, dbias)``; dweight and dbias have normalized_shape
    (None where the forward pass had no weight or no bias); dx is None when not ``input_grad``."""
    check_cache(cache, LayerNormCache, "layer_norm")
    return _checked_backward(dout, cache.normalized, input_grad)


# -- group norm ---------------------------------------------------------------------------------------------------


class GroupNormCache(NamedTuple):
    normalized: Normalized


@half_in_float32
def group_norm_forward(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """Group normalisation, as ``torch.nn.functional.group_norm``: the C channels of each sample in
    ``num_groups`` consecutive groups, each normalised over its channels and all their positions.

    Parameters
    ----------
    x : array (N, C, *), real floating
    num_groups : int
        G >= 1, dividing C (G = C: instance norm; G = 1: the whole sample).
    weight, bias : arrays (C,) or None
        Per-channel scale and shift.
    eps : float
        Added to the variance; >= 0.

    Returns
    -------
    out : array (N, C, *)
    cache : GroupNormCache
        For :func:`group_norm_backward`.

    Raises
    ------
    ValueError
        x not at least 2-D; num_groups < 1 or not dividing C; weight or bias not of shape (C,); eps negative, NaN
        or infinite.
    TypeError
        Non-floating x; dtypes that differ from x's; num_groups not an int.
    """
    xp, _ = namespace_and_device(x=x, weight=weight, bias=bias, optional=("weight", "bias"))
    _check_channels_first(xp, x, "(N, C, *)")
    groups = as_int(num_groups, "num_groups", minimum=1)
    eps = _check_eps(eps)
    n, channels, ndim = x.shape[0], x.shape[CHANNEL_AXIS], x.ndim
    if channels % groups:
        raise ValueError(f"num_groups={groups} must divide the channels of x, got x of shape {tuple(x.shape)}")
    _check_params(x, (channels,), "one value per channel of x", weight=weight, bias=bias)
    stats_shape = (n, groups, channels // groups, *x.shape[2:])  # only the channel axis split (Dask's reshape)
    stats_axes = tuple(range(2, ndim + 1))
    xhat, _, _, inv_std = _standardize(xp, x, stats_shape, stats_axes, eps)
    gamma = _per_channel(xp, weight, ndim)
    out = _scale_shift(xhat, gamma, _per_channel(xp, bias, ndim))
    norm = Normalized(xhat, inv_std, stats_shape, stats_axes, gamma, bias is not None, _channel_param_axes(ndim),
                      (channels,))
    return out, GroupNormCache(norm)


@half_in_float32_backward
def group_norm_backward(dout, cache: GroupNormCache, *, input_grad: bool = True):
    """Gradients of :func:`group_norm_forward`: ``(dx, dweight, dbias)``; dweight and dbias are (C,) (None where
    the forward pass had no weight or no bias); dx is None when not ``input_grad``."""
    check_cache(cache, GroupNormCache, "group_norm")
    return _checked_backward(dout, cache.normalized, input_grad)

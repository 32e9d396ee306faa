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

Batch and group norm also take channels-last input, ``(N, *, C)``, with ``data_format="NHWC"`` (computed in that
layout, never guessed). Each pass reads and writes the data as few times as the array API allows: the mean, then
the centred values' sum of squares (two-pass, stable), then ``out = (x - mean) * scale + shift`` with per-channel
``scale = weight / sqrt(var + eps)`` (one multiply-add); backward from the two sums ``sum(dout)`` and
``sum(dout * (x - mean))``, with dx in three passes.

Batch norm in evaluation (``training=False``) uses running statistics instead, constants for the backward pass
(``dx = dxhat / sqrt(running_var + eps)``), and computes ``x * scale + (bias - running_mean * scale)`` as PyTorch. In training it returns the updated running statistics in its cache
(the caller's arrays are never written)::

    running_mean' = momentum * mean + (1 - momentum) * running_mean
    running_var'  = momentum * var * M / (M - 1) + (1 - momentum) * running_var      (the unbiased batch variance)

float16 and bfloat16 inputs are computed in float32 and rounded once (:mod:`xpcnn._precision`): statistics, the
running statistics' blend and every gradient.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .._validation import cache_repr
from .._precision import half_in_float32, half_in_float32_backward
from .._layout import DATA_FORMATS, NCHW, NHWC, check_data_format  # noqa: F401  (re-exported)
from .._typing import Array
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
    "DATA_FORMATS",
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

# The layouts of batch and group norm's x (and out, dout, dx): channels first ``(N, C, *)``, PyTorch's and the
# default, or channels last ``(N, *, C)`` (xpcnn/_layout.py). Parameters and statistics are (C,) in both.


# -- the shared core ----------------------------------------------------------------------------------------------
#
# Every op looks at x through a "view": x reshaped (no copy) so that the values sharing statistics and the values
# sharing parameters lie along whole axes of it. Batch norm of (N, C, H, W) input uses (N, C, H*W), its statistics
# and parameters both over axes (0, 2); channels last (N, H, W, C) uses (N, H*W, C), over axes (0, 1). Sums over
# the view's last axis go through ``vecdot`` (one pass, no product array), the rest through ``sum``.


class Normalized(NamedTuple):
    """What the shared backward pass needs from a forward pass (the same for batch, layer and group norm)."""

    centred: Array  # x - mean in the view's shape; x itself when ``offset`` is given
    inv_std: Array  # 1 / sqrt(var + eps), the statistics axes kept (length 1): broadcastable to the view
    count: int  # values per set of statistics (M)
    stats_axes: tuple | None  # the view's axes each set of statistics spans; None: constants (evaluation)
    weight: Array | None  # broadcastable to the view, or None
    has_bias: bool
    param_axes: tuple  # the view's axes the parameters are broadcast along (summed for dweight, dbias)
    param_shape: tuple  # the parameters' own shape
    x_shape: tuple  # x's own shape (of out, dout and dx)
    offset: Array | None = None  # the mean still to subtract from ``centred`` (batch norm in evaluation), or None


def _sum(xp, a, axes: tuple) -> Array:
    """``sum(a)`` over ``axes``, kept (length 1). Leading axes are summed one at a time, the outermost first: each
    step adds whole contiguous rows (NumPy walks several leading axes at once with the short last axis as its inner
    loop, much slower for channels-last batch norm's views: figures in benchmarks/README.md)."""
    if len(axes) > 1 and axes == tuple(range(len(axes))):
        for axis in axes:
            a = xp.sum(a, axis=axis, keepdims=True)
        return a
    return xp.sum(a, axis=axes, keepdims=True)


def _sum_of_products(xp, a, b, axes: tuple) -> Array:
    """``sum(a * b)`` over ``axes``, kept (length 1). Where the last axis is summed, ``vecdot`` takes it without
    making the product array (one pass over a and b); the other axes are then summed on the small result."""
    last = a.ndim - 1
    if last not in axes or a.shape[last] == 0:
        return _sum(xp, a * b, axes)
    partial = xp.expand_dims(xp.vecdot(a, b), axis=-1)
    rest = tuple(ax for ax in axes if ax != last)
    return _sum(xp, partial, rest) if rest else partial


def _moments(xp, v, axes: tuple, count: int):
    """``(mean, centred, var)`` of the view ``v`` over ``axes``: two passes (the mean, then the sum of squares of
    the centred values), numerically stable; biased variance. An empty set gives 0, not NaN."""
    mean = _sum(xp, v, axes) / max(count, 1)
    centred = v - mean
    var = _sum_of_products(xp, centred, centred, axes) / max(count, 1)
    return mean, centred, var


def _scale_shift(xp, centred, inv_std, weight, bias) -> Array:
    """``centred * inv_std * weight + bias`` (weight, bias may be None) with one new array, where weight does not
    vary like inv_std (layer and group norm)."""
    out = centred * inv_std
    if weight is not None:
        out *= weight
    if bias is not None:
        out += bias
    return out


def _affine(xp, centred, scale, shift) -> Array:
    """``centred * scale + shift`` (shift may be None) with one new array: the shift is added into the product,
    which is ours (in place where the library allows, a new array on JAX)."""
    out = centred * scale
    if shift is not None:
        out += shift
    return out


def _input_gradient(xp, g, centred, scale, inv_std, sum_g, sum_gc, count: int) -> Array:
    """``dx = scale * (g - mean(g) - xhat * mean(g * xhat))`` with ``xhat = centred * inv_std``, the means over a
    set of statistics, from ``sum_g = sum(g)`` and ``sum_gc = sum(g * centred)``; three passes over the data.
    Batch norm passes ``g = dout`` and ``scale = weight * inv_std`` (per channel), layer and group norm
    ``g = dout * weight`` and ``scale = inv_std``."""
    n = max(count, 1)
    dx = g * scale
    dx -= centred * (scale * inv_std * inv_std * (sum_gc / n))
    dx -= scale * (sum_g / n)
    return dx


def _backward(xp, dout, norm: Normalized, input_grad: bool):
    """``(dx, dweight, dbias)`` of ``out = weight * (x - mean) * inv_std + bias`` (see the module docstring), each
    None where not wanted (dx without ``input_grad``, a parameter the forward pass did not have). Batch norm's
    statistics and parameters share their axes, so two per-channel sums serve all three gradients; layer and group
    norm's parameters cross their sets of statistics."""
    g = xp.reshape(dout, norm.centred.shape)
    per_channel = norm.stats_axes is None or norm.stats_axes == norm.param_axes
    dx, dweight, dbias = (_per_channel_gradients if per_channel else _grouped_gradients)(xp, g, norm, input_grad)
    return (None if dx is None else xp.reshape(dx, norm.x_shape),
            None if dweight is None else xp.reshape(dweight, norm.param_shape),
            None if dbias is None or not norm.has_bias else xp.reshape(dbias, norm.param_shape))


def _per_channel_gradients(xp, g, norm: Normalized, input_grad: bool):
    """Batch norm: ``s = sum(dout)``, ``t = sum(dout * (x - mean))`` per channel; ``dbias = s``,
    ``dweight = t * inv_std``, ``dx = scale * (dout - s / M - (x - mean) * inv_std**2 * t / M)`` with
    ``scale = weight * inv_std`` (``dx = scale * dout`` for constant statistics)."""
    inv_std, weight, axes = norm.inv_std, norm.weight, norm.param_axes
    training = norm.stats_axes is not None
    centred = norm.centred if norm.offset is None else norm.centred - norm.offset
    sum_g = _sum(xp, g, axes)
    sum_gc = _sum_of_products(xp, g, centred, axes) if weight is not None or (training and input_grad) else None
    dweight = None if weight is None else sum_gc * inv_std
    if not input_grad:
        return None, dweight, sum_g
    scale = inv_std if weight is None else inv_std * weight
    dx = _input_gradient(xp, g, centred, scale, inv_std, sum_g, sum_gc, norm.count) if training else g * scale
    return dx, dweight, sum_g


def _grouped_gradients(xp, g, norm: Normalized, input_grad: bool):
    """Layer and group norm: ``dbias = sum(dout)``, ``dweight = sum(dout * xhat)`` along the parameters' axes;
    ``dx`` from ``dxhat = dout * weight`` and its two sums over each set of statistics."""
    centred, inv_std, weight = norm.centred, norm.inv_std, norm.weight
    dbias = _sum(xp, g, norm.param_axes) if norm.has_bias else None
    dweight = None if weight is None else _sum_of_products(xp, g, centred * inv_std, norm.param_axes)
    if not input_grad:
        return None, dweight, dbias
    dxhat = g if weight is None else g * weight
    sum_g, sum_gc = _sum(xp, dxhat, norm.stats_axes), _sum_of_products(xp, dxhat, centred, norm.stats_axes)
    return _input_gradient(xp, dxhat, centred, inv_std, inv_std, sum_g, sum_gc, norm.count), dweight, dbias


def _check_eps(eps, *, positive: bool = False) -> float:
    eps = as_float(eps, "eps", minimum=0.0)
    if positive and eps == 0.0:
        raise ValueError("eps must be > 0 for training batch norm (a constant channel would divide 0 by 0), got 0.0")
    return eps


def channel_axis(ndim: int, data_format: str) -> int:
    """The channel axis of ``ndim``-D input in ``data_format``: 1 for NCHW, the last for NHWC."""
    return 1 if data_format == NCHW else ndim - 1


def layout_name(data_format: str, ndim: int | None = None, channels: str = "C") -> str:
    """``(N, C, *)``/``(N, *, C)``, or with ``ndim`` the spatial axes spelled out (``(N, H, W, C)``...)."""
    spatial = {None: ("*",), 2: (), 3: ("L",), 4: ("H", "W"), 5: ("D", "H", "W")}.get(ndim, ("*",))
    names = ("N", channels, *spatial) if data_format == NCHW else ("N", *spatial, channels)
    return f"({', '.join(names)})"


def _check_params(x, shape: tuple, what: str, data_format: str | None = None, **params) -> None:
    for name, a in params.items():
        if a is not None:
            if data_format is not None and tuple(a.shape) != tuple(shape) and x.ndim > 2:
                other = NHWC if data_format == NCHW else NCHW
                if tuple(a.shape) == (x.shape[channel_axis(x.ndim, other)],):
                    raise ValueError(
                        f"{name} must have shape {tuple(shape)} ({what} in data_format={data_format!r}), got "
                        f"{tuple(a.shape)}: x of shape {tuple(x.shape)} looks {other}; pass data_format={other!r}"
                    )
            check_shape(a, name, shape, what)
            check_same_dtype(a, name, x, "x")


def _check_channels_first(xp, x, layout: str) -> None:
    check_floating(xp, x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must be at least 2-D {layout}, got shape {tuple(x.shape)}")


def _channel_view(x_shape: tuple, data_format: str) -> tuple[tuple, tuple, tuple]:
    """``(view shape, its axes other than the channels', the per-channel broadcast shape)`` for (N, C, *) or
    (N, *, C) input: (N, C, L) over (0, 2), or (N, L, C) over (0, 1) channels last, L the positions; (N, C) over
    (0,) when there are no spatial axes."""
    if len(x_shape) == 2:
        return tuple(x_shape), (0,), (1, x_shape[1])
    if data_format == NHWC:
        return (x_shape[0], math.prod(x_shape[1:-1]), x_shape[-1]), (0, 1), (1, 1, x_shape[-1])
    return (x_shape[0], x_shape[1], math.prod(x_shape[2:])), (0, 2), (1, x_shape[1], 1)


def _broadcast(xp, a, shape: tuple):
    """``a`` reshaped to ``shape`` (to broadcast against a view), or None."""
    return None if a is None else xp.reshape(a, shape)


# -- batch norm ---------------------------------------------------------------------------------------------------


class BatchNormCache(NamedTuple):
    """The cache of :func:`batch_norm_forward`: the backward pass's needs, the batch's statistics and the updated
    running statistics.

    Fields: ``normalized``: the centred input, ``1 / sqrt(var + eps)`` per channel, the weight and what the shared
    backward pass sums over (a ``Normalized`` tuple); ``batch_mean``, ``batch_var``: (C,), the batch's mean and
    unbiased variance (None in evaluation and for an empty batch); ``running_mean``, ``running_var``: (C,), the
    running statistics after this batch (updated in training, as given otherwise; None without them).
    """

    __repr__ = cache_repr

    normalized: Normalized
    batch_mean: Array | None  # (C,), or None in evaluation and for an empty batch
    batch_var: Array | None  # (C,) unbiased, or None likewise
    running_mean: Array | None  # (C,) after this batch: updated in training, as given otherwise; None without them
    running_var: Array | None  # (C,) likewise


BatchNorm2dCache = BatchNormCache  # the name it had when only 2-D batch norm existed


def _blend_running(xp, batch_mean, batch_var, running_mean, running_var, momentum, num_batches_tracked, dtype):
    """The running statistics after a batch: ``factor * batch + (1 - factor) * running`` for the mean and the
    unbiased variance ((C,) each), ``factor = momentum``, or ``1 / num_batches_tracked`` (the cumulative average,
    the count already including this batch) when momentum is None; as PyTorch. The synchronised batch norm of
    :mod:`xpcnn.distributed` calls it too, so that both blend with the same operations in the same order."""
    factor = momentum if momentum is not None else 1.0 / xp.astype(num_batches_tracked, dtype)
    return factor * batch_mean + (1.0 - factor) * running_mean, factor * batch_var + (1.0 - factor) * running_var


def _batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps, layout,
                data_format):
    xp, _ = namespace_and_device(
        x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var,
        num_batches_tracked=num_batches_tracked,
        optional=("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
    )
    _check_channels_first(xp, x, layout)
    training = as_bool(training, "training")
    eps = _check_eps(eps, positive=training)
    momentum = None if momentum is None else as_float(momentum, "momentum")
    channels = x.shape[channel_axis(x.ndim, data_format)]
    _check_params(x, (channels,), "one value per channel of x", data_format, weight=weight, bias=bias,
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

    view_shape, axes, channel_shape = _channel_view(tuple(x.shape), data_format)
    v = xp.reshape(x, view_shape)
    count = math.prod(view_shape[a] for a in axes)  # values per channel
    batch_mean = batch_var = None
    new_mean, new_var = running_mean, running_var
    if training:
        if count == 1:
            raise ValueError(
                f"training batch norm needs more than one value per channel, got x of shape {tuple(x.shape)}"
            )
        mean, centred, var = _moments(xp, v, axes, count)
        inv_std = 1.0 / xp.sqrt(var + eps)
        if count > 0:  # an empty batch leaves the running statistics as they were, as PyTorch
            batch_mean = xp.reshape(mean, (channels,))
            batch_var = xp.reshape(var, (channels,)) * (count / (count - 1))
            if tracked:
                new_mean, new_var = _blend_running(xp, batch_mean, batch_var, running_mean, running_var, momentum,
                                                   num_batches_tracked, x.dtype)
    gamma = _broadcast(xp, weight, channel_shape)
    beta = _broadcast(xp, bias, channel_shape)
    if training:  # out = (x - mean) * scale + bias: one multiply-add on the centred values
        scale = inv_std if gamma is None else inv_std * gamma
        out = _affine(xp, centred, scale, beta)
        norm = Normalized(centred, inv_std, count, axes, gamma, bias is not None, axes, (channels,), tuple(x.shape))
    else:  # out = x * scale + (bias - running_mean * scale), as PyTorch: one multiply-add on x, nothing centred
        inv_std = _broadcast(xp, 1.0 / xp.sqrt(running_var + eps), channel_shape)
        mean = _broadcast(xp, running_mean, channel_shape)
        scale = inv_std if gamma is None else inv_std * gamma
        out = _affine(xp, v, scale, -mean * scale if beta is None else beta - mean * scale)
        norm = Normalized(v, inv_std, count, None, gamma, bias is not None, axes, (channels,), tuple(x.shape), mean)
    return xp.reshape(out, x.shape), BatchNormCache(norm, batch_mean, batch_var, new_mean, new_var)


@half_in_float32
def batch_norm_forward(x: Array, weight: Array | None = None, bias: Array | None = None, *,
                       running_mean: Array | None = None, running_var: Array | None = None, training: bool = True,
                       momentum: float | None = 0.1, eps: float = 1e-5, num_batches_tracked: Array | None = None,
                       data_format: str = NCHW) -> tuple[Array, BatchNormCache]:
    """Batch normalisation of ``(N, C, *)`` input (``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``...), per channel, as
    ``torch.nn.functional.batch_norm``; channels last, ``(N, *, C)``, with ``data_format="NHWC"``.

    Training computes each channel's mean, then the sum of squares of the centred values (two passes: stable),
    and writes the output as one multiply-add per value, ``(x - mean) * (weight / sqrt(var + eps)) + bias``.

    Parameters
    ----------
    x : array (N, C, *), or (N, *, C) channels last; real floating
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
    data_format : ``"NCHW"`` (default) or ``"NHWC"``
        Where x's channel axis is: second (``(N, C, *)``) or last (``(N, *, C)``); out and the gradients follow.
        Never guessed from the shape. Computed in that layout (no transposes).

    Returns
    -------
    out : array of x's shape and layout
    cache : BatchNormCache
        For :func:`batch_norm_backward` (it keeps ``x - mean`` and the per-channel statistics); ``cache.running_mean``, ``cache.running_var``: the running statistics
        after this batch (updated in training; as given in evaluation and for an empty batch; None without
        them); ``cache.batch_mean``, ``cache.batch_var``: the batch's mean and unbiased variance (None in
        evaluation or for an empty batch).

    Raises
    ------
    ValueError
        x not at least 2-D; parameters or statistics not of shape (C,); exactly one value per channel in training;
        running statistics missing in evaluation or given alone; ``momentum=None`` without
        ``num_batches_tracked``; eps negative, NaN, infinite, or 0 in training; data_format not ``"NCHW"`` or
        ``"NHWC"`` (parameters that fit the other layout's channel axis say so).
    TypeError
        Non-floating x; dtypes that differ from x's; strings or None for numbers or flags.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.arange(8, dtype=np.float32).reshape(4, 2)
    >>> out, cache = F.batch_norm_forward(x)
    >>> out.round(4)
    array([[-1.3416, -1.3416],
           [-0.4472, -0.4472],
           [ 0.4472,  0.4472],
           [ 1.3416,  1.3416]], dtype=float32)
    >>> dx, dweight, dbias = F.batch_norm_backward(np.ones_like(out), cache)
    >>> dx.round(4), dweight, dbias
    (array([[0., 0.],
           [0., 0.],
           [0., 0.],
           [0., 0.]], dtype=float32), None, None)
    """
    data_format = check_data_format(data_format)
    return _batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps,
                       layout_name(data_format), data_format)


@half_in_float32_backward
def batch_norm_backward(dout: Array, cache: BatchNormCache, *,
                        input_grad: bool = True) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients of :func:`batch_norm_forward`, in the forward pass's layout.

    With ``s = sum(dout)`` and ``t = sum(dout * (x - mean))`` per channel (two reductions, read from the cache's
    centred input), ``dbias = s``, ``dweight = t / std`` and
    ``dx = weight / std * (dout - s / M - (x - mean) * t / (M * std**2))``, M values per channel.

    Parameters
    ----------
    dout : array of the forward output's shape and dtype
    cache : BatchNormCache
        What :func:`batch_norm_forward` returned.
    input_grad : bool
        False skips dx (returned as None).

    Returns
    -------
    dx : array of x's shape and layout, or None
    dweight, dbias : arrays (C,), or None where the forward pass had no weight or no bias

    Raises
    ------
    TypeError
        Another op's cache, or a dout of another dtype or array library than the forward pass's.
    ValueError
        A dout of another shape (or on another device) than the forward output.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    >>> weight, bias = np.ones(3, dtype=np.float32), np.zeros(3, dtype=np.float32)
    >>> out, cache = F.batch_norm_forward(x, weight, bias)
    >>> dx, dweight, dbias = F.batch_norm_backward(x - 5.5, cache)
    >>> dx.shape, dweight.round(3), dbias
    ((2, 3, 2), array([12.166, 12.166, 12.166], dtype=float32), array([-8.,  0.,  8.], dtype=float32))
    """
    check_cache(cache, BatchNormCache, "batch_norm")
    return _checked_backward(dout, cache.normalized, input_grad)


@half_in_float32
def batch_norm2d_forward(x: Array, weight: Array | None = None, bias: Array | None = None, *,
                         running_mean: Array | None = None, running_var: Array | None = None, training: bool = True,
                         momentum: float | None = 0.1, eps: float = 1e-5, num_batches_tracked: Array | None = None,
                         data_format: str = NCHW) -> tuple[Array, BatchNormCache]:
    """:func:`batch_norm_forward` for 4-D input only: ``(N, C, H, W)``, or ``(N, H, W, C)`` with
    ``data_format="NHWC"``.

    Parameters
    ----------
    x : array, shape (N, C, H, W) or (N, H, W, C)
        Real floating dtype; the layout is ``data_format``'s.
    weight, bias, running_mean, running_var, training, momentum, eps, num_batches_tracked, data_format
        As :func:`batch_norm_forward`: (C,) arrays of x's dtype (or None) and the same options.

    Returns
    -------
    out : array
        x's shape, layout, dtype and device.
    cache : BatchNormCache
        As :func:`batch_norm_forward`'s (with the updated running statistics).

    Raises
    ------
    ValueError
        x of another rank than 4, or any error of :func:`batch_norm_forward`.
    TypeError
        x is not an array.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> out, cache = F.batch_norm2d_forward(np.ones((2, 4, 4, 3), dtype=np.float32), data_format="NHWC")
    >>> out.shape, cache.batch_mean.shape
    ((2, 4, 4, 3), (3,))
    """
    namespace_and_device(x=x)  # a TypeError for a non-array
    data_format = check_data_format(data_format)
    layout = layout_name(data_format, 4)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D {layout}, got shape {tuple(x.shape)}")
    return _batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps,
                       layout, data_format)


@half_in_float32_backward
def batch_norm2d_backward(dout: Array, cache: BatchNormCache, *,
                          input_grad: bool = True) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients of :func:`batch_norm2d_forward`, in the forward pass's layout (the formulas of
    :func:`batch_norm_backward`, over the axes this op normalised).

    Parameters
    ----------
    dout : array
        Gradient with respect to the forward output: x's shape and layout, dtype, library and device.
    cache : BatchNormCache
        What :func:`batch_norm2d_forward` returned.
    input_grad : bool, keyword only
        Compute dx (False: skip it and return None in its place).

    Returns
    -------
    dx : array or None
        x's shape and layout; None when not ``input_grad``.
    dweight, dbias : array of shape (C,), or None
        None where the forward pass had no weight or no bias.

    Raises
    ------
    TypeError
        Another op's cache, or a dout of another dtype or array library than the forward pass's.
    ValueError
        A dout of another shape (or on another device) than the forward output.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> out, cache = F.batch_norm2d_forward(np.ones((2, 3, 4, 4), dtype=np.float32), np.ones(3, dtype=np.float32))
    >>> dx, dweight, dbias = F.batch_norm2d_backward(np.ones_like(out), cache)
    >>> dx.shape, dweight, dbias
    ((2, 3, 4, 4), array([0., 0., 0.], dtype=float32), None)
    """
    check_cache(cache, BatchNormCache, "batch_norm2d")
    return _checked_backward(dout, cache.normalized, input_grad)


def _checked_backward(dout, norm: Normalized, input_grad):
    xp, _ = check_upstream(dout, norm.x_shape, norm.centred, norm.centred.dtype)
    return _backward(xp, dout, norm, as_bool(input_grad, "input_grad"))


# -- layer norm ---------------------------------------------------------------------------------------------------


class LayerNormCache(NamedTuple):
    """What :func:`layer_norm_forward` keeps for :func:`layer_norm_backward`. Fields: ``normalized``: the
    centred input ``x - mean``, the per-sample ``1 / sqrt(var + eps)``, the weight (or None), whether there was a
    bias, and the axes and shapes the backward pass sums over (a ``Normalized`` tuple)."""

    __repr__ = cache_repr

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
def layer_norm_forward(x: Array, normalized_shape: int | tuple[int, ...], weight: Array | None = None,
                       bias: Array | None = None, eps: float = 1e-5) -> tuple[Array, LayerNormCache]:
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

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    >>> out, cache = F.layer_norm_forward(x, 4, np.full(4, 2.0, dtype=np.float32), np.zeros(4, dtype=np.float32))
    >>> out.round(3)
    array([[-2.683, -0.894,  0.894,  2.683]], dtype=float32)
    >>> dx, dweight, dbias = F.layer_norm_backward(np.ones_like(out), cache)
    >>> dweight.round(3), dbias
    (array([-1.342, -0.447,  0.447,  1.342], dtype=float32), array([1., 1., 1., 1.], dtype=float32))
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
    size = math.prod(shape)
    view_shape = (math.prod(x.shape[:x.ndim - k]), size)  # a row per set of statistics
    _, centred, var = _moments(xp, xp.reshape(x, view_shape), (1,), size)
    inv_std = 1.0 / xp.sqrt(var + eps)
    out = _scale_shift(xp, centred, inv_std, _broadcast(xp, weight, (1, size)), _broadcast(xp, bias, (1, size)))
    norm = Normalized(centred, inv_std, size, (1,), _broadcast(xp, weight, (1, size)), bias is not None, (0,), shape,
                      tuple(x.shape))
    return xp.reshape(out, x.shape), LayerNormCache(norm)


@half_in_float32_backward
def layer_norm_backward(dout: Array, cache: LayerNormCache, *,
                        input_grad: bool = True) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients of :func:`layer_norm_forward`, in the forward pass's layout (the formulas of
    :func:`batch_norm_backward`, over the axes this op normalised).

    Parameters
    ----------
    dout : array
        Gradient with respect to the forward output: x's shape and layout, dtype, library and device.
    cache : LayerNormCache
        What :func:`layer_norm_forward` returned.
    input_grad : bool, keyword only
        Compute dx (False: skip it and return None in its place).

    Returns
    -------
    dx : array or None
        x's shape and layout; None when not ``input_grad``.
    dweight, dbias : array of shape normalized_shape, or None
        None where the forward pass had no weight or no bias.

    Raises
    ------
    TypeError
        Another op's cache, or a dout of another dtype or array library than the forward pass's.
    ValueError
        A dout of another shape (or on another device) than the forward output.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    >>> weight, bias = np.ones((3, 4), dtype=np.float32), np.zeros((3, 4), dtype=np.float32)
    >>> out, cache = F.layer_norm_forward(x, (3, 4), weight, bias)
    >>> dx, dweight, dbias = F.layer_norm_backward(np.ones_like(out), cache)
    >>> dx.shape, dweight.shape, dbias.shape
    ((2, 3, 4), (3, 4), (3, 4))
    """
    check_cache(cache, LayerNormCache, "layer_norm")
    return _checked_backward(dout, cache.normalized, input_grad)


# -- group norm ---------------------------------------------------------------------------------------------------


class GroupNormCache(NamedTuple):
    """What :func:`group_norm_forward` keeps for :func:`group_norm_backward`. Fields: ``normalized``: the
    centred input ``x - mean``, the per-(sample, group) ``1 / sqrt(var + eps)``, the weight (or None), whether
    there was a bias, and the axes and shapes the backward pass sums over (a ``Normalized`` tuple)."""

    __repr__ = cache_repr

    normalized: Normalized


@half_in_float32
def group_norm_forward(x: Array, num_groups: int, weight: Array | None = None, bias: Array | None = None,
                       eps: float = 1e-5, *, data_format: str = NCHW) -> tuple[Array, GroupNormCache]:
    """Group normalisation, as ``torch.nn.functional.group_norm``: the C channels of each sample in
    ``num_groups`` consecutive groups, each normalised over its channels and all their positions.

    Parameters
    ----------
    x : array (N, C, *), or (N, *, C) channels last; real floating
    num_groups : int
        G >= 1, dividing C (G = C: instance norm; G = 1: the whole sample).
    weight, bias : arrays (C,) or None
        Per-channel scale and shift.
    eps : float
        Added to the variance; >= 0.
    data_format : ``"NCHW"`` (default) or ``"NHWC"``
        Where x's channel axis is: second (``(N, C, *)``) or last (``(N, *, C)``); out and the gradients follow.
        Never guessed from the shape. Computed in that layout (no transposes).

    Returns
    -------
    out : array of x's shape and layout
    cache : GroupNormCache
        For :func:`group_norm_backward` (it keeps ``x - mean`` and the per-group statistics).

    Raises
    ------
    ValueError
        x not at least 2-D; num_groups < 1 or not dividing C; weight or bias not of shape (C,); eps negative, NaN
        or infinite; data_format not ``"NCHW"`` or ``"NHWC"``.
    TypeError
        Non-floating x; dtypes that differ from x's; num_groups not an int.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.arange(32, dtype=np.float32).reshape(2, 4, 2, 2)
    >>> out, cache = F.group_norm_forward(x, 2)
    >>> out.shape, bool(abs(out[0, :2].mean()) < 1e-6)
    ((2, 4, 2, 2), True)
    >>> F.group_norm_backward(np.ones_like(out), cache)[0].shape
    (2, 4, 2, 2)
    >>> F.group_norm_forward(np.ones((2, 3, 3, 4), dtype=np.float32), 2, data_format="NHWC")[0].shape
    (2, 3, 3, 4)
    """
    xp, _ = namespace_and_device(x=x, weight=weight, bias=bias, optional=("weight", "bias"))
    data_format = check_data_format(data_format)
    _check_channels_first(xp, x, layout_name(data_format))
    groups = as_int(num_groups, "num_groups", minimum=1)
    eps = _check_eps(eps)
    n, channels = x.shape[0], x.shape[channel_axis(x.ndim, data_format)]
    _check_params(x, (channels,), "one value per channel of x", data_format, weight=weight, bias=bias)
    if channels % groups:
        raise ValueError(
            f"num_groups={groups} must divide the channels of x, got x of shape {tuple(x.shape)}"
            + (" (NHWC: channels last)" if data_format == NHWC else "")
        )
    size = channels // groups
    positions = math.prod(x.shape[2:]) if data_format == NCHW else math.prod(x.shape[1:-1])
    if data_format == NCHW:  # (N, G, C/G, L): statistics over (2, 3), parameters along (0, 3)
        view_shape, stats_axes, param_axes, param_view = (n, groups, size, positions), (2, 3), (0, 3), \
            (1, groups, size, 1)
    else:  # (N, L, G, C/G): statistics over (1, 3), parameters along (0, 1)
        view_shape, stats_axes, param_axes, param_view = (n, positions, groups, size), (1, 3), (0, 1), \
            (1, 1, groups, size)
    _, centred, var = _moments(xp, xp.reshape(x, view_shape), stats_axes, size * positions)
    inv_std = 1.0 / xp.sqrt(var + eps)
    gamma = _broadcast(xp, weight, param_view)
    out = _scale_shift(xp, centred, inv_std, gamma, _broadcast(xp, bias, param_view))
    norm = Normalized(centred, inv_std, size * positions, stats_axes, gamma, bias is not None, param_axes,
                      (channels,), tuple(x.shape))
    out = xp.reshape(out, x.shape)
    return out, GroupNormCache(norm)


@half_in_float32_backward
def group_norm_backward(dout: Array, cache: GroupNormCache, *,
                        input_grad: bool = True) -> tuple[Array | None, Array | None, Array | None]:
    """Gradients of :func:`group_norm_forward`, in the forward pass's layout (the formulas of
    :func:`batch_norm_backward`, over the axes this op normalised).

    Parameters
    ----------
    dout : array
        Gradient with respect to the forward output: x's shape and layout, dtype, library and device.
    cache : GroupNormCache
        What :func:`group_norm_forward` returned.
    input_grad : bool, keyword only
        Compute dx (False: skip it and return None in its place).

    Returns
    -------
    dx : array or None
        x's shape and layout; None when not ``input_grad``.
    dweight, dbias : array of shape (C,), or None
        None where the forward pass had no weight or no bias.

    Raises
    ------
    TypeError
        Another op's cache, or a dout of another dtype or array library than the forward pass's.
    ValueError
        A dout of another shape (or on another device) than the forward output.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x, weight = np.ones((2, 5, 5, 4), dtype=np.float32), np.ones(4, dtype=np.float32)
    >>> out, cache = F.group_norm_forward(x, 2, weight, data_format="NHWC")
    >>> dx, dweight, dbias = F.group_norm_backward(np.ones_like(out), cache)
    >>> dx.shape, dweight.shape, dbias
    ((2, 5, 5, 4), (4,), None)
    """
    check_cache(cache, GroupNormCache, "group_norm")
    return _checked_backward(dout, cache.normalized, input_grad)

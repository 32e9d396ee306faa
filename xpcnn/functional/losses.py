"""Losses and their backward passes: softmax cross-entropy over class indices, and mean squared error.

``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"``. The backward passes take ``dloss``, the gradient
of whatever follows the loss: a Python number or a 0-d array for ``"mean"``/``"sum"``, an array of the unreduced
loss's shape for ``"none"``. Pass ``1.0`` when the loss is the final objective.

Cross-entropy, stable for large logits in float32 too (log-sum-exp with the row maximum subtracted)::

    log_probs = (z - max z) - log(sum exp(z - max z))       loss_n = -log_probs[n, target[n]]
    dlogits   = (softmax(z) - onehot(target)) * dloss       (divided by N for "mean")

MSE::

    loss = (pred - target)**2       dpred = 2 * (pred - target) * dloss     (divided by numel for "mean")
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

from array_api_compat import is_lazy_array

from .._precision import half_in_float32, half_in_float32_backward
from .._validation import (
    as_bool,
    check_cache,
    check_floating,
    check_ndim,
    check_reduction,
    check_same_dtype,
    check_shape,
    namespace_and_device,
)

__all__ = [
    "CrossEntropyCache",
    "MSECache",
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "mse_loss_forward",
    "mse_loss_backward",
]


class CrossEntropyCache(NamedTuple):
    probs: Any  # (N, C) softmax of the logits
    onehot: Any  # (N, C) bool, True at each row's target class
    reduction: str
    valid: Any  # (N,) bool, target in range; None when the range was checked eagerly


class MSECache(NamedTuple):
    diff: Any  # pred - target
    reduction: str


@half_in_float32
def softmax_cross_entropy_forward(logits, target, *, reduction="mean", check_targets=True):
    """logits: (N, C) floating; target: (N,) integer class indices in [0, C).

    Returns ``(loss, cache)``: a 0-d array, or (N,) for ``reduction="none"``.
    Out-of-range targets raise a ValueError. Checking reads the targets (a device sync on a GPU):
    ``check_targets=False`` skips it, and on lazy arrays (JAX, also under ``jax.jit``; Dask), whose values cannot
    be read without forcing a computation, it is skipped too; out-of-range targets then give a NaN loss and NaN
    gradients for their rows.
    """
    check_reduction(reduction)
    check_targets = as_bool(check_targets, "check_targets")
    xp, device = namespace_and_device(logits=logits, target=target)
    check_floating(xp, logits, "logits")
    check_ndim(logits, "logits", 2, "(N, C)")
    n, classes = logits.shape
    if classes < 1:
        raise ValueError(f"logits must have at least one class, got shape {tuple(logits.shape)}")
    if not xp.isdtype(target.dtype, "integral"):
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    check_shape(target, "target", (n,), "one class index per row of logits")
    # Class indices compared in int64: a small integer dtype could not count the classes (300 wraps in uint8).
    target = xp.astype(target, xp.int64)
    valid = None
    if not check_targets or is_lazy_array(target):
        valid = (target >= 0) & (target < classes)
    else:
        check_class_range(xp, target, classes)
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
    onehot = xp.arange(classes, dtype=target.dtype, device=device)[None, :] == target[:, None]
    losses = -xp.sum(xp.where(onehot, log_probs, 0.0), axis=1)
    if valid is not None:
        losses = xp.where(valid, losses, math.nan)
    return _reduce(xp, losses, reduction), CrossEntropyCache(xp.exp(log_probs), onehot, reduction, valid)


def check_class_range(xp, target, classes: int) -> None:
    """A ValueError when an integer target lies outside [0, classes); reads the values (a device sync on a GPU)."""
    if target.shape[0] and bool(xp.any((target < 0) | (target >= classes))):
        raise ValueError(
            f"target must hold class indices in [0, {classes - 1}], "
            f"got values in [{int(xp.min(target))}, {int(xp.max(target))}]"
        )


@half_in_float32_backward
def softmax_cross_entropy_backward(dloss, cache: CrossEntropyCache):
    """Returns dlogits (N, C)."""
    check_cache(cache, CrossEntropyCache, "softmax_cross_entropy")
    probs, onehot, reduction, valid = cache
    xp, _ = namespace_and_device(probs=probs)
    scale = _upstream_scale(xp, dloss, probs, reduction, (probs.shape[0],), probs.shape[0])
    if reduction == "none":
        scale = scale[:, None]
    dlogits = (probs - xp.astype(onehot, probs.dtype)) * scale
    return dlogits if valid is None else xp.where(valid[:, None], dlogits, math.nan)


@half_in_float32
def mse_loss_forward(pred, target, *, reduction="mean"):
    """pred, target: arrays of one shape and floating dtype. Returns ``(loss, cache)``."""
    check_reduction(reduction)
    xp, _ = namespace_and_device(pred=pred, target=target)
    check_floating(xp, pred, "pred")
    check_floating(xp, target, "target")
    check_same_dtype(target, "target", pred, "pred")
    check_shape(target, "target", pred.shape, "the shape of pred")
    diff = pred - target
    return _reduce(xp, diff * diff, reduction), MSECache(diff, reduction)


@half_in_float32_backward
def mse_loss_backward(dloss, cache: MSECache):
    """Returns dpred, of pred's shape: ``diff * (2 * dloss / count)``, the factor formed first (as PyTorch), so
    that a large difference does not overflow on the way."""
    check_cache(cache, MSECache, "mse_loss")
    diff, reduction = cache
    xp, _ = namespace_and_device(diff=diff)
    scale = _upstream_scale(xp, dloss, diff, reduction, diff.shape, math.prod(diff.shape))
    return diff * (2.0 * scale)


def _reduce(xp, losses, reduction: str):
    if reduction == "none":
        return losses
    return xp.sum(losses) if reduction == "sum" else xp.mean(losses)


def _upstream_scale(xp, dloss, ref, reduction: str, unreduced_shape: tuple, count: int):
    """dloss checked and turned into the factor each element's local gradient is multiplied by."""
    if reduction == "none":
        expected, allowed = tuple(unreduced_shape), f"an array of shape {tuple(unreduced_shape)}"
    else:
        expected, allowed = (), "a number or a 0-d array"
        if isinstance(dloss, numbers.Real) and not isinstance(dloss, bool):
            dloss = float(dloss)
            return _mean_scale(dloss, count) if reduction == "mean" else dloss
    if isinstance(dloss, bool) or not hasattr(dloss, "shape"):
        raise TypeError(f"dloss must be {allowed} (reduction={reduction!r}), got {type(dloss).__name__}")
    namespace_and_device(dloss=dloss, **{"the forward pass's arrays": ref})
    check_floating(xp, dloss, "dloss")
    check_shape(dloss, "dloss", expected, f"the loss's shape with reduction={reduction!r}")
    check_same_dtype(dloss, "dloss", ref, "the loss")
    return _mean_scale(dloss, count) if reduction == "mean" else dloss


def _mean_scale(dloss, count: int):
    """dloss / count; NaN for a mean over nothing (its gradient is empty anyway, as PyTorch's loss is NaN)."""
    return dloss / count if count else math.nan

"""Losses and their backward passes: softmax cross-entropy (class indices or class probabilities, class weights,
label smoothing, an ignored index, as PyTorch's ``cross_entropy``) and mean squared error.

``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"``. The backward passes take ``dloss``, the gradient
of whatever follows the loss: a Python number or a 0-d array for ``"mean"``/``"sum"``, an array of the unreduced
loss's shape for ``"none"``. Pass ``1.0`` when the loss is the final objective.

Cross-entropy, stable for large logits in float32 too (log-sum-exp with the maximum subtracted). Every form is a
weighted sum of the log-probabilities, ``q`` holding the weight of each (sample, class)::

    log_probs = (z - max z) - log(sum exp(z - max z))        (over the class axis)
    class indices t:        q = (1 - eps) * w[t] * onehot(t) + eps / C * w     (0 on rows whose t == ignore_index)
    class probabilities p:  q = ((1 - eps) * p + eps / C) * w
    loss_n    = -sum_c q[n, c] * log_probs[n, c]
    dlogits_n = (softmax(z_n) * sum_c q[n, c] - q_n) * dloss   (divided by the mean's denominator for "mean")

``"mean"`` divides by the sum of ``w[t]`` over the rows not ignored (their number without ``weight``) for class
indices, and by the number of rows for class probabilities, as PyTorch.

MSE::

    loss = (pred - target)**2       dpred = 2 * (pred - target) * dloss     (divided by numel for "mean")
                                    dtarget = -dpred
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

from array_api_compat import is_lazy_array

from .._precision import half_in_float32, half_in_float32_backward
from .._validation import (
    as_bool,
    as_float,
    as_int,
    cache_repr,
    check_cache,
    check_floating,
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

IGNORE_INDEX = -100
"""PyTorch's default ``ignore_index``: a target equal to it adds nothing to the loss (and is no class)."""


class CrossEntropyCache(NamedTuple):
    """What :func:`softmax_cross_entropy_backward` needs; ``repr`` summarises the arrays (class, shape, dtype).

    Fields (M: samples times spatial positions, C: classes, the class axis last): ``probs``: (M, C), the softmax of
    the logits; ``onehot``: (M, C) bool, True at each row's target class (None for class-probability targets);
    ``weights``: (M, C), the weight of each log-probability in the loss (None when it is ``onehot`` itself);
    ``denominator``: what ``"mean"`` divides by (an int, or a 0-d array: the target weights' sum);
    ``reduction``: the reduction; ``kept``: (M,) bool, False on ignored rows (None for probabilities); ``valid``:
    (M,) bool, target in range (None when checked eagerly); ``shape``: the logits' shape;
    ``target_coefficients``: (M, C), the loss's derivative in the class-probability target before the reduction,
    ``-(1 - label_smoothing) * weight * log_softmax`` (None for class indices, which have no gradient).
    """

    probs: Any  # (M, C) softmax of the logits, the class axis last (M: samples times spatial positions)
    onehot: Any  # (M, C) bool, True at each row's target class (class indices); None for class probabilities
    weights: Any  # (M, C) q, the weight of each log-probability in the loss; None when it is onehot itself
    denominator: Any  # what "mean" divides by: an int (the rows) or a 0-d array (the target weights' sum)
    reduction: str
    kept: Any  # (M,) bool, False on ignored rows (class indices); None for class probabilities
    valid: Any  # (M,) bool, target in range; None when the range was checked eagerly
    shape: tuple  # the logits' shape (N, C, d1, ...), or (C,) unbatched
    target_coefficients: Any = None  # (M, C) d(row loss)/d(target); None for class indices

    __repr__ = cache_repr


class MSECache(NamedTuple):
    """What :func:`mse_loss_backward` needs; ``repr`` summarises the arrays (class, shape, dtype).

    Fields: ``diff``: ``pred - target``, of pred's shape and dtype; ``reduction``: ``"mean"``, ``"sum"`` or
    ``"none"``.
    """

    diff: Any  # pred - target
    reduction: str

    __repr__ = cache_repr


@half_in_float32
def softmax_cross_entropy_forward(logits, target, *, weight=None, ignore_index: int = IGNORE_INDEX,
                                  label_smoothing: float = 0.0, reduction: str = "mean", check_targets: bool = True):
    """Softmax cross-entropy of logits against class indices or class probabilities, as
    ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    logits : array, shape (N, C) or (N, C, d1, ..., dk), or (C,) unbatched
        Unnormalised scores, floating; the class axis is axis 1 (axis 0 unbatched).
    target : array
        Class indices: integers of shape (N,) or (N, d1, ..., dk) (or () unbatched), in [0, C) or equal to
        ``ignore_index``. Or class probabilities: floating, of the logits' shape and dtype (each row a
        distribution over the C classes, not checked).
    weight : array, shape (C,), optional
        A weight per class, floating, of the logits' dtype, namespace and device.
    ignore_index : int
        A class-index target equal to it adds nothing to the loss, to the gradient or to the mean's denominator
        (default -100). Not allowed with class probabilities (as PyTorch).
    label_smoothing : float
        In [0, 1]: the target becomes ``(1 - label_smoothing)`` times itself plus ``label_smoothing / C`` on
        every class.
    reduction : {'mean', 'sum', 'none'}
        ``"mean"`` divides the sum by the summed ``weight[target]`` of the rows not ignored (class indices; their
        number without ``weight``), or by the number of rows (class probabilities).
    check_targets : bool
        Check that class indices lie in [0, C) (or equal ``ignore_index``), which reads them (a device sync on a
        GPU). ``False`` skips it, and on lazy arrays (JAX, also under ``jax.jit``; Dask) it is skipped too;
        out-of-range targets then give a NaN loss and NaN gradients for their rows.

    Returns
    -------
    loss : array
        0-d for ``"mean"`` and ``"sum"``; of the target's shape (without the class axis) for ``"none"``, 0 on
        ignored rows.
    cache : CrossEntropyCache

    Raises
    ------
    TypeError
        For non-floating logits, targets neither integer nor floating, a weight or probability target of another
        dtype, or a non-array.
    ValueError
        For a target of the wrong shape, out-of-range class indices (when checked), a weight of the wrong shape,
        ``label_smoothing`` outside [0, 1], ``ignore_index >= 0`` with class probabilities, or arrays of different
        libraries or devices.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn.functional import softmax_cross_entropy_forward, softmax_cross_entropy_backward
    >>> logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> loss, cache = softmax_cross_entropy_forward(logits, np.array([0, -100]), label_smoothing=0.1)
    >>> round(float(loss), 4)
    0.3729
    >>> softmax_cross_entropy_backward(1.0, cache)[1].tolist()   # the ignored row gets no gradient
    [0.0, 0.0, 0.0]
    """
    check_reduction(reduction)
    check_targets = as_bool(check_targets, "check_targets")
    ignore_index = as_int(ignore_index, "ignore_index")
    label_smoothing = as_float(label_smoothing, "label_smoothing", minimum=0.0)
    if label_smoothing > 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    xp, device = namespace_and_device(optional=("weight",), logits=logits, target=target, weight=weight)
    check_floating(xp, logits, "logits")
    if logits.ndim == 0:
        raise ValueError("logits must be (N, C), (N, C, d1, ...) or (C,) unbatched, got a 0-d array")
    shape = tuple(logits.shape)
    classes = shape[0] if logits.ndim == 1 else shape[1]
    if classes < 1:
        raise ValueError(f"logits must have at least one class, got shape {shape}")
    if weight is not None:
        check_floating(xp, weight, "weight")
        check_shape(weight, "weight", (classes,), "one weight per class")
        check_same_dtype(weight, "weight", logits, "logits", parameter=False)
    probabilities = xp.isdtype(target.dtype, "real floating")
    index_shape = shape[1:] if logits.ndim == 1 else (shape[0], *shape[2:])
    if probabilities:
        if tuple(target.shape) != shape:
            raise TypeError(
                f"target must hold integer class indices of shape {index_shape}, or class probabilities of the "
                f"logits' shape {shape}; got dtype {target.dtype} and shape {tuple(target.shape)}"
            )
        check_same_dtype(target, "target (class probabilities)", logits, "logits")
        if ignore_index >= 0:  # PyTorch's rule: a negative one (no class) is accepted and has no effect
            raise ValueError(f"ignore_index is only for class-index targets, not class probabilities (as PyTorch, "
                             f"which accepts only a negative one, ignored), got {ignore_index}")
    elif not xp.isdtype(target.dtype, "integral"):
        raise TypeError(f"target must hold integer class indices (or floating class probabilities), got dtype "
                        f"{target.dtype}")
    else:
        what = "one class index per row of logits" if logits.ndim == 2 else "the logits' shape without the class axis"
        check_shape(target, "target", index_shape, what)

    z = _classes_last(xp, logits)  # (M, C)
    shifted = z - xp.max(z, axis=1, keepdims=True)
    log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
    rows = z.shape[0]
    smoothing = label_smoothing / classes
    kept = valid = target_coefficients = None
    if probabilities:
        p = _classes_last(xp, target)
        if label_smoothing:
            p = p * (1.0 - label_smoothing) + smoothing
        weighted = log_probs * p
        q = p
        if weight is not None:
            weighted, q = weighted * weight, q * weight
        losses = -xp.sum(weighted, axis=1)
        denominator, onehot = rows, None
        target_coefficients = log_probs * (-(1.0 - label_smoothing))
        if weight is not None:
            target_coefficients = target_coefficients * weight
    else:
        # Class indices compared in int64: a small integer dtype could not count the classes (300 wraps in uint8).
        t = xp.reshape(xp.astype(target, xp.int64), (rows,))
        if not check_targets or is_lazy_array(t):
            valid = ((t >= 0) & (t < classes)) | (t == ignore_index)
        else:
            check_class_range(xp, t, classes, ignore_index)
        kept = t != ignore_index
        onehot = xp.arange(classes, dtype=xp.int64, device=device)[None, :] == t[:, None]
        if 0 <= ignore_index < classes:  # an ignored row would match that class's column
            onehot = onehot & kept[:, None]
        losses = -xp.sum(xp.where(onehot, log_probs, 0.0), axis=1)
        q = None  # without weight or smoothing, the one-hot rows are the weights
        if weight is not None:
            target_weight = xp.sum(xp.where(onehot, weight, 0.0), axis=1)  # w[t], 0 on ignored rows
            losses = losses * target_weight
            q = xp.where(onehot, target_weight[:, None], 0.0)
            denominator = xp.sum(target_weight)
        else:
            denominator = xp.sum(xp.astype(kept, z.dtype))
        if label_smoothing:
            smooth = -xp.sum(log_probs * weight if weight is not None else log_probs, axis=1)
            smooth = xp.where(kept, smooth, 0.0)
            every_class = xp.ones_like(z) if weight is None else xp.broadcast_to(weight, z.shape)
            losses = losses * (1.0 - label_smoothing) + smooth * smoothing
            q = xp.astype(onehot, z.dtype) if q is None else q
            q = q * (1.0 - label_smoothing) + xp.where(kept[:, None], every_class, 0.0) * smoothing
        if valid is not None:
            losses = xp.where(valid, losses, math.nan)
    if reduction == "none":
        loss = xp.reshape(losses, index_shape)
    elif reduction == "sum":
        loss = xp.sum(losses)
    else:
        loss = xp.sum(losses) / denominator if rows else xp.mean(losses)
    return loss, CrossEntropyCache(xp.exp(log_probs), onehot, q, denominator, reduction, kept, valid, shape,
                                   target_coefficients)


def check_class_range(xp, target, classes: int, ignore_index: int | None = None) -> None:
    """A ValueError when an integer target lies outside [0, classes) (and is not ``ignore_index``); reads the
    values (a device sync on a GPU)."""
    bad = (target < 0) | (target >= classes)
    if ignore_index is not None:
        bad = bad & (target != ignore_index)
    if math.prod(target.shape) and bool(xp.any(bad)):
        ignoring = f" or ignore_index {ignore_index}" if ignore_index is not None else ""
        raise ValueError(
            f"target must hold class indices in [0, {classes - 1}]{ignoring}, "
            f"got values in [{int(xp.min(target))}, {int(xp.max(target))}]"
        )


@half_in_float32_backward
def softmax_cross_entropy_backward(dloss, cache: CrossEntropyCache, *, target_grad: bool = False):
    """The gradient of the logits (and of class-probability targets, with ``target_grad=True``).

    Parameters
    ----------
    dloss : float or array
        A number or a 0-d array for ``"mean"``/``"sum"``; an array of the loss's shape for ``"none"``.
    cache : CrossEntropyCache
        From :func:`softmax_cross_entropy_forward`.
    target_grad : bool
        Also return the gradient of the target, as ``torch.autograd`` gives for a floating target: only for
        class-probability targets (``-(1 - label_smoothing) * weight * log_softmax(logits)``, reduced like the
        loss); class indices have none.

    Returns
    -------
    array
        dlogits, of the logits' shape, dtype, namespace and device.
    (dlogits, dtarget) : tuple of arrays
        With ``target_grad=True``; dtarget has the target's shape (the logits').

    Raises
    ------
    TypeError, ValueError
        For a ``dloss`` of the wrong kind, shape, dtype, library or device, or another op's cache;
        ``target_grad=True`` with class indices (ValueError).

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> logits = np.zeros((2, 4), dtype=np.float32)
    >>> loss, cache = F.softmax_cross_entropy_forward(logits, np.array([0, 3]))
    >>> F.softmax_cross_entropy_backward(1.0, cache)
    array([[-0.375,  0.125,  0.125,  0.125],
           [ 0.125,  0.125,  0.125, -0.375]], dtype=float32)
    """
    check_cache(cache, CrossEntropyCache, "softmax_cross_entropy")
    target_grad = as_bool(target_grad, "target_grad")
    probs, onehot, q, denominator, reduction, kept, valid, shape = (
        cache.probs, cache.onehot, cache.weights, cache.denominator, cache.reduction, cache.kept, cache.valid,
        cache.shape)
    if target_grad and cache.target_coefficients is None:
        raise ValueError("target_grad=True needs class-probability targets (floating, the logits' shape): class "
                         "indices have no gradient")
    xp, device = namespace_and_device(probs=probs)
    rows = probs.shape[0]
    unreduced = shape[1:] if len(shape) == 1 else (shape[0], *shape[2:])
    scale = _upstream_scale(xp, dloss, probs, reduction, unreduced, denominator)
    if kept is not None:  # ignored rows get no gradient (even where the mean's scale is inf or NaN)
        if not hasattr(scale, "shape"):
            scale = xp.asarray(scale, dtype=probs.dtype, device=device)
        scale = xp.where(kept, xp.reshape(scale, (-1,)), 0.0)
    if getattr(scale, "ndim", 0) >= 1:  # a per-row factor: "none", or rows ignored
        scale = xp.reshape(scale, (rows, 1))
    # As PyTorch: the gradient of the log-probabilities, g = -q * scale (0 off the targets, never 0 * scale),
    # then log-softmax's backward, g - probs * sum(g). The same as (probs * sum(q) - q) * scale for a finite
    # dloss; for an infinite one it gives PyTorch's NaN where -inf meets +inf (the target) or 0 meets inf.
    if not hasattr(scale, "shape"):
        scale = xp.asarray(scale, dtype=probs.dtype, device=device)
    if q is None:  # one-hot rows: sum(g) = -scale
        dlogits = xp.where(onehot, -scale, xp.zeros_like(probs)) + probs * scale
    else:  # class probabilities are multiplied everywhere (PyTorch's 0 * inf is NaN there too)
        g = -q * scale if onehot is None else xp.where(q != 0, -q * scale, xp.zeros_like(probs))
        dlogits = g - probs * xp.sum(g, axis=1, keepdims=True)
    if valid is not None:
        dlogits = xp.where(valid[:, None], dlogits, math.nan)
    if target_grad:
        dtarget = cache.target_coefficients * scale
        return _classes_back(xp, dlogits, shape), _classes_back(xp, dtarget, shape)
    return _classes_back(xp, dlogits, shape)


def _classes_last(xp, a):
    """(M, C) rows of class scores: (N, C) as it is, (C,) as one row, (N, C, d1, ...) with the class axis last."""
    if a.ndim == 1:
        return xp.reshape(a, (1, a.shape[0]))
    if a.ndim == 2:
        return a
    moved = xp.moveaxis(a, 1, -1)
    return xp.reshape(moved, (-1, a.shape[1]))


def _classes_back(xp, rows, shape):
    """The inverse of :func:`_classes_last`: (M, C) back to ``shape``."""
    if len(shape) <= 2:
        return xp.reshape(rows, shape)
    moved = xp.reshape(rows, (shape[0], *shape[2:], shape[1]))
    return xp.moveaxis(moved, -1, 1)


@half_in_float32
def mse_loss_forward(pred, target, *, reduction="mean"):
    """Mean squared error ``(pred - target)**2``, reduced, as ``torch.nn.functional.mse_loss``.

    Parameters
    ----------
    pred : array
        Any shape (no layout is assumed), real floating dtype.
    target : array
        pred's shape, dtype, library and device.
    reduction : {"mean", "sum", "none"}, keyword only
        ``"mean"`` (default) and ``"sum"`` give a 0-d array; ``"none"`` the elementwise losses, of pred's shape.

    Returns
    -------
    loss : array
        0-d, or pred's shape for ``"none"``; pred's dtype and device.
    cache : MSECache
        ``pred - target`` and the reduction, for :func:`mse_loss_backward`.

    Raises
    ------
    ValueError
        An unknown reduction, or a target of another shape.
    TypeError
        Non-floating arrays, or a target of another dtype or library.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> loss, cache = F.mse_loss_forward(np.array([1.0, 3.0]), np.array([0.0, 1.0]))
    >>> float(loss)
    2.5
    """
    check_reduction(reduction)
    xp, _ = namespace_and_device(pred=pred, target=target)
    check_floating(xp, pred, "pred")
    check_floating(xp, target, "target")
    check_same_dtype(target, "target", pred, "pred")
    check_shape(target, "target", pred.shape, "the shape of pred")
    diff = pred - target
    return _reduce(xp, diff * diff, reduction), MSECache(diff, reduction)


@half_in_float32_backward
def mse_loss_backward(dloss, cache: MSECache, *, target_grad: bool = False):
    """The gradient of pred (and of target, with ``target_grad=True``).

    ``dpred = diff * (2 * dloss / count)``, the factor formed first (as PyTorch), so that a large difference does
    not overflow on the way; ``dtarget = -dpred``, as PyTorch's autograd gives a target that requires grad.

    Parameters
    ----------
    dloss : float or array
        A number or a 0-d array for ``"mean"``/``"sum"``; an array of pred's shape for ``"none"``.
    cache : MSECache
        From :func:`mse_loss_forward`.
    target_grad : bool
        Also return the target's gradient (default False: dpred alone, as before).

    Returns
    -------
    dpred : array
        Of pred's shape, dtype, namespace and device.
    dtarget : array
        Only with ``target_grad=True``: ``(dpred, dtarget)``.

    Raises
    ------
    TypeError, ValueError
        For a ``dloss`` of the wrong kind, shape, dtype, library or device, or another op's cache.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn.functional import mse_loss_forward, mse_loss_backward
    >>> loss, cache = mse_loss_forward(np.array([1.0, 3.0]), np.array([0.0, 0.0]))
    >>> dpred, dtarget = mse_loss_backward(1.0, cache, target_grad=True)
    >>> dpred.tolist(), dtarget.tolist()
    ([1.0, 3.0], [-1.0, -3.0])
    """
    check_cache(cache, MSECache, "mse_loss")
    target_grad = as_bool(target_grad, "target_grad")
    diff, reduction = cache
    xp, _ = namespace_and_device(diff=diff)
    scale = _upstream_scale(xp, dloss, diff, reduction, diff.shape, math.prod(diff.shape))
    dpred = diff * (2.0 * scale)
    return (dpred, -dpred) if target_grad else dpred


def _reduce(xp, losses, reduction: str):
    if reduction == "none":
        return losses
    return xp.sum(losses) if reduction == "sum" else xp.mean(losses)


def _upstream_scale(xp, dloss, ref, reduction: str, unreduced_shape: tuple, count):
    """dloss checked and turned into the factor each element's local gradient is multiplied by; ``count`` is what
    a mean divides by (an int, or a 0-d array such as the summed class weights)."""
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


def _mean_scale(dloss, count):
    """dloss / count; NaN for a mean over nothing (its gradient is empty anyway, as PyTorch's loss is NaN). An
    array count (summed weights) is divided by as it is: 0 gives inf or NaN, as in PyTorch."""
    if isinstance(count, int):
        return dloss / count if count else math.nan
    return dloss / count

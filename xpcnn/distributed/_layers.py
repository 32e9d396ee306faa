"""The layers whose training forward pass depends on more than their own sample, made data-parallel.

* :class:`SyncBatchNorm1d`, :class:`SyncBatchNorm2d`: batch norm over the GLOBAL batch, in either layout
  (``data_format`` "NCHW" or "NHWC"), computed with the single-process batch norm's own helpers
  (:mod:`xpcnn.functional.normalization`: the same view of x, two-pass moments, one multiply-add per value, the
  same input-gradient formula). Each replica contributes per-channel ``(count, mean, var, sum(x - mean))`` of its
  shard; the driver merges them in rank order (:func:`._exchange.merge_moments`) and the merged statistics
  normalise every shard and update the running statistics identically everywhere. The backward pass exchanges the
  two per-channel sums the input gradient needs, ``sum(dout)`` and ``sum(dout * (x - mean))``::

      dx = weight / std * (dout - sum(dout) / M - (x - mean) * sum(dout * (x - mean)) / (M * std**2))

  with mean, std and M (values per channel) those of the global batch. ``dweight`` and ``dbias`` are this shard's
  partial sums, reduced with the other gradients. A shard that is the whole batch (one replica) gets its own
  statistics back unchanged: the same bits as :func:`xpcnn.fit`.
* :class:`GlobalDropout`: the mask of a shard is the part of the global batch's mask at the shard's rows
  (``dropout_forward(..., offset=)``), so a sample gets the same mask whichever replica holds it.

:func:`prepare` swaps a replica's modules for these subclasses in place (``module.__class__``; parameters, buffers
and state-dict names stay), and gives them the replica's :class:`ShardContext`. In evaluation mode they are the
plain layers, except a batch norm without running statistics, which normalises with the statistics of the global
chunk being evaluated (synchronised, as one process's batch). A single process never sees them.
"""

from __future__ import annotations

import math

from .. import functional as F
from ..nn.layers import BatchNorm1d, BatchNorm2d, Dropout, _BatchNorm
from ..nn.module import Module
from .._precision import COMPUTE_DTYPE, is_low_precision
from .._validation import namespace_and_device
from ..functional.normalization import (
    Normalized, _affine, _broadcast, _channel_view, _input_gradient, _moments, _sum, _sum_of_products,
)
from ..functional.normalization import _blend_running as blend_running

__all__ = ["ShardContext", "SyncBatchNorm1d", "SyncBatchNorm2d", "GlobalDropout", "prepare", "named_modules"]


class ShardContext:
    """What the prepared layers of one replica share: the conversation to exchange through and where this
    replica's shard starts in the global batch (set before every step)."""

    def __init__(self, conversation, replicas: int):
        self.conversation = conversation
        self.replicas = replicas
        self.row_offset = 0


class _SyncBatchNorm:
    """Mixed in before a batch norm class: training statistics over the global batch (see the module docstring)."""

    context: ShardContext | None = None

    def forward(self, x):
        if self.context is None or (not self.training and self.track_running_stats):
            self._sync_cache = None
            return super().forward(x)
        self._check_channels(x, self.num_features, tuple(self.layouts.values()), tuple(self.layouts))
        xp, _ = namespace_and_device(x=x)
        # float16 and bfloat16 are computed in float32 and rounded once, as the single-process batch norm does
        up, down = _precision_casts(xp, x.dtype)
        channels = self.num_features
        view_shape, axes, channel_shape = _channel_view(tuple(x.shape), self.data_format)
        v = xp.reshape(up(x), view_shape)
        local_count = math.prod(view_shape[a] for a in axes)
        local_mean, local_centred, local_var = _moments(xp, v, axes, local_count)
        # the residual sum(x - mean) makes the merge as accurate as two passes over the global batch (not needed,
        # and not computed, when this replica is alone)
        residual = None if self.context.replicas == 1 else xp.reshape(_sum(xp, local_centred, axes), (channels,))
        count, mean, var = self.context.conversation.exchange(
            "moments", (local_count, xp.reshape(local_mean, (channels,)), xp.reshape(local_var, (channels,)),
                        residual))
        if count == 1:
            raise ValueError(
                f"{type(self).__name__}: training batch norm needs more than one value per channel in the global "
                f"batch, got {count}"
            )
        # A shard that is the whole global batch (one replica, or the others empty) gets its own statistics back
        # unchanged: its centred values are the global ones, bit for bit.
        centred = local_centred if local_count == count else v - xp.reshape(mean, channel_shape)
        inv_std = 1.0 / xp.sqrt(xp.reshape(var, channel_shape) + self.eps)
        if self.track_running_stats:
            self.num_batches_tracked = self.num_batches_tracked + 1
            if count > 0:  # an empty batch leaves the statistics as they were, as PyTorch
                self.running_mean, self.running_var = map(down, _blend_running(
                    xp, mean, var, count, up(self.running_mean), up(self.running_var), self.momentum,
                    self.num_batches_tracked, v.dtype))
        weight, bias = map(up, self._affine_data())
        gamma, beta = _broadcast(xp, weight, channel_shape), _broadcast(xp, bias, channel_shape)
        scale = inv_std if gamma is None else inv_std * gamma
        out = _affine(xp, centred, scale, beta)
        self._cache = "synchronised"
        self._sync_cache = (Normalized(centred, inv_std, count, axes, gamma, bias is not None, axes, (channels,),
                                       tuple(x.shape)), x.dtype)
        return down(xp.reshape(out, x.shape))

    def backward(self, dout, *, input_grad=True):
        if getattr(self, "_sync_cache", None) is None:
            return super().backward(dout, input_grad=input_grad)
        self._take_cache()
        (norm, dtype), self._sync_cache = self._sync_cache, None
        xp, _ = namespace_and_device(dout=dout)
        if dout.dtype != dtype or tuple(dout.shape) != norm.x_shape:
            raise (TypeError if dout.dtype != dtype else ValueError)(
                f"{type(self).__name__}.backward: dout must have the forward output's shape {norm.x_shape} and "
                f"dtype {dtype}, got shape {tuple(dout.shape)} and dtype {dout.dtype}")
        up, down = _precision_casts(xp, dout.dtype)
        channels, axes, inv_std, gamma = self.num_features, norm.param_axes, norm.inv_std, norm.weight
        g = xp.reshape(up(dout), norm.centred.shape)
        # this shard's sums; dweight and dbias are its partial sums, reduced with the other gradients
        sum_g = _sum(xp, g, axes)
        sum_gc = _sum_of_products(xp, g, norm.centred, axes) if gamma is not None or input_grad else None
        if self.weight is not None:
            self.weight.accumulate(down(xp.reshape(sum_gc * inv_std, (channels,))))
        if self.bias is not None:
            self.bias.accumulate(down(xp.reshape(sum_g, (channels,))))
        if not input_grad:
            return None
        # dx needs the global batch's two sums
        sum_g, sum_gc = (xp.reshape(s, inv_std.shape) for s in self.context.conversation.exchange(
            "sum", (xp.reshape(sum_g, (channels,)), xp.reshape(sum_gc, (channels,)))))
        scale = inv_std if gamma is None else inv_std * gamma
        dx = _input_gradient(xp, g, norm.centred, scale, inv_std, sum_g, sum_gc, norm.count)
        return down(xp.reshape(dx, norm.x_shape))


def _precision_casts(xp, dtype):
    """``(up, down)``: casts to the dtype the computation runs in (float32 for float16 and bfloat16, as
    :mod:`xpcnn._precision`) and back to ``dtype``; identities otherwise. Both pass None through."""
    if not is_low_precision(xp, dtype):
        return (lambda a: a), (lambda a: a)
    compute = getattr(xp, COMPUTE_DTYPE)
    return ((lambda a: None if a is None else xp.astype(a, compute)),
            (lambda a: None if a is None else xp.astype(a, dtype)))


def _blend_running(xp, mean, var, count: int, running_mean, running_var, momentum, num_batches_tracked, dtype):
    """The running statistics after a batch of global ``mean`` and biased ``var`` ((C,) each): the unbiased
    variance, then :func:`xpcnn.functional.normalization._blend_running`, as single-process batch norm does."""
    return blend_running(xp, mean, var * (count / (count - 1)), running_mean, running_var, momentum,
                         num_batches_tracked, dtype)


_SYNC_BATCH_NORM_DOC = """:class:`xpcnn.nn.{base}` with statistics over the global batch of a data-parallel step.

    :func:`xpcnn.distributed.fit` turns every ``nn.{base}`` of the replicas' models into this class (the same
    parameters, buffers and state-dict names) and binds it to its replica: in training mode it normalises its shard
    with the merged statistics of the global batch and exchanges the two per-channel sums of its backward pass
    (see :mod:`xpcnn.distributed._layers`). In evaluation mode it is the plain layer, except without running
    statistics: it then normalises with the statistics of the global chunk evaluated, as :func:`xpcnn.evaluate`
    with its batches. Without a replica (built by hand) it is the plain layer; the model ``fit`` returns holds
    plain ``nn.{base}`` modules.

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats, bias, data_format, xp, device, dtype
        As :class:`xpcnn.nn.{base}` ("NCHW" and "NHWC" layouts both synchronised).

    Raises
    ------
    ValueError
        As :class:`xpcnn.nn.{base}`; in a step, a global batch with one value per channel.

    Examples
    --------
    >>> import numpy as np
    >>> import xpcnn.distributed as xd
    >>> bn = xd.{name}(3)
    >>> out = bn(np.arange({size}, dtype=np.float32).reshape({shape}))
    >>> out.shape, bn.running_mean.shape
    ({shape}, (3,))
    """


class SyncBatchNorm1d(_SyncBatchNorm, BatchNorm1d):
    __doc__ = _SYNC_BATCH_NORM_DOC.format(base="BatchNorm1d", name="SyncBatchNorm1d", size=12, shape="(4, 3)")


class SyncBatchNorm2d(_SyncBatchNorm, BatchNorm2d):
    __doc__ = _SYNC_BATCH_NORM_DOC.format(base="BatchNorm2d", name="SyncBatchNorm2d", size=48,
                                          shape="(2, 3, 2, 4)")


class GlobalDropout(Dropout):
    """:class:`xpcnn.nn.Dropout` drawing each shard's part of the global batch's mask.

    :func:`xpcnn.distributed.fit` turns every ``nn.Dropout`` of the replicas' models into this class: a replica
    holding rows ``lo:hi`` of a global batch draws the part of the global batch's mask at those rows (the
    counter-based generator at an offset), so every sample gets the mask it gets in :func:`xpcnn.fit`, whichever
    replica holds it. Without a replica it is the plain layer.

    Parameters
    ----------
    p, seed
        As :class:`xpcnn.nn.Dropout`.

    Examples
    --------
    >>> import numpy as np
    >>> import xpcnn.distributed as xd
    >>> from xpcnn import nn
    >>> x = np.ones((4, 6), dtype=np.float32)
    >>> bool((xd.GlobalDropout(0.5, seed=1)(x) == nn.Dropout(0.5, seed=1)(x)).all())
    True
    """

    context: ShardContext | None = None

    def forward(self, x):
        if not self.training or self.p == 0.0 or self.context is None:
            return super().forward(x)
        offset = self.context.row_offset * math.prod(x.shape[1:])
        out, self._cache = F.dropout_forward(x, self.p, seed=self.seed, stream=self.calls, offset=offset)
        self.calls += 1
        return out


_SYNC_CLASSES = {BatchNorm1d: SyncBatchNorm1d, BatchNorm2d: SyncBatchNorm2d, Dropout: GlobalDropout}


def named_modules(module: Module, prefix: str = ""):
    """``(name, module)`` for ``module`` and every module below it, depth first, named as in the state dict."""
    yield prefix.rstrip("."), module
    for name, child in module.named_children():
        yield from named_modules(child, f"{prefix}{name}.")


def check_supported(model: Module) -> None:
    """A TypeError for a batch norm subclass this module cannot synchronise (its forward pass is its own)."""
    for name, module in named_modules(model):
        if isinstance(module, _BatchNorm) and type(module) not in _SYNC_CLASSES and not isinstance(
                module, _SyncBatchNorm):
            raise TypeError(
                f"model module {name!r} is a {type(module).__name__}, a batch norm subclass that data-parallel "
                "training cannot synchronise; use nn.BatchNorm1d/BatchNorm2d"
            )


def prepare(model: Module, context: ShardContext) -> bool:
    """Swap ``model``'s batch norm and dropout modules for their data-parallel classes, bound to ``context``.
    Returns whether any step of the model exchanges (it has a synchronised batch norm)."""
    check_supported(model)
    exchanges = False
    for _, module in named_modules(model):
        sync = _SYNC_CLASSES.get(type(module))
        if sync is not None:
            module.__class__ = sync
        if isinstance(module, (_SyncBatchNorm, GlobalDropout)):
            module.context = context
            exchanges = exchanges or isinstance(module, _SyncBatchNorm)
    return exchanges


def dropout_calls(model: Module) -> dict:
    """{module name: training forward passes so far} of every dropout module (their masks' stream)."""
    return {name: m.calls for name, m in named_modules(model) if isinstance(m, Dropout)}


def set_dropout_calls(model: Module, calls: dict) -> None:
    for name, module in named_modules(model):
        if isinstance(module, Dropout) and name in calls:
            module.calls = int(calls[name])

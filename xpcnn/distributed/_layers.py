"""The layers whose training forward pass depends on more than their own sample, made data-parallel.

* :class:`SyncBatchNorm1d`, :class:`SyncBatchNorm2d`: batch norm over the GLOBAL batch. Each replica contributes
  per-channel ``(count, mean, M2)`` of its shard; the merged statistics normalise every shard and update the
  running statistics identically everywhere. The backward pass exchanges the two per-channel sums the input
  gradient needs, ``sum(dxhat)`` and ``sum(dxhat * xhat)``::

      xhat = (x - mean) / sqrt(var + eps)                                       mean, var: the global batch's
      dx   = (dxhat - sum(dxhat) / M - xhat * sum(dxhat * xhat) / M) / sqrt(var + eps)   M: values per channel

  ``dweight`` and ``dbias`` are this shard's partial sums, reduced with the other gradients.
* :class:`GlobalDropout`: the mask of a shard is the part of the global batch's mask at the shard's rows
  (``dropout_forward(..., offset=)``), so a sample gets the same mask whichever replica holds it.

:func:`prepare` swaps a replica's modules for these subclasses in place (``module.__class__``; parameters, buffers
and state-dict names stay), and gives them the replica's :class:`ShardContext`. In evaluation mode they are the
plain layers. A single process never sees them.
"""

from __future__ import annotations

import math

from .. import functional as F
from ..nn.layers import BatchNorm1d, BatchNorm2d, Dropout, _BatchNorm
from ..nn.module import Module
from .._validation import namespace_and_device

__all__ = ["ShardContext", "SyncBatchNorm1d", "SyncBatchNorm2d", "GlobalDropout", "prepare", "named_modules"]


class ShardContext:
    """What the prepared layers of one replica share: the conversation to exchange through and where this
    replica's shard starts in the global batch (set before every step)."""

    def __init__(self, conversation):
        self.conversation = conversation
        self.row_offset = 0


class _SyncBatchNorm:
    """Mixed in before a batch norm class: training statistics over the global batch (see the module docstring)."""

    context: ShardContext | None = None

    def forward(self, x):
        if not self.training or self.context is None:
            self._sync_cache = None
            return super().forward(x)
        self._check_channels(x, self.num_features, tuple(self.layouts.values()), tuple(self.layouts))
        xp, _ = namespace_and_device(x=x)
        axes = (0, *range(2, x.ndim))
        local_count = x.shape[0] * math.prod(x.shape[2:])
        local_mean = xp.sum(x, axis=axes) / max(local_count, 1)
        centred = x - self._per_channel(xp, local_mean, x.ndim)
        local_m2 = xp.sum(centred * centred, axis=axes)
        count, mean, var = self.context.conversation.exchange("moments", (local_count, local_mean, local_m2))
        if count == 1:
            raise ValueError(
                f"{type(self).__name__}: training batch norm needs more than one value per channel in the global "
                f"batch, got {count}"
            )
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        xhat = (x - self._per_channel(xp, mean, x.ndim)) * self._per_channel(xp, inv_std, x.ndim)
        weight, bias = self._affine_data()
        out = xhat if weight is None else xhat * self._per_channel(xp, weight, x.ndim)
        out = out if bias is None else out + self._per_channel(xp, bias, x.ndim)
        if self.track_running_stats:
            self.num_batches_tracked = self.num_batches_tracked + 1
            if count > 0:  # an empty batch leaves the statistics as they were, as PyTorch
                factor = self.momentum if self.momentum is not None else (
                    1.0 / xp.astype(self.num_batches_tracked, x.dtype))
                unbiased = var * (count / (count - 1))
                self.running_mean = factor * mean + (1.0 - factor) * self.running_mean
                self.running_var = factor * unbiased + (1.0 - factor) * self.running_var
        self._cache = "synchronised"
        self._sync_cache = (xhat, inv_std, count, axes)
        return out

    def backward(self, dout, *, input_grad=True):
        if getattr(self, "_sync_cache", None) is None:
            return super().backward(dout, input_grad=input_grad)
        self._take_cache()
        (xhat, inv_std, count, axes), self._sync_cache = self._sync_cache, None
        xp, _ = namespace_and_device(dout=dout)
        weight = None if self.weight is None else self.weight.data
        if weight is not None:
            self.weight.accumulate(xp.sum(dout * xhat, axis=axes))
        if self.bias is not None:
            self.bias.accumulate(xp.sum(dout, axis=axes))
        if not input_grad:
            return None
        dxhat = dout if weight is None else dout * self._per_channel(xp, weight, dout.ndim)
        sum_dxhat, sum_dxhat_xhat = self.context.conversation.exchange(
            "sum", (xp.sum(dxhat, axis=axes), xp.sum(dxhat * xhat, axis=axes)))
        n = max(count, 1)
        per_channel = lambda a: self._per_channel(xp, a, dout.ndim)  # noqa: E731
        return per_channel(inv_std) * (dxhat - per_channel(sum_dxhat / n) - xhat * per_channel(sum_dxhat_xhat / n))

    @staticmethod
    def _per_channel(xp, a, ndim: int):
        return xp.reshape(a, (1, a.shape[0]) + (1,) * (ndim - 2))


class SyncBatchNorm1d(_SyncBatchNorm, BatchNorm1d):
    """:class:`xpcnn.nn.BatchNorm1d` with statistics over the global batch of a data-parallel step."""


class SyncBatchNorm2d(_SyncBatchNorm, BatchNorm2d):
    """:class:`xpcnn.nn.BatchNorm2d` with statistics over the global batch of a data-parallel step."""


class GlobalDropout(Dropout):
    """:class:`xpcnn.nn.Dropout` drawing each shard's part of the global batch's mask."""

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
        if isinstance(module, _BatchNorm) and getattr(module, "data_format", "NCHW") != "NCHW":
            raise ValueError(
                f"model module {name!r} is a {type(module).__name__} with data_format="
                f"{module.data_format!r}: data-parallel training synchronises channels-first batch norm only; "
                "build it with data_format='NCHW'"
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

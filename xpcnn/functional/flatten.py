"""Flatten axes ``start_dim..end_dim`` into one, as ``torch.flatten``; the backward pass reshapes back."""

from __future__ import annotations

import math
from typing import NamedTuple

from .._validation import as_int, check_cache, check_floating, check_shape, namespace_and_device

__all__ = ["FlattenCache", "flatten_forward", "flatten_backward"]


class FlattenCache(NamedTuple):
    x_shape: tuple
    out_shape: tuple


def flatten_forward(x, start_dim=1, end_dim=-1):
    """x: (d0, ..., dk) -> (d0, ..., d_start * ... * d_end, ...). Returns ``(out, cache)``."""
    xp, _ = namespace_and_device(x=x)
    check_floating(xp, x, "x")
    start, end = (_axis(dim, name, x.ndim) for dim, name in ((start_dim, "start_dim"), (end_dim, "end_dim")))
    if start > end:
        raise ValueError(f"start_dim must not come after end_dim, got start_dim={start_dim}, end_dim={end_dim}")
    shape = tuple(x.shape)
    out_shape = (*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])
    return xp.reshape(x, out_shape), FlattenCache(shape, out_shape)


def flatten_backward(dout, cache: FlattenCache):
    """dx: dout reshaped back to x's shape."""
    check_cache(cache, FlattenCache, "flatten")
    xp, _ = namespace_and_device(dout=dout)
    check_floating(xp, dout, "dout")
    check_shape(dout, "dout", cache.out_shape, "the forward output's shape")
    return xp.reshape(dout, cache.x_shape)


def _axis(dim, name: str, ndim: int) -> int:
    dim = as_int(dim, name)
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise ValueError(f"{name} must be in [{-rank}, {rank - 1}] for a {ndim}-D x, got {dim}")
    return dim % rank

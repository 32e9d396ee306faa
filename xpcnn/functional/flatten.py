"""Flatten axes ``start_dim..end_dim`` into one, as ``torch.flatten``; the backward pass reshapes back.

The flattened order is x's own axis order: an NCHW batch flattens (C, H, W), an NHWC batch (H, W, C) (Keras's
order). ``data_format`` names the layout (checked, kept in the cache); it never transposes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .._validation import as_int, check_cache, check_floating, check_shape, namespace_and_device
from .._windows import Array, is_channels_last

__all__ = ["FlattenCache", "flatten_forward", "flatten_backward"]


class FlattenCache(NamedTuple):
    """x_shape, out_shape: the shapes before and after; data_format: the layout x was declared in."""

    x_shape: tuple
    out_shape: tuple
    data_format: str = "NCHW"


def flatten_forward(
    x: Array, start_dim: int = 1, end_dim: int = -1, *, data_format: str = "NCHW"
) -> tuple[Array, FlattenCache]:
    """x: (d0, ..., dk) -> (d0, ..., d_start * ... * d_end, ...). Returns ``(out, cache)``.

    The features keep x's own order: (C, H, W) for an NCHW batch, (H, W, C) for NHWC (``data_format``, checked
    to be ``"NCHW"`` or ``"NHWC"``; no transpose is made). Raises ValueError for axes out of range or
    ``start_dim`` after ``end_dim``, TypeError for a non-floating x.
    """
    xp, _ = namespace_and_device(x=x)
    check_floating(xp, x, "x")
    is_channels_last(data_format)
    start, end = (_axis(dim, name, x.ndim) for dim, name in ((start_dim, "start_dim"), (end_dim, "end_dim")))
    if start > end:
        raise ValueError(f"start_dim must not come after end_dim, got start_dim={start_dim}, end_dim={end_dim}")
    shape = tuple(x.shape)
    out_shape = (*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])
    return xp.reshape(x, out_shape), FlattenCache(shape, out_shape, data_format)


def flatten_backward(dout: Array, cache: FlattenCache) -> Array:
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

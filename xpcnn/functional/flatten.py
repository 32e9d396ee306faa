"""Flatten axes ``start_dim..end_dim`` into one, as ``torch.flatten``; the backward pass reshapes back.

The flattened order is x's own axis order: an NCHW batch flattens (C, H, W), an NHWC batch (H, W, C) (Keras's
order). ``data_format`` names the layout (checked, kept in the cache); it never transposes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .._validation import cache_repr
from .._validation import as_int, check_cache, check_floating, check_shape, namespace_and_device
from .._windows import Array, is_channels_last

__all__ = ["FlattenCache", "flatten_forward", "flatten_backward"]


class FlattenCache(NamedTuple):
    """x_shape, out_shape: the shapes before and after; data_format: the layout x was declared in."""

    __repr__ = cache_repr

    x_shape: tuple
    out_shape: tuple
    data_format: str = "NCHW"


def flatten_forward(
    x: Array, start_dim: int = 1, end_dim: int = -1, *, data_format: str = "NCHW"
) -> tuple[Array, FlattenCache]:
    """Flatten axes ``start_dim..end_dim`` of x into one, as ``torch.flatten``: (d0, ..., dk) ->
    (d0, ..., d_start * ... * d_end, ...).

    Parameters
    ----------
    x : array
        Any shape (NCHW (N, C, H, W) or NHWC (N, H, W, C) for images), real floating dtype.
    start_dim, end_dim : int
        The first and last axes flattened, negative from the end; default 1 and -1 (all but the batch axis).
    data_format : {"NCHW", "NHWC"}, keyword only
        x's layout, checked and kept in the cache. The features keep x's own order: (C, H, W) for NCHW, (H, W, C)
        for NHWC (no transpose is made).

    Returns
    -------
    out : array
        A reshape of x: x's dtype and device.
    cache : FlattenCache
        x's shape, out's shape and the layout, for :func:`flatten_backward`.

    Raises
    ------
    ValueError
        Axes out of range, ``start_dim`` after ``end_dim``, or an unknown ``data_format``.
    TypeError
        x not an array of a real floating dtype, or non-integer axes.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> out, cache = F.flatten_forward(np.ones((2, 3, 4, 5), dtype=np.float32))
    >>> out.shape
    (2, 60)
    >>> F.flatten_backward(np.ones_like(out), cache).shape
    (2, 3, 4, 5)
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
    """Gradient of :func:`flatten_forward`: dout reshaped back to x's shape.

    Parameters
    ----------
    dout : array
        Gradient with respect to the forward output: its shape, a real floating dtype.
    cache : FlattenCache
        What :func:`flatten_forward` returned.

    Returns
    -------
    dx : array
        x's shape, dout's dtype and device.

    Raises
    ------
    TypeError
        Another op's cache, or a non-floating dout.
    ValueError
        A dout of another shape than the forward output.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> out, cache = F.flatten_forward(np.ones((2, 4, 4, 3), dtype=np.float32), data_format="NHWC")
    >>> F.flatten_backward(np.ones_like(out), cache).shape
    (2, 4, 4, 3)
    """
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

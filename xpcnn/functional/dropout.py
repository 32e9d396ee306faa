"""Inverted dropout and its backward pass, as ``torch.nn.functional.dropout`` in training mode.

    keep = uniform(seed, stream) >= p          out = x * keep / (1 - p)          dx = dout * keep / (1 - p)

The mask comes from xpcnn's counter-based generator, made on x's device: the same ``(seed, stream)`` gives the
same mask on every backend. ``offset`` (in elements) draws the part of a larger array's mask that starts there:
the mask of rows ``[a, b)`` of a batch is ``offset = a * prod(x.shape[1:])`` (data-parallel training gives each
sample the mask it has in the whole batch, whichever replica holds it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._validation import cache_repr
from .._random import uniform
from .._precision import half_in_float32, half_in_float32_backward
from .._validation import as_float, check_cache, check_floating, check_upstream, namespace_and_device

__all__ = ["DropoutCache", "dropout_forward", "dropout_backward"]


class DropoutCache(NamedTuple):
    """What :func:`dropout_forward` keeps for :func:`dropout_backward`. Fields: ``scale``: ``keep / (1 - p)``
    in x's shape, dtype and device (0 where an element was dropped)."""

    __repr__ = cache_repr

    scale: Any  # keep / (1 - p), of x's shape


@half_in_float32
def dropout_forward(x, p=0.5, *, seed=0, stream=0, offset=0):
    """Zero each element with probability ``p`` and scale the rest by 1 / (1 - p) (inverted dropout, as
    ``torch.nn.functional.dropout`` in training mode).

    Parameters
    ----------
    x : array
        Any shape and layout (elementwise), real floating dtype.
    p : float
        Probability of zeroing an element, in [0, 1]; ``p=1`` zeroes everything.
    seed, stream : int, keyword only
        Select the mask in xpcnn's counter-based generator: the same ``(seed, stream)`` gives the same mask on every
        backend and device (:class:`xpcnn.nn.Dropout` passes its seed and its count of training passes).
    offset : int, keyword only
        The flat position (C order) of x's first element in the array whose mask is drawn (0: x itself).

    Returns
    -------
    out : array
        x's shape, dtype and device.
    cache : DropoutCache
        The scale ``keep / (1 - p)``, for :func:`dropout_backward`.

    Raises
    ------
    ValueError
        p outside [0, 1].
    TypeError
        A non-number p, or x not an array of a real floating dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> out, cache = F.dropout_forward(np.ones((2, 1000), dtype=np.float32), 0.25, seed=1)
    >>> sorted(set(out.ravel().tolist()))
    [0.0, 1.3333333730697632]
    >>> dx = F.dropout_backward(np.ones_like(out), cache)
    >>> bool((dx == out).all())   # the same mask and scale
    True
    """
    xp, device = namespace_and_device(x=x)
    check_floating(xp, x, "x")
    p = check_probability(p)
    if p == 1.0:
        scale = xp.zeros_like(x)
    else:
        keep = uniform(xp, x.shape, seed=seed, stream=stream, offset=offset, device=device) >= p
        scale = xp.astype(keep, x.dtype) * (1.0 / (1.0 - p))
    return x * scale, DropoutCache(scale)


@half_in_float32_backward
def dropout_backward(dout, cache: DropoutCache):
    """Gradient of :func:`dropout_forward`: ``dx = dout * keep / (1 - p)``, the forward pass's mask.

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: x's shape, dtype and device.
    cache : DropoutCache
        What :func:`dropout_forward` returned.

    Returns
    -------
    dx : array
        x's shape, dtype and device.

    Raises
    ------
    TypeError
        Another op's cache, or a dout of another dtype or library than the forward pass's.
    ValueError
        A dout of another shape (or on another device) than x.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> out, cache = F.dropout_forward(np.ones(6, dtype=np.float32), 0.5, seed=3)
    >>> bool((F.dropout_backward(np.ones_like(out), cache) == out).all())
    True
    """
    check_cache(cache, DropoutCache, "dropout")
    check_upstream(dout, cache.scale.shape, cache.scale, cache.scale.dtype)
    return dout * cache.scale


def check_probability(p) -> float:
    """``p`` as a float in [0, 1] (a TypeError for strings and other non-numbers, a ValueError outside)."""
    p = as_float(p, "p")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    return p

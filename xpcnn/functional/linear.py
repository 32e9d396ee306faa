"""Linear (fully connected) layer and its backward pass, as ``torch.nn.functional.linear``.

    out    = x @ weight^T + bias            x: (..., in), weight: (out, in), bias: (out,)
    dx     = dout @ weight                  (..., in)
    dweight = dout2^T @ x2                  (out, in)   (leading axes flattened: x2 (M, in), dout2 (M, out))
    dbias  = dout2 summed over M            (out,)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._validation import cache_repr
from .._precision import half_in_float32, half_in_float32_backward
from .._validation import (
    as_bool,
    check_cache,
    check_floating,
    check_ndim,
    check_same_dtype,
    check_shape,
    check_upstream,
    namespace_and_device,
)

__all__ = ["LinearCache", "linear_forward", "linear_backward"]


class LinearCache(NamedTuple):
    """What :func:`linear_forward` keeps for :func:`linear_backward`. Fields: ``x``: the input ``(...,
    in_features)``; ``weight``: ``(out_features, in_features)``; ``has_bias``: whether a bias was given (then
    the backward pass returns its gradient)."""

    __repr__ = cache_repr

    x: Any
    weight: Any
    has_bias: bool


@half_in_float32
def linear_forward(x, weight, bias=None):
    """``out = x @ weight.T + bias``, as ``torch.nn.functional.linear``.

    Parameters
    ----------
    x : array, shape (..., in_features)
        Any leading axes (the batch; no layout is assumed); real floating dtype.
    weight : array, shape (out_features, in_features)
        PyTorch's layout, x's dtype, library and device.
    bias : array, shape (out_features,), optional
        Added to every row; x's dtype.

    Returns
    -------
    out : array, shape (..., out_features)
        x's dtype and device.
    cache : LinearCache
        x, weight and whether there was a bias, for :func:`linear_backward`.

    Raises
    ------
    ValueError
        weight not 2-D, bias not (out_features,), or x's last axis not in_features.
    TypeError
        A non-array, a non-floating x, or arrays of different dtypes, libraries or devices.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.ones((4, 3), dtype=np.float32)
    >>> weight, bias = np.full((2, 3), 0.5, dtype=np.float32), np.array([1.0, -1.0], dtype=np.float32)
    >>> out, cache = F.linear_forward(x, weight, bias)
    >>> out
    array([[2.5, 0.5],
           [2.5, 0.5],
           [2.5, 0.5],
           [2.5, 0.5]], dtype=float32)
    >>> dx, dweight, dbias = F.linear_backward(np.ones_like(out), cache)
    >>> dx.shape, dweight.shape, dbias
    ((4, 3), (2, 3), array([4., 4.], dtype=float32))
    """
    xp, _ = namespace_and_device(x=x, weight=weight, bias=bias, optional=("bias",))
    check_floating(xp, x, "x")
    check_ndim(weight, "weight", 2, "(out_features, in_features)")
    check_same_dtype(weight, "weight", x, "x")
    out_features, in_features = weight.shape
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"x must have in_features = {in_features} on its last axis (weight shape {tuple(weight.shape)}), "
            f"got shape {tuple(x.shape)}"
        )
    out = xp.matmul(x, xp.matrix_transpose(weight))
    if bias is not None:
        check_ndim(bias, "bias", 1, "(out_features,)")
        check_shape(bias, "bias", (out_features,), "out_features of weight")
        check_same_dtype(bias, "bias", x, "x")
        out = out + bias
    return out, LinearCache(x, weight, bias is not None)


@half_in_float32_backward
def linear_backward(dout, cache: LinearCache, *, input_grad=True):
    """Gradients of :func:`linear_forward`: ``dx = dout @ weight``, ``dweight = dout^T @ x`` and ``dbias = sum(dout)``,
    the leading axes flattened.

    Parameters
    ----------
    dout : array, shape (..., out_features)
        Gradient of the loss with respect to the forward output: its shape, dtype and device.
    cache : LinearCache
        What :func:`linear_forward` returned.
    input_grad : bool, keyword only
        Compute dx (False: skip it and return None in its place).

    Returns
    -------
    dx : array, shape (..., in_features), or None
        None when not ``input_grad``.
    dweight : array, shape (out_features, in_features)
    dbias : array, shape (out_features,), or None
        None when the forward pass had no bias.

    Raises
    ------
    TypeError
        Another op's cache, or a dout of another dtype or library than the forward pass's.
    ValueError
        A dout of another shape (or on another device) than the forward output.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> out, cache = F.linear_forward(np.ones((4, 3), dtype=np.float32), np.ones((2, 3), dtype=np.float32))
    >>> dx, dweight, dbias = F.linear_backward(np.ones_like(out), cache)
    >>> dx.shape, dweight.shape, dbias
    ((4, 3), (2, 3), None)
    >>> F.linear_backward(np.ones_like(out), cache, input_grad=False)[0] is None
    True
    """
    check_cache(cache, LinearCache, "linear")
    input_grad = as_bool(input_grad, "input_grad")
    x, weight, has_bias = cache
    out_features, in_features = weight.shape
    xp, _ = check_upstream(dout, (*x.shape[:-1], out_features), x, x.dtype)
    rows = math.prod(x.shape[:-1])
    dout2 = xp.reshape(dout, (rows, out_features))
    dx = xp.matmul(dout, weight) if input_grad else None
    dweight = xp.matmul(xp.matrix_transpose(dout2), xp.reshape(x, (rows, in_features)))
    dbias = xp.sum(dout2, axis=0) if has_bias else None
    return dx, dweight, dbias

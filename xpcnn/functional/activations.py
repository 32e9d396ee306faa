"""Elementwise activations and their backward passes. Every function keeps x's shape, dtype and device.

Each ``NAME_forward(x, ...) -> (out, cache)`` keeps in a named cache (``ReluCache``, ``GeluCache``...) only what
``NAME_backward(dout, cache) -> dx`` needs: the output where the derivative is a function of it (ReLU, sigmoid,
tanh), the input otherwise. A backward pass handed another op's cache raises a TypeError.

Values and gradients are ``torch.nn.functional``'s, formula for formula (GELU, SiLU and ELU as PyTorch's CPU
kernels write them), so that their edges agree too:

- NaN passes through every forward pass. ReLU's gradient at exactly 0 is 0. At NaN, comparisons are false: the
  gradient is the upstream gradient for ReLU and ELU (whose negative branch is ``x <= 0``), ``negative_slope``
  times it for leaky ReLU (PyTorch's formulas; its vectorised CPU loop for ELU gives NaN instead, its scalar loop
  and CUDA kernel the upstream gradient), and NaN for the others.
- Where PyTorch's formula meets ``inf * 0`` (GELU and SiLU at ``-inf``; their gradients at ``+-inf``) the result is
  NaN, as there, reached without NumPy's invalid-value warning. GELU at ``+inf`` is ``+inf`` in every dtype (as
  PyTorch in float64 and on CUDA; its float32 CPU kernel, oneDNN's, gives NaN).
- Large ``|x|`` never overflows: exponentials and powers take ``x`` clamped where their value no longer changes.
  Where PyTorch's own ``x * x`` overflows (``|x| >= 2**(max_exp / 2)``: 1.8e19 in float32, 1.3e154 in float64),
  the values are PyTorch's all the same: arctan's gradient is 0 there, the tanh GELU's gradient NaN (``0 * inf``).

``where`` is a slow, branchy select on NumPy, so ReLU and leaky ReLU are written as maxima and products where that
gives the same values: always in the forward passes, and in ReLU's backward where the upstream gradient is known
to be finite (``0 * inf`` would be NaN; see :func:`xpcnn._dispatch.known_finite`). The guards that turn infinities
into NaN cost nothing for NumPy input known to be finite.

16-bit floating inputs are computed in float32 and rounded once (:mod:`xpcnn._precision`), as PyTorch does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .._validation import cache_repr
from .._dispatch import known_finite, multiply_by_mask
from .._precision import half_in_float32, half_in_float32_backward
from .._special import erf
from .._typing import Array
from .._validation import as_float, check_cache, check_floating, check_upstream, namespace_and_device

__all__ = [
    "ReluCache",
    "LeakyReluCache",
    "SigmoidCache",
    "TanhCache",
    "ArctanCache",
    "GeluCache",
    "SiluCache",
    "EluCache",
    "relu_forward",
    "relu_backward",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "arctan_forward",
    "arctan_backward",
    "gelu_forward",
    "gelu_backward",
    "silu_forward",
    "silu_backward",
    "elu_forward",
    "elu_backward",
]

GELU_APPROXIMATIONS = ("none", "tanh")
SQRT1_2 = math.sqrt(0.5)  # GELU's input scale: Phi(x) = (1 + erf(x / sqrt(2))) / 2
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # the normal density's factor
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # the tanh GELU: tanh(sqrt(2/pi) * (x + KAPPA * x**3))
KAPPA = 0.044715
TANH_GELU_SATURATION = 10.0  # beyond it, the tanh GELU's tanh is exactly +-1 (from |inner| > 43.6)
DENSITY_UNDERFLOW = 40.0  # beyond it, exp(-x**2 / 2) is 0 (from |x| > 38.6 in float64)


class ReluCache(NamedTuple):
    """What :func:`relu_forward` keeps for :func:`relu_backward`. Fields: ``out``: the forward output (the derivative is
    ``out > 0``).

    ``repr`` summarises it (class, shapes, dtypes).
    """

    __repr__ = cache_repr

    out: Array  # the forward output


class LeakyReluCache(NamedTuple):
    """What :func:`leaky_relu_forward` keeps for :func:`leaky_relu_backward`. Fields: ``x``: the forward input;
    ``negative_slope``: the slope used, a float.

    ``repr`` summarises it (class, shapes, dtypes).
    """

    __repr__ = cache_repr

    x: Array  # the forward input
    negative_slope: float


class SigmoidCache(NamedTuple):
    """What :func:`sigmoid_forward` keeps for :func:`sigmoid_backward`. Fields: ``out``: the forward output (the
    derivative is ``out * (1 - out)``).

    ``repr`` summarises it (class, shapes, dtypes).
    """

    __repr__ = cache_repr

    out: Array  # the forward output


class TanhCache(NamedTuple):
    """What :func:`tanh_forward` keeps for :func:`tanh_backward`. Fields: ``out``: the forward output (the derivative is
    ``1 - out**2``).

    ``repr`` summarises it (class, shapes, dtypes).
    """

    __repr__ = cache_repr

    out: Array  # the forward output


class ArctanCache(NamedTuple):
    """What :func:`arctan_forward` keeps for :func:`arctan_backward`. Fields: ``x``: the forward input.

    ``repr`` summarises it (class, shapes, dtypes).
    """

    __repr__ = cache_repr

    x: Array  # the forward input


class GeluCache(NamedTuple):
    """What :func:`gelu_forward` keeps for :func:`gelu_backward`. Fields: ``x``: the forward input (``-inf`` as NaN);
    ``approximate``: ``"none"`` or ``"tanh"``.

    ``repr`` summarises it (class, shapes, dtypes).
    """

    __repr__ = cache_repr

    x: Array  # the forward input
    approximate: str


class SiluCache(NamedTuple):
    """What :func:`silu_forward` keeps for :func:`silu_backward`. Fields: ``x``: the forward input (``-inf`` as NaN).

    ``repr`` summarises it (class, shapes, dtypes).
    """

    __repr__ = cache_repr

    x: Array  # the forward input


class EluCache(NamedTuple):
    """What :func:`elu_forward` keeps for :func:`elu_backward`. Fields: ``x``: the forward input; ``alpha``: the alpha
    used, a float.

    ``repr`` summarises it (class, shapes, dtypes).
    """

    __repr__ = cache_repr

    x: Array  # the forward input
    alpha: float


# -- ReLU and leaky ReLU --------------------------------------------------------------------------------------------

@half_in_float32
def relu_forward(x: Array) -> tuple[Array, ReluCache]:
    """``max(x, 0)``, as ``torch.relu``.

    Parameters
    ----------
    x : array, any shape, real floating dtype

    Returns
    -------
    out : array of x's shape, dtype and device; NaN stays NaN
    cache : ReluCache(out)

    Raises
    ------
    TypeError
        x is not an array or not of a real floating dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.relu_forward(x)
    >>> out.round(4)
    array([0. , 0.5, 2. ], dtype=float32)
    >>> F.relu_backward(np.ones_like(out), cache).round(4)
    array([0., 1., 1.], dtype=float32)
    """
    xp, device = _floating_input(x)
    out = xp.maximum(x, xp.zeros((), dtype=x.dtype, device=device))  # maximum propagates NaN
    return out, ReluCache(out)


@half_in_float32_backward
def relu_backward(dout: Array, cache: ReluCache) -> Array:
    """Gradient of :func:`relu_forward`: ``dx = dout`` where ``out > 0`` or out is NaN, else 0 (0 at exactly 0).

    Raises a ValueError/TypeError for a ``dout`` of another shape, dtype, library or device than the forward
    pass's, and a TypeError for another op's cache.

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: that output's shape, dtype and device.
    cache : ReluCache
        What :func:`relu_forward` returned with the output (the forward output).

    Returns
    -------
    dx : array
        Gradient with respect to x: x's shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.relu_forward(x)
    >>> F.relu_backward(np.ones_like(out), cache).round(4)
    array([0., 1., 1.], dtype=float32)
    """
    xp = _upstream(dout, cache, ReluCache, "relu")
    out = cache.out
    if known_finite(xp, dout):  # out is >= 0 or NaN, so out != 0 is the same test
        return multiply_by_mask(xp, dout, out != 0)
    return xp.where(out <= 0, 0.0, dout)


@half_in_float32
def leaky_relu_forward(x: Array, negative_slope: float = 0.01) -> tuple[Array, LeakyReluCache]:
    """``x`` where ``x > 0``, else ``negative_slope * x``, as ``torch.nn.functional.leaky_relu``.

    Parameters
    ----------
    x : array, any shape, real floating dtype
    negative_slope : real number (not NaN; +-inf allowed, as PyTorch), default 0.01

    Returns
    -------
    out : array of x's shape, dtype and device; NaN stays NaN
    cache : LeakyReluCache(x, negative_slope)

    Raises
    ------
    TypeError
        x is not a real floating array, or negative_slope is not a real number (a string, a bool...).
    ValueError
        negative_slope is NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.leaky_relu_forward(x, 0.1)
    >>> out.round(4)
    array([-0.1,  0.5,  2. ], dtype=float32)
    >>> F.leaky_relu_backward(np.ones_like(out), cache).round(4)
    array([0.1, 1. , 1. ], dtype=float32)
    """
    xp, _ = _floating_input(x)
    negative_slope = as_float(negative_slope, "negative_slope", finite=False)
    if 0.0 < negative_slope <= 1.0:  # the larger of x and slope * x is that value (maximum propagates NaN)
        out = xp.maximum(x, x * negative_slope)
    else:  # slope * x of x <= 0 only: no overflow in the unused branch (and -inf * 0 is NaN, as PyTorch's)
        negative = _infinities_to_nan(xp, x, negative_only=True) if negative_slope == 0 else x
        out = xp.where(x > 0, x, xp.clip(negative, max=0.0) * negative_slope)
    return out, LeakyReluCache(x, negative_slope)


@half_in_float32_backward
def leaky_relu_backward(dout: Array, cache: LeakyReluCache) -> Array:
    """Gradient of :func:`leaky_relu_forward`: ``dx = dout`` where ``x > 0``, else ``negative_slope * dout``.

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: that output's shape, dtype and device.
    cache : LeakyReluCache
        What :func:`leaky_relu_forward` returned with the output (x and negative_slope).

    Returns
    -------
    dx : array
        Gradient with respect to x: x's shape, dtype and device.

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
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.leaky_relu_forward(x, 0.1)
    >>> F.leaky_relu_backward(np.ones_like(out), cache).round(4)
    array([0.1, 1. , 1. ], dtype=float32)
    """
    xp = _upstream(dout, cache, LeakyReluCache, "leaky_relu")
    x, negative_slope = cache
    if not math.isfinite(negative_slope):
        return xp.where(x > 0, dout, dout * negative_slope)
    positive = xp.astype(x > 0, dout.dtype)
    # The factor is exactly 1 or exactly the slope (1 + 0 * slope, 0 + 1 * slope): dout * factor is the select.
    return dout * (positive + (1.0 - positive) * negative_slope)


# -- sigmoid, tanh, arctan ------------------------------------------------------------------------------------------

@half_in_float32
def sigmoid_forward(x: Array) -> tuple[Array, SigmoidCache]:
    """``1 / (1 + exp(-x))`` without overflow for large ``|x|``, as ``torch.sigmoid``.

    Parameters
    ----------
    x : array
        Any shape and layout (elementwise), real floating dtype.

    Returns
    -------
    out : array
        Values in [0, 1] with x's shape, dtype and device.
    cache : SigmoidCache
        SigmoidCache(out), for :func:`sigmoid_backward`.

    Raises
    ------
    TypeError
        x is not an array of a real floating dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.sigmoid_forward(x)
    >>> out.round(4)
    array([0.2689, 0.6225, 0.8808], dtype=float32)
    >>> F.sigmoid_backward(np.ones_like(out), cache).round(4)
    array([0.1966, 0.235 , 0.105 ], dtype=float32)
    """
    xp, _ = _floating_input(x)
    out = _sigmoid(xp, x)
    return out, SigmoidCache(out)


@half_in_float32_backward
def sigmoid_backward(dout: Array, cache: SigmoidCache) -> Array:
    """Gradient of :func:`sigmoid_forward`: ``dx = dout * out * (1 - out)``.

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: that output's shape, dtype and device.
    cache : SigmoidCache
        What :func:`sigmoid_forward` returned with the output (the forward output).

    Returns
    -------
    dx : array
        Gradient with respect to x: x's shape, dtype and device.

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
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.sigmoid_forward(x)
    >>> F.sigmoid_backward(np.ones_like(out), cache).round(4)
    array([0.1966, 0.235 , 0.105 ], dtype=float32)
    """
    _upstream(dout, cache, SigmoidCache, "sigmoid")
    out = cache.out
    return dout * out * (1.0 - out)


@half_in_float32
def tanh_forward(x: Array) -> tuple[Array, TanhCache]:
    """``tanh(x)``, as ``torch.tanh``.

    Parameters
    ----------
    x : array
        Any shape and layout (elementwise), real floating dtype.

    Returns
    -------
    out : array
        Values in [-1, 1] with x's shape, dtype and device.
    cache : TanhCache
        TanhCache(out), for :func:`tanh_backward`.

    Raises
    ------
    TypeError
        x is not an array of a real floating dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.tanh_forward(x)
    >>> out.round(4)
    array([-0.7616,  0.4621,  0.964 ], dtype=float32)
    >>> F.tanh_backward(np.ones_like(out), cache).round(4)
    array([0.42  , 0.7864, 0.0707], dtype=float32)
    """
    xp, _ = _floating_input(x)
    out = xp.tanh(x)
    return out, TanhCache(out)


@half_in_float32_backward
def tanh_backward(dout: Array, cache: TanhCache) -> Array:
    """Gradient of :func:`tanh_forward`: ``dx = dout * (1 - out**2)``.

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: that output's shape, dtype and device.
    cache : TanhCache
        What :func:`tanh_forward` returned with the output (the forward output).

    Returns
    -------
    dx : array
        Gradient with respect to x: x's shape, dtype and device.

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
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.tanh_forward(x)
    >>> F.tanh_backward(np.ones_like(out), cache).round(4)
    array([0.42  , 0.7864, 0.0707], dtype=float32)
    """
    _upstream(dout, cache, TanhCache, "tanh")
    out = cache.out
    return dout * (1.0 - out * out)


@half_in_float32
def arctan_forward(x: Array) -> tuple[Array, ArctanCache]:
    """``arctan(x)``, as ``torch.atan``.

    Parameters
    ----------
    x : array
        Any shape and layout (elementwise), real floating dtype.

    Returns
    -------
    out : array
        Values in [-pi/2, pi/2] with x's shape, dtype and device.
    cache : ArctanCache
        ArctanCache(x), for :func:`arctan_backward`.

    Raises
    ------
    TypeError
        x is not an array of a real floating dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.arctan_forward(x)
    >>> out.round(4)
    array([-0.7854,  0.4636,  1.1071], dtype=float32)
    >>> F.arctan_backward(np.ones_like(out), cache).round(4)
    array([0.5, 0.8, 0.2], dtype=float32)
    """
    xp, _ = _floating_input(x)
    return xp.atan(x), ArctanCache(x)


@half_in_float32_backward
def arctan_backward(dout: Array, cache: ArctanCache) -> Array:
    """Gradient of :func:`arctan_forward`: ``dx = dout / (1 + x**2)`` (0 where ``x**2`` overflows, as PyTorch).

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: that output's shape, dtype and device.
    cache : ArctanCache
        What :func:`arctan_forward` returned with the output (x).

    Returns
    -------
    dx : array
        Gradient with respect to x: x's shape, dtype and device.

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
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.arctan_forward(x)
    >>> F.arctan_backward(np.ones_like(out), cache).round(4)
    array([0.5, 0.8, 0.2], dtype=float32)
    """
    xp = _upstream(dout, cache, ArctanCache, "arctan")
    x = cache.x
    return dout / (1.0 + _square(xp, x))


# -- GELU, SiLU, ELU ------------------------------------------------------------------------------------------------

@half_in_float32
def gelu_forward(x: Array, approximate: str = "none") -> tuple[Array, GeluCache]:
    """The Gaussian error linear unit ``x * Phi(x)``, as ``torch.nn.functional.gelu``.

    Parameters
    ----------
    x : array, any shape, real floating dtype
    approximate : ``"none"`` (default) or ``"tanh"``
        ``"none"``: ``Phi(x) = (1 + erf(x / sqrt(2))) / 2``, the normal distribution function (erf from
        :mod:`xpcnn._special`, accurate to 1 ulp in float64); ``"tanh"``:
        ``Phi(x) ~ (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))) / 2``.

    Returns
    -------
    out : array of x's shape, dtype and device (NaN at NaN and at ``-inf``, ``+inf`` at ``+inf``, as PyTorch)
    cache : GeluCache(x, approximate)

    Raises
    ------
    TypeError
        x is not a real floating array, or approximate is not a string.
    ValueError
        approximate is another string.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.gelu_forward(x, "tanh")
    >>> out.round(4)
    array([-0.1588,  0.3457,  1.9546], dtype=float32)
    >>> F.gelu_backward(np.ones_like(out), cache).round(4)
    array([-0.083 ,  0.8674,  1.0861], dtype=float32)
    """
    xp, _ = _floating_input(x)
    approximate = check_approximate(approximate)
    x = _infinities_to_nan(xp, x, negative_only=True)  # -inf * Phi(-inf) = -inf * 0
    if approximate == "none":
        return x * 0.5 * (1.0 + erf(xp, x * SQRT1_2)), GeluCache(x, approximate)
    t = xp.tanh(_tanh_gelu_inner(_tanh_gelu_clamp(xp, x)))
    return 0.5 * x * (1.0 + t), GeluCache(x, approximate)


@half_in_float32_backward
def gelu_backward(dout: Array, cache: GeluCache) -> Array:
    """Gradient of :func:`gelu_forward`.

    ``"none"``:  ``dx = dout * (Phi(x) + x * phi(x))``, ``phi(x) = exp(-x**2 / 2) / sqrt(2 pi)``.
    ``"tanh"``:  with ``t = tanh(inner)``, ``inner = sqrt(2/pi) * (x + 0.044715 x**3)``,
    ``dx = dout * ((1 + t) / 2 + x / 2 * (1 - t**2) * sqrt(2/pi) * (1 + 3 * 0.044715 x**2))``.

    NaN at NaN and at ``+-inf`` (``inf * 0``), as PyTorch.

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: that output's shape, dtype and device.
    cache : GeluCache
        What :func:`gelu_forward` returned with the output (x and approximate).

    Returns
    -------
    dx : array
        Gradient with respect to x: x's shape, dtype and device.

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
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.gelu_forward(x)
    >>> F.gelu_backward(np.ones_like(out), cache).round(4)
    array([-0.0833,  0.8675,  1.0852], dtype=float32)
    """
    xp = _upstream(dout, cache, GeluCache, "gelu")
    x, approximate = cache
    if approximate == "none":
        x = _infinities_to_nan(xp, x)  # inf * phi(inf) = inf * 0
        cdf = 0.5 * (1.0 + erf(xp, x * SQRT1_2))
        size = xp.clip(xp.abs(x), max=DENSITY_UNDERFLOW)
        pdf = INV_SQRT_2PI * xp.exp(size * size * -0.5)
        return dout * (cdf + x * pdf)
    # Every term is computed from x clamped where tanh(inner) is +-1 and the second term is 0; PyTorch's
    # x * x overflows from 2**(max_exp / 2) on (the infinities included), and 0 * inf is NaN there.
    clamped = _tanh_gelu_clamp(xp, x)
    t = xp.tanh(_tanh_gelu_inner(clamped))
    left_derivative = 0.5 * (1.0 + t)
    inner_derivative = SQRT_2_OVER_PI * (1.0 + 3.0 * KAPPA * (clamped * clamped))
    right_derivative = 0.5 * clamped * (1.0 - t * t) * inner_derivative
    dx = dout * (left_derivative + right_derivative)
    return xp.where(xp.abs(x) >= _square_overflow(xp, x.dtype), math.nan, dx)


@half_in_float32
def silu_forward(x: Array) -> tuple[Array, SiluCache]:
    """The sigmoid linear unit (swish) ``x * sigmoid(x)``, as ``torch.nn.functional.silu``.

    Parameters
    ----------
    x : array
        Any shape and layout (elementwise), real floating dtype.

    Returns
    -------
    out : array
        NaN at NaN and at ``-inf``, as PyTorch; no overflow for large ``|x|``; with x's shape, dtype and device.
    cache : SiluCache
        SiluCache(x), for :func:`silu_backward`.

    Raises
    ------
    TypeError
        x is not an array of a real floating dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.silu_forward(x)
    >>> out.round(4)
    array([-0.2689,  0.3112,  1.7616], dtype=float32)
    >>> F.silu_backward(np.ones_like(out), cache).round(4)
    array([0.0723, 0.74  , 1.0908], dtype=float32)
    """
    xp, _ = _floating_input(x)
    x = _infinities_to_nan(xp, x, negative_only=True)  # -inf * sigmoid(-inf) = -inf * 0
    return x * _sigmoid(xp, x), SiluCache(x)


@half_in_float32_backward
def silu_backward(dout: Array, cache: SiluCache) -> Array:
    """Gradient of :func:`silu_forward`: ``s = sigmoid(x)``, ``dx = dout * s * (1 + x * (1 - s))``.

    NaN at NaN and at ``+-inf`` (``inf * 0``), as PyTorch.

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: that output's shape, dtype and device.
    cache : SiluCache
        What :func:`silu_forward` returned with the output (x).

    Returns
    -------
    dx : array
        Gradient with respect to x: x's shape, dtype and device.

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
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.silu_forward(x)
    >>> F.silu_backward(np.ones_like(out), cache).round(4)
    array([0.0723, 0.74  , 1.0908], dtype=float32)
    """
    xp = _upstream(dout, cache, SiluCache, "silu")
    x = cache.x
    x = _infinities_to_nan(xp, x)  # inf * (1 - sigmoid(inf)) = inf * 0, and -inf * 0 likewise
    s = _sigmoid(xp, x)
    return dout * s * (1.0 + x * (1.0 - s))


@half_in_float32
def elu_forward(x: Array, alpha: float = 1.0) -> tuple[Array, EluCache]:
    """The exponential linear unit: ``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``, as
    ``torch.nn.functional.elu``.

    Parameters
    ----------
    x : array, any shape, real floating dtype
    alpha : real number (not NaN; +-inf allowed, as PyTorch), default 1.0

    Returns
    -------
    out : array of x's shape, dtype and device (NaN at NaN; ``-alpha`` at ``-inf``)
    cache : EluCache(x, alpha)

    Raises
    ------
    TypeError
        x is not a real floating array, or alpha is not a real number (a string, a bool...).
    ValueError
        alpha is NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.elu_forward(x, 1.0)
    >>> out.round(4)
    array([-0.6321,  0.5   ,  2.    ], dtype=float32)
    >>> F.elu_backward(np.ones_like(out), cache).round(4)
    array([0.3679, 1.    , 1.    ], dtype=float32)
    """
    xp, _ = _floating_input(x)
    alpha = as_float(alpha, "alpha", finite=False)
    negative = xp.expm1(xp.clip(x, max=0.0)) * alpha  # exp of x <= 0 only: no overflow in the unused branch
    return xp.where(x <= 0, negative, x), EluCache(x, alpha)


@half_in_float32_backward
def elu_backward(dout: Array, cache: EluCache) -> Array:
    """Gradient of :func:`elu_forward`: ``dx = dout * alpha * exp(x)`` where ``x <= 0``, else ``dout`` (NaN
    included: the comparison is false).

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: that output's shape, dtype and device.
    cache : EluCache
        What :func:`elu_forward` returned with the output (x and alpha).

    Returns
    -------
    dx : array
        Gradient with respect to x: x's shape, dtype and device.

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
    >>> x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    >>> out, cache = F.elu_forward(x)
    >>> F.elu_backward(np.ones_like(out), cache).round(4)
    array([0.3679, 1.    , 1.    ], dtype=float32)
    """
    xp = _upstream(dout, cache, EluCache, "elu")
    x, alpha = cache
    return xp.where(x <= 0, dout * alpha * xp.exp(xp.clip(x, max=0.0)), dout)


# -- shared pieces --------------------------------------------------------------------------------------------------

def _floating_input(x) -> tuple:
    """``(xp, device)`` of x, a real floating array (a TypeError naming x otherwise)."""
    xp, device = namespace_and_device(x=x)
    check_floating(xp, x, "x")
    return xp, device


def _upstream(dout, cache, cache_type: type, op: str):
    """The namespace of ``dout`` once it is checked against the forward pass that made ``cache`` (of
    ``cache_type``, else a TypeError): the cached array's library, device, shape and dtype."""
    check_cache(cache, cache_type, op)
    kept = cache[0]  # every activation cache starts with the forward input or output (x's shape and dtype)
    xp, _ = check_upstream(dout, kept.shape, kept, kept.dtype)
    return xp

def check_approximate(approximate) -> str:
    """``approximate`` if it names a GELU approximation (``"none"``, ``"tanh"``); else a TypeError/ValueError."""
    if not isinstance(approximate, str):
        raise TypeError(f"approximate must be 'none' or 'tanh', got {type(approximate).__name__} {approximate!r}")
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate


def _sigmoid(xp, x):
    """``1 / (1 + exp(-x))`` through ``exp(-|x|)``, which never overflows."""
    e = xp.exp(-xp.abs(x))
    positive = 1.0 / (1.0 + e)
    return xp.where(x >= 0, positive, e * positive)


def _tanh_gelu_clamp(xp, x):
    """x clamped to where the tanh GELU's tanh is not yet +-1: its cube cannot overflow (NaN stays NaN)."""
    return xp.clip(x, -TANH_GELU_SATURATION, TANH_GELU_SATURATION)


def _tanh_gelu_inner(x):
    """``sqrt(2/pi) * (x + KAPPA * x**3)``, the tanh GELU's argument of tanh."""
    return SQRT_2_OVER_PI * (x + KAPPA * (x * x * x))


def _square_overflow(xp, dtype) -> float:
    """The smallest magnitude whose square overflows in ``dtype``: ``2**(max_exp / 2)``."""
    return 2.0 ** (math.frexp(float(xp.finfo(dtype).max))[1] // 2)


def _square(xp, x):
    """``x * x``, inf where it overflows (as PyTorch's), without NumPy's overflow warning; NaN stays NaN."""
    limit = _square_overflow(xp, x.dtype)
    size = xp.abs(x)
    bounded = xp.clip(size, max=limit * (1.0 - xp.finfo(x.dtype).eps / 2))  # the largest float below the limit
    return xp.where(size >= limit, math.inf, bounded * bounded)


def _infinities_to_nan(xp, x, *, negative_only=False):
    """x with NaN for its infinities (for ``-inf`` only if ``negative_only``): PyTorch's formula turns them into NaN
    through ``inf * 0``, which NumPy warns about; a NaN input propagates quietly. Free for input known finite."""
    if known_finite(xp, x):
        return x
    return xp.where(x == -math.inf if negative_only else xp.isinf(x), math.nan, x)

"""Resizing 2-D images, as ``torch.nn.functional.interpolate``: modes ``nearest``, ``nearest-exact`` and ``bilinear``
(``align_corners`` False or True), to a ``size`` or by a ``scale_factor``, and the backward pass.

Layouts: ``data_format="NCHW"`` (the default) or ``"NHWC"`` (channels last, never guessed): the axes resized are
2 and 3, or 1 and 2. A 3-D x is, as in PyTorch, a batch of 1-D signals ``(N, C, L)`` (``(N, L, C)`` channels last)
resized along L by the nearest modes (``size`` and ``scale_factor`` then have one value), NOT an unbatched image:
PyTorch reads it so, and xpcnn gives the same result for the same call.

Each axis is resized on its own (:mod:`xpcnn._axis_maps`): output ``i`` along an axis reads the input positions of its
*taps*, one for the nearest modes, two with weights ``(1 - t, t)`` for ``bilinear``. The forward pass resizes the
width, then the height (PyTorch's order of operations: each row is interpolated, then the rows); the backward pass
gathers through the transposed taps, which adds every gradient back to the positions its output read.

The source positions follow PyTorch's CPU kernels exactly, rounding included. With ``scale_factor`` (and PyTorch's
default ``recompute_scale_factor=None``) the output size is ``floor(n * scale_factor)`` and the *scale* that maps
output to input coordinates is ``1 / scale_factor``, not ``n / out``; with ``size`` it is ``n / out``.

* ``nearest`` (OpenCV's rule): ``src = min(floor(i * scale), n - 1)``, computed in float32 whatever the dtype, except
  that an unchanged size copies and a doubled size takes ``i // 2``.
* ``nearest-exact`` (Pillow's and scikit-image's): ``src = min(floor((i + 0.5) * scale), n - 1)``, in float32.
* ``bilinear``: ``src = scale * (i + 0.5) - 0.5`` (one fused multiply-add, clamped at 0), or ``i * (n - 1) / (out - 1)``
  with ``align_corners=True`` (``scale_factor`` is then ignored); ``i0 = min(floor(src), n - 1)``,
  ``i1 = min(i0 + 1, n - 1)``, ``t = clamp(src - i0, 0, 1)``. Computed in the input's precision (float32 for 16-bit
  floats). An unchanged size is the identity map (``i0 = i1 = i``, ``t = 0``).

Float64 and ``nearest``: PyTorch's own float64 kernels do not always follow the float32 rule above: where
``i * scale`` is an exact integer that float32 rounding puts just below (``scale_factor=3.7``, ``i=111``) they
sometimes take the integer, depending on the tensor's size. xpcnn always follows the rule.

Values at the edges are PyTorch's too: both neighbours of a bilinear output are read even where a weight is 0, so an
``inf`` input turns such outputs into NaN (``0 * inf``), and an ``inf`` upstream gradient likewise puts NaN on the
neighbour with weight 0 (both as PyTorch, including at an unchanged size).
"""

from __future__ import annotations

import functools
import math
import struct
from fractions import Fraction
from typing import Any, NamedTuple

from .._validation import cache_repr
from .._axis_maps import AxisMap, combined
from .._windows import Array, is_channels_last
from .._precision import half_in_float32, half_in_float32_backward
from .._validation import (
    as_bool,
    as_float,
    as_int,
    check_cache,
    check_floating,
    check_upstream,
    namespace_and_device,
)

__all__ = ["InterpolateCache", "interpolate_forward", "interpolate_backward"]

MODES = ("nearest", "nearest-exact", "bilinear")
NEAREST_MODES = ("nearest", "nearest-exact")
FLOAT32_BITS, FLOAT64_BITS = 24, 53  # significand bits of the precision the source positions are computed in


class InterpolateCache(NamedTuple):
    """rows, cols: the taps along the height and the width (rows: the identity for a 3-D x); x_shape: x's shape
    (3-D for 1-D signals); dtype: x's dtype; anchor: an empty array on x's device (checks dout's library and device);
    channels_last: whether x was NHWC (NLC)."""

    __repr__ = cache_repr

    rows: AxisMap
    cols: AxisMap
    x_shape: tuple
    dtype: Any
    anchor: Any
    channels_last: bool = False

    @property
    def out_shape(self) -> tuple:
        """The forward output's shape."""
        n, out = self.x_shape[0], (self.rows.out_size, self.cols.out_size)[2 - _spatial_dims(self.x_shape) :]
        channels = self.x_shape[-1] if self.channels_last else self.x_shape[1]
        return (n, *out, channels) if self.channels_last else (n, channels, *out)


def _spatial_dims(shape) -> int:
    return len(shape) - 2


@half_in_float32
def interpolate_forward(
    x: Array,
    *,
    size: int | tuple[int, ...] | None = None,
    scale_factor: float | tuple[float, ...] | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    data_format: str = "NCHW",
) -> tuple[Array, InterpolateCache]:
    """Resize x as ``torch.nn.functional.interpolate(x, size, scale_factor, mode, align_corners)``.

    Parameters
    ----------
    x : array, real floating
        (N, C, H, W) for ``data_format="NCHW"``, (N, H, W, C) for ``"NHWC"``; or 3-D, a batch of 1-D signals as in
        PyTorch: (N, C, L) or (N, L, C), nearest modes only. C and the resized axes must be at least 1 (N may be 0).
    size : int or tuple of ints, optional
        The output's (height, width) (one value per resized axis, or an int for all). Exactly one of ``size`` and
        ``scale_factor`` is given.
    scale_factor : float or tuple of floats, optional
        Output size ``floor(H * scale_factor)``; the scale of the source positions is ``1 / scale_factor``.
    mode : {"nearest", "nearest-exact", "bilinear"}
    align_corners : bool, optional
        Bilinear only (None means False): map the corner pixels' centres onto each other.
    data_format : {"NCHW", "NHWC"}
        x's layout (channels first or last); out and the gradient have the same.

    Returns
    -------
    out : array, x's layout with the resized axes, x's dtype and device
    cache : InterpolateCache

    Raises
    ------
    ValueError
        Both or neither of ``size`` and ``scale_factor``; a tuple whose length is not the number of resized axes; an
        output size below 1; a ``scale_factor`` that is not positive and finite; an unknown ``mode``;
        ``align_corners`` with a nearest mode; ``bilinear`` on a 3-D x; x not 3-D or 4-D, or with an empty channel
        or resized axis; a bad ``data_format``.
    TypeError
        x not a floating array; ``size`` not made of ints, ``scale_factor`` not made of numbers (bools and strings
        are refused); ``align_corners`` not a bool.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.array([[[[1.0, 2.0]]]], dtype=np.float32)
    >>> out, cache = F.interpolate_forward(x, scale_factor=2)
    >>> out
    array([[[[1., 1., 2., 2.],
             [1., 1., 2., 2.]]]], dtype=float32)
    >>> F.interpolate_backward(np.ones_like(out), cache)
    array([[[[4., 4.]]]], dtype=float32)
    >>> F.interpolate_forward(np.ones((1, 4, 4, 3), dtype=np.float32), size=(8, 6), mode="bilinear",
    ...                       data_format="NHWC")[0].shape
    (1, 8, 6, 3)
    """
    sizes, scales, mode, align_corners = interpolate_options(size, scale_factor, mode, align_corners)
    xp, device = namespace_and_device(x=x)
    check_floating(xp, x, "x")
    last = is_channels_last(data_format)
    if x.ndim not in (3, 4):
        layout = "(N, H, W, C)" if last else "(N, C, H, W)"
        raise ValueError(
            f"x must be 4-D {layout} (or 3-D, a batch of 1-D signals) with data_format={data_format!r}, "
            f"got shape {tuple(x.shape)}"
        )
    if min(x.shape[1:]) < 1:
        raise ValueError(
            f"x must have non-empty channel, height and width axes (N may be 0), got shape {tuple(x.shape)}"
        )
    dims = _spatial_dims(x.shape)
    if dims == 1 and mode == "bilinear":
        raise ValueError(
            f"mode 'bilinear' needs a 4-D x (N, C, H, W); a 3-D x {tuple(x.shape)} is a batch of 1-D signals, "
            "which only the nearest modes resize (as PyTorch)"
        )
    in_size = tuple(x.shape[1 : 1 + dims]) if last else tuple(x.shape[2:])
    sizes, scales = (None if v is None else _per_axis(v, dims, name, in_size) for v, name in
                     ((sizes, "size"), (scales, "scale_factor")))
    out_size = _output_size(in_size, sizes, scales)
    scales = scales or (None,) * dims
    bits = FLOAT64_BITS if xp.finfo(x.dtype).bits == 64 else FLOAT32_BITS
    # PyTorch's 1-D nearest kernel has no shortcuts for an unchanged or doubled size (its 2-D kernel has).
    maps = [axis_taps(mode, n, out, scale, align_corners, bits, shortcuts=dims == 2)
            for n, out, scale in zip(in_size, out_size, scales)]
    rows, cols = maps if dims == 2 else (axis_taps(mode, 1, 1, None, align_corners, bits), maps[0])
    height_axis, width_axis = (-3, -2) if last else (-2, -1)
    out = combined(xp, x, cols, width_axis)  # each row, then the rows
    if dims == 2:
        out = combined(xp, out, rows, height_axis)
    if rows.identity and cols.identity:
        out = xp.asarray(out, copy=True)  # an unchanged size: never hand back x itself
    anchor = xp.empty((0,), dtype=x.dtype, device=device)
    return out, InterpolateCache(rows, cols, tuple(x.shape), x.dtype, anchor, last)


@half_in_float32_backward
def interpolate_backward(dout: Array, cache: InterpolateCache) -> Array:
    """Gradient of :func:`interpolate_forward`: ``dx = rows^T @ dout @ cols``, each output's gradient added back to
    the positions it read with its weights (through the transposed taps: no scatter).

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: its shape (NCHW or NHWC, as x), dtype, library
        and device.
    cache : InterpolateCache
        What :func:`interpolate_forward` returned.

    Returns
    -------
    dx : array
        Gradient with respect to x: x's shape and layout (NCHW or NHWC; 3-D for unbatched x), dtype and device.

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
    >>> out, cache = F.interpolate_forward(np.ones((1, 1, 2, 2), dtype=np.float32), size=4, mode="bilinear")
    >>> F.interpolate_backward(np.ones_like(out), cache)[0, 0]
    array([[4., 4.],
           [4., 4.]], dtype=float32)
    """
    check_cache(cache, InterpolateCache, "interpolate")
    rows, cols, x_shape, dtype, anchor, last = cache
    xp, _ = check_upstream(dout, cache.out_shape, anchor, dtype)
    height_axis, width_axis = (-3, -2) if last else (-2, -1)
    dx = dout if _spatial_dims(x_shape) == 1 else combined(xp, dout, rows.transposed, height_axis)
    dx = combined(xp, dx, cols.transposed, width_axis)
    if rows.identity and cols.identity:
        dx = xp.asarray(dx, copy=True)
    return dx


def interpolate_options(size, scale_factor, mode, align_corners):
    """Check the options that do not depend on x (also for :class:`xpcnn.nn.Upsample`'s constructor). Returns
    ``(sizes, scale_factors, mode, align_corners)``: ``size`` as an int >= 1 or a tuple of one or two of them, or
    None; ``scale_factor`` as a positive finite float or a tuple of one or two, or None (the number of values is
    checked against x's resized axes when x arrives); ``align_corners`` False for ``bilinear`` when None."""
    if size is not None and scale_factor is not None:
        raise ValueError("only one of size or scale_factor should be defined")
    if size is None and scale_factor is None:
        raise ValueError("either size or scale_factor should be defined")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if mode in NEAREST_MODES:
        if align_corners is not None:
            raise ValueError(
                f"align_corners option can only be set with the interpolating modes (bilinear), got mode={mode!r} "
                f"with align_corners={align_corners!r}"
            )
    else:
        align_corners = False if align_corners is None else as_bool(align_corners, "align_corners")
    sizes = scales = None
    if size is not None:
        sizes = _checked(size, "size", "an int", lambda v: as_int(v, "size"))
        if min(_values(sizes)) < 1:
            raise ValueError(f"size must be >= 1 on every axis, got {size!r}")
    else:
        scales = _checked(scale_factor, "scale_factor", "a number", lambda v: as_float(v, "scale_factor"))
        if min(_values(scales)) <= 0:
            raise ValueError(f"scale_factor must be > 0, got {scale_factor!r}")
    return sizes, scales, mode, align_corners


def _checked(value, name: str, kind: str, convert):
    """A scalar converted, or a tuple of one or two converted values."""
    if isinstance(value, (tuple, list)):
        if len(value) not in (1, 2):
            raise ValueError(
                f"{name} must be {kind} or a tuple of them, one per resized axis (two for an (N, C, H, W) x, "
                f"one for an (N, C, L) x), got {value!r}"
            )
        return tuple(convert(v) for v in value)
    return convert(value)


def _values(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _per_axis(value, dims: int, name: str, in_size) -> tuple:
    """A checked ``size`` or ``scale_factor`` as one value per resized axis (a scalar serves every axis)."""
    if not isinstance(value, tuple):
        return (value,) * dims
    if len(value) != dims:
        raise ValueError(
            f"{name} must have one value per resized axis of x: {dims} for spatial size {tuple(in_size)}, got "
            f"{value!r}"
        )
    return value


def _output_size(in_size, sizes, scales) -> tuple[int, ...]:
    """The output size along each resized axis: ``sizes``, or ``floor(n * scale_factor)`` (at least 1)."""
    if sizes is not None:
        return sizes
    out = tuple(math.floor(n * s) for n, s in zip(in_size, scales))
    if min(out) < 1:
        raise ValueError(
            f"output size must be >= 1 on every axis, got {out} = floor({tuple(in_size)} * scale_factor {scales})"
        )
    return out


@functools.lru_cache(maxsize=256)
def axis_taps(
    mode: str, n: int, out: int, scale_factor: float | None, align_corners: bool | None, bits: int,
    *, shortcuts: bool = True
) -> AxisMap:
    """The taps of ``out`` outputs along an axis of ``n`` inputs (built in Python, as PyTorch's CPU kernels compute
    them, in a precision of ``bits`` significand bits). ``shortcuts``: ``nearest`` copies an unchanged size and
    takes ``i // 2`` for a doubled one whatever ``scale_factor`` (PyTorch's 2-D kernel; its 1-D kernel always
    applies the rule: ``scale_factor=2.2`` on 3 values reads ``[0, 0, 0, 1, 1, 2]`` there)."""
    if mode == "bilinear":
        return _bilinear_taps(n, out, scale_factor, align_corners, bits)
    if mode == "nearest" and shortcuts and out == n:
        sources = list(range(out))
    elif mode == "nearest" and shortcuts and out == 2 * n:
        sources = [i // 2 for i in range(out)]
    else:
        scale = _float32(1.0 / scale_factor) if scale_factor is not None else _float32(n / out)
        offset = 0.5 if mode == "nearest-exact" else 0.0
        sources = [min(math.floor(_float32((i + offset) * scale)), n - 1) for i in range(out)]
    return AxisMap(n, tuple((s,) for s in sources))


def _bilinear_taps(n: int, out: int, scale_factor, align_corners: bool, bits: int) -> AxisMap:
    if out == n:
        return AxisMap(n, tuple((i, i) for i in range(n)), tuple((1.0, 0.0) for _ in range(n)))
    rounded = _float32 if bits == FLOAT32_BITS else float
    if align_corners:
        scale = rounded((n - 1) / (out - 1)) if out > 1 else 0.0
    else:
        scale = rounded(1.0 / scale_factor) if scale_factor is not None else rounded(n / out)
    taps, weights = [], []
    for i in range(out):
        if align_corners:
            src = rounded(scale * i)
        else:
            src = max(_fused_multiply_add(scale, i + 0.5, -0.5, bits), 0.0)
        i0 = min(math.floor(_float32(src)), n - 1)  # floorf: float32 even for float64
        t = min(max(rounded(src - i0), 0.0), 1.0)
        taps.append((i0, min(i0 + 1, n - 1)))
        weights.append((rounded(1.0 - t), t))
    return AxisMap(n, tuple(taps), tuple(weights))


def _float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (ties to even)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _fused_multiply_add(a: float, b: float, c: float, bits: int) -> float:
    """``a * b + c`` rounded once to ``bits`` significand bits, as PyTorch's compiled kernels compute it on CPUs
    with FMA. In float32 the double ``a * b + c`` is exact wherever the result is >= 0 (the only results kept)."""
    if bits == FLOAT32_BITS:
        return _float32(a * b + c)
    return float(Fraction(a) * Fraction(b) + Fraction(c))

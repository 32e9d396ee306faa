"""2-D max and average pooling and their backward passes, with PyTorch's semantics, in both layouts.

Layouts: ``data_format="NCHW"`` (the default) or ``"NHWC"`` (channels last; never guessed from shapes). NHWC is
computed natively: the windows are taken on axes 1 and 2, so every window element is a contiguous run of C values.
A 3-D input is one unbatched image, ``(C, H, W)`` or ``(H, W, C)``, as PyTorch takes it (:mod:`xpcnn._unbatched`).

Both reduce strided slices of the shared window primitive one at a time (a running maximum or a running sum), so no
``kh * kw`` times larger temporary is built, and both go through the batch in pieces that fit the workspace limit
(:mod:`xpcnn.config`), so the temporaries stay in the CPU's caches. Windows separate into a pass along the rows
and a pass across them (:func:`xpcnn._windows.by_axis`: ``kh + kw`` slices instead of ``kh * kw``); average
pooling always takes it, max pooling where it walks fewer elements (3x3 windows with stride 1, not 2x2 with
stride 2). The backward passes add each upstream gradient back through the same slices; overlapping windows
accumulate.

Max pooling routes each upstream gradient to exactly ONE input element: the first maximum of its window in
row-major order. It is NOT an equality mask (which would send the full gradient to every tied element). NaN
propagates: a window holding NaN outputs NaN and its gradient goes to that NaN (the last NaN of the window when there
are several, as PyTorch). Padding is implicit ``-inf`` and never wins; a window of ``-inf`` values routes its gradient
to its first in-bounds element, as PyTorch. The winners are recorded as ``Winner`` codes; ``cache.indices``
gives them with the layout of PyTorch's ``return_indices``: a flat index ``h * W + w`` into each unpadded plane,
(N, C, out_h, out_w) for NCHW and (N, out_h, out_w, C) for NHWC.

The accelerator profile (:attr:`xpcnn._tuning.Profile.gather_max_pool`; the ops' private ``_gather`` argument
chooses) gathers all windows at once instead, ``kh * kw`` times the output, and finds the winners by one ``argmax``
over a score array that encodes the same rule; its backward pass routes with one comparison against every offset and
adds back in the order of the other path, so values, indices and gradients are the same bits (a fixed number of
kernels whatever the window, instead of several per window element: benchmarks/README.md). Small per-geometry
arrays (winner codes, window starts, divisors) are made once per device and kept (:mod:`xpcnn._device_cache`).

Average pooling pads with zeros. Its divisor is the window size clipped to the padded input
(``count_include_pad=True``), or the number of real input elements in the window (``count_include_pad=False``), or
``divisor_override``; with ``ceil_mode`` the overhang past the padded input is never counted. The separable sums
add in another order than PyTorch's row-major loop (equal up to rounding). When the windows tile the input
(stride = kernel, no padding, no overhang: the usual 2x2 pooling) the backward pass repeats each share over its
``kh x kw`` tile.

Adaptive pooling (PyTorch's windows ``[floor(i * H / out), ceil((i + 1) * H / out))``, of at most two sizes per axis)
takes these same ops when its windows tile the input, the global mean for ``output_size=1``, and otherwise gathers
each axis's windows with one ``take`` (:mod:`xpcnn._axis_maps`); its backward passes gather through the transposed
windows. Adaptive max pooling follows max pooling's rules above (first maximum, last NaN, ``cache.indices``).
"""

from __future__ import annotations

import math
from typing import Any, Final, NamedTuple

from array_api_compat import device as device_of

from .._validation import cache_repr
from .._axis_maps import adaptive_windows, combined, gathered, per_tap, tap_axis, taps
from .._device_cache import on_device
from .._dispatch import known_finite, max_over
from .._precision import half_in_float32, half_in_float32_backward
from .._unbatched import accepts_unbatched, accepts_unbatched_backward, check_image_ndim
from .._validation import (
    as_bool,
    as_int,
    check_cache,
    check_floating,
    check_upstream,
    namespace_and_device,
)
from .._windows import (
    Array,
    WindowGeometry,
    batch_pieces,
    by_axis,
    concat_pieces,
    crop,
    is_channels_last,
    pad,
    samples_per_piece,
    scatter_windows,
    spatial,
    stacked_windows,
    window_geometry,
    windows,
)
from .._tuning import HOST, profile_for
from ..config import resolve_workspace_limit

__all__ = [
    "MaxPool2dCache",
    "AvgPool2dCache",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "AdaptiveAvgPool2dCache",
    "AdaptiveMaxPool2dCache",
    "adaptive_avg_pool2d_forward",
    "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d_forward",
    "adaptive_max_pool2d_backward",
]


class Winner:
    """How max pooling records the element that won each window: one int16 per window.

    ``FIRST + k`` for the k-th candidate of a scan: the kernel offset ``k = i * kw + j`` in row-major order, or in
    the separable passes the column ``j`` along a row (:attr:`MaxPool2dCache.column_winners`) and the row ``i``
    across the rows. ``NONE`` for a window with no element inside x (it lies entirely in the padding, which only
    dilation allows): its gradient goes nowhere and PyTorch's index is its first element past the padding.

    NONE is 0, below every candidate: the 0/1 masks of the backward pass are then ``winners == FIRST + k``, a
    running ``maximum`` over growing candidates picks the last qualifying one, and ``(w - FIRST) // kw + FIRST``
    maps an offset's code to its row's and NONE to NONE (``-1 // kw == -1``).

    Plain ints, not an ``IntEnum``: array-api-strict refuses int subclasses as scalars.
    """

    NONE: Final = 0
    FIRST: Final = 1


class MaxPool2dCache(NamedTuple):
    """winners: (N, C, out_h, out_w) int16 ((N, out_h, out_w, C) for NHWC), the ``Winner`` code of each
    window's chosen kernel offset; ``indices`` gives them as PyTorch's ``return_indices``.
    column_winners: (N, C, Hp, out_w) int16 (NHWC: (N, Hp, out_w, C)), the Winner code of the column ``j`` that
    won along each padded row's column window (the first pass), by which the backward pass routes a row's gradient
    to its column; None when the forward pass walked the ``kh * kw`` slices directly.
    geometry: the windows' :class:`~xpcnn._windows.WindowGeometry` (input size, kernel, stride, padding,
    dilation); dtype: x's dtype; workspace_limit: the ``workspace_limit=`` given (None: the global setting or the
    device profile's); channels_last: whether x was NHWC."""

    __repr__ = cache_repr

    winners: Any
    column_winners: Any
    geometry: WindowGeometry
    dtype: Any
    workspace_limit: Any
    channels_last: bool = False

    @property
    def indices(self):
        """The flat position ``row * W + col`` in x's (H, W) plane of each output's maximum, as PyTorch's
        ``return_indices``: an int64 array in x's layout, (N, C, out_h, out_w) or (N, out_h, out_w, C)."""
        xp, device = namespace_and_device(winners=self.winners)
        g, last = self.geometry, self.channels_last
        offsets = xp.astype(self.winners, xp.int64) - Winner.FIRST
        rows = _per_window(xp, g.window_starts(0), None, last, device)
        cols = _per_window(xp, None, g.window_starts(1), last, device)
        kw, (dh, dw) = g.kernel[1], g.dilation
        flat = (rows + (offsets // kw) * dh) * g.in_size[1] + cols + (offsets % kw) * dw
        first = _per_window(xp, g.first_positions(0), g.first_positions(1), last, device, width=g.in_size[1])
        return xp.where(self.winners != Winner.NONE, flat, first)


def _per_window(xp, rows, cols, channels_last: bool, device, *, width=None):
    """An int64 array of per-window values that broadcasts against the output: ``rows`` (one per output row)
    times ``width`` plus ``cols`` (one per output column); either may be None. Made once per device."""
    rows, cols = (None if v is None else tuple(v) for v in (rows, cols))

    def build():
        total = 0
        if rows is not None:
            total = xp.asarray(rows, dtype=xp.int64, device=device)[:, None] * (width or 1)  # host: once
        if cols is not None:
            total = total + xp.asarray(cols, dtype=xp.int64, device=device)[None, :]  # host: once
        return total[..., None] if channels_last else total

    return on_device(xp, device, ("pooling per window", rows, cols, channels_last, width), build)


class AvgPool2dCache(NamedTuple):
    """divisor: (out_h, out_w) array in x's dtype ((out_h, out_w, 1) for NHWC), the count each window's sum was
    divided by (made once per geometry and device, and shared by the calls that use it: read-only); geometry: the
    windows' :class:`~xpcnn._windows.WindowGeometry`; x_shape: x's (4-D) shape; workspace_limit: the
    ``workspace_limit=`` given (None: the default); channels_last: whether x was NHWC."""

    __repr__ = cache_repr

    divisor: Any
    geometry: WindowGeometry
    x_shape: tuple
    workspace_limit: Any
    channels_last: bool = False


@accepts_unbatched
@half_in_float32
def max_pool2d_forward(
    x: Array,
    kernel_size: int | tuple[int, ...],
    *,
    stride: int | tuple[int, ...] | None = None,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    ceil_mode: bool = False,
    data_format: str = "NCHW",
    workspace_limit: int | None = None,
    _gather: bool | None = None,
) -> tuple[Array, MaxPool2dCache]:
    """Max pooling as ``torch.nn.functional.max_pool2d``.

    Parameters
    ----------
    x : array, (N, C, H, W) for ``data_format="NCHW"``, (N, H, W, C) for ``"NHWC"``; or one unbatched image,
        (C, H, W) or (H, W, C). Real floating.
    kernel_size, stride, padding, dilation : int or tuple of one or two ints
        (height, width); one value serves both axes. ``stride`` defaults to ``kernel_size`` (also when ``()``).
        ``padding`` is implicit ``-inf``, at most half the kernel.
    ceil_mode : bool
        Round the output size up (a last window starting inside the right/bottom padding is dropped).
    data_format : {"NCHW", "NHWC"}
        x's layout; out, ``cache.indices`` and the gradient have the same.
    workspace_limit : int, optional
        Bytes of temporaries per batch piece (default: the global setting of :mod:`xpcnn.config`).

    Returns
    -------
    out : array, (N, C, out_h, out_w) or (N, out_h, out_w, C) (without N for an unbatched x)
    cache : MaxPool2dCache
        ``cache.indices``: the flat position ``h * W + w`` of each output's maximum (PyTorch's
        ``return_indices``), in out's shape.

    Raises
    ------
    ValueError
        x not 3-D or 4-D; bad kernel, stride, padding, dilation or data_format; a kernel larger than the padded
        input.
    TypeError
        x not a floating array; options of the wrong type.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> out, cache = F.max_pool2d_forward(x, 2)
    >>> out
    array([[[[ 5.,  7.],
             [13., 15.]]]], dtype=float32)
    >>> F.max_pool2d_backward(np.ones_like(out), cache)[0, 0]
    array([[0., 0., 0., 0.],
           [0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]], dtype=float32)
    >>> F.max_pool2d_forward(np.ones((2, 8, 8, 3), dtype=np.float32), 2, data_format="NHWC")[0].shape
    (2, 4, 4, 3)
    """
    xp, device, last = _check_input(x, data_format)
    geometry = _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, last)
    first = _first_winners(xp, geometry, last, device)
    profile = profile_for(x)
    if profile.gather_max_pool if _gather is None else as_bool(_gather, "_gather"):
        pieces = [_gathered_maximum(xp, x[part, ...], geometry, first, last)
                  for part in _pool_pieces(xp, x, geometry, workspace_limit, last, gathered=True)]
        out, winners = (concat_pieces(xp, list(arrays)) for arrays in zip(*pieces))
        return out, MaxPool2dCache(winners, None, geometry, x.dtype, workspace_limit, last)
    separable = _separable_is_cheaper(geometry, profile.separable_max_pool_ratio)
    pieces = []
    for part in _pool_pieces(xp, x, geometry, workspace_limit, last):
        # NaN-free pieces skip the NaN test (checked per piece, while it is in the CPU's caches)
        scan = dict(channels_last=last, nan_free=known_finite(xp, x[part, ...]),
                    copy_windows=profile.copy_strided_windows)
        x_padded = pad(xp, x[part, ...], geometry, -math.inf, channels_last=last)
        if separable:
            pieces.append(_separable_maximum(xp, x_padded, geometry, first, device, **scan))
        else:
            pieces.append(_running_maximum(xp, x_padded, geometry, first, **scan))
    out, winners, *column_winners = (concat_pieces(xp, list(arrays)) for arrays in zip(*pieces))
    column_winners = column_winners[0] if column_winners else None
    return out, MaxPool2dCache(winners, column_winners, geometry, x.dtype, workspace_limit, last)


def _first_winners(xp, geometry: WindowGeometry, channels_last: bool, device, axes=(0, 1)):
    """The ``Winner`` code of each window's first element inside x (NONE where there is none): what a window
    in which nothing beats ``-inf`` chooses, as PyTorch. Over both axes (kernel offsets), or along one (``axes``:
    ``(1,)`` for the column pass of :func:`by_axis`), shaped to broadcast against the output."""
    def build():
        steps = [geometry.first_inside_steps(axis) for axis in axes]
        if axes == (1,):
            codes = [[Winner.NONE if j is None else Winner.FIRST + j for j in steps[0]]]
        else:
            kw = geometry.kernel[1]
            codes = [[Winner.NONE if i is None or j is None else Winner.FIRST + i * kw + j for j in steps[1]]
                     for i in steps[0]]
        codes = xp.asarray(codes, dtype=xp.int16, device=device)  # host: once per geometry and device
        return codes[..., None] if channels_last else codes

    return on_device(xp, device, ("max_pool2d first winners", geometry, channels_last, axes), build)


def _gathered_maximum(xp, x, geometry: WindowGeometry, first, channels_last: bool):
    """The windows' maxima and ``Winner`` codes from all windows at once
    (:attr:`xpcnn._tuning.Profile.gather_max_pool`): ``(N, C, kh * kw, out_h, out_w)`` (NHWC:
    ``(N, out_h, out_w, kh * kw, C)``) by :func:`stacked_windows`, their ``max`` (:func:`xpcnn._dispatch.max_over`),
    then one ``argmax`` over a score per window element: ``2 + k`` for a NaN at offset k, 1 where the element equals
    the maximum, else 0. ``argmax`` returns the first of equal scores, so the window's first maximum wins, or its last
    NaN (the only score of its value): :func:`_first_maximum`'s rule. Padding (``-inf``) equals the maximum only
    where the window holds nothing greater; then the first element inside x wins (``first``), and nothing where
    there is none (NONE)."""
    device, axis = device_of(x), (-2 if channels_last else -3)
    if math.prod(x.shape) == 0:  # nothing to reduce (and Dask's reductions mis-shape an empty batch)
        lead, trail = _lead_and_trail(tuple(x.shape), channels_last)
        shape = (*lead, *geometry.out_size, *trail)
        return xp.zeros(shape, dtype=x.dtype, device=device), xp.zeros(shape, dtype=xp.int16, device=device)
    columns = stacked_windows(xp, x, geometry, -math.inf, channels_last=channels_last)
    out = max_over(xp, columns, axis=axis)
    is_max = xp.astype(columns == xp.expand_dims(out, axis=axis), x.dtype)
    scores = xp.where(xp.isnan(columns), _offset_table(xp, geometry, channels_last, x.dtype, device, 2), is_max)
    winners = xp.astype(xp.argmax(scores, axis=axis), xp.int16) + Winner.FIRST
    if geometry.padded_size != geometry.in_size or geometry.padding != ((0, 0), (0, 0)):
        winners = xp.maximum(winners, first)  # padding is never chosen: a window of -inf takes its first inside
        if any(None in geometry.first_inside_steps(axis) for axis in (0, 1)):
            winners = xp.where(first == Winner.NONE, first, winners)
    return out, winners


def _offset_table(xp, geometry: WindowGeometry, channels_last: bool, dtype, device, start: int):
    """``start + k`` for every kernel offset k, in ``dtype``, shaped ``(kh * kw, 1, 1)`` (NHWC: ``(kh * kw, 1)``)
    to broadcast along the offset axis of :func:`stacked_windows`' result; made once per device."""
    count = len(geometry.offsets())

    def build():
        table = xp.arange(start, start + count, dtype=dtype, device=device)
        return xp.reshape(table, (count, 1) if channels_last else (count, 1, 1))

    return on_device(xp, device, ("max_pool2d offsets", count, channels_last, str(dtype), start), build)


def _separable_maximum(xp, x_padded, geometry: WindowGeometry, first, device, **scan):
    """The windows' maxima and Winner codes in two passes (:func:`by_axis`): along each padded row first (the column
    winners), then across the rows. A window's first maximum in row-major order is the first row maximum that
    beats the earlier rows' (NaN: the last NaN of the last row holding one), as the scan over all ``kh * kw``
    elements finds it. ``scan``: :func:`_running_maximum`'s options. Returns ``(out, winners, column_winners)``."""
    along_rows, across_rows = by_axis(geometry)
    kw, last = geometry.kernel[1], scan["channels_last"]
    first_columns = _first_winners(xp, geometry, last, device, axes=(1,))
    row_maxima, column_winners = _running_maximum(xp, x_padded, along_rows, first_columns, **scan)
    every_column = slice(None)
    candidates = (  # row i's winning column j (code FIRST + j) as the code of the offset i * kw + j
        column_winners[spatial(across_rows.slices(i, 0)[0], every_column, channels_last=last)] + i * kw
        for i, _ in across_rows.offsets()
    )
    out, winners = _running_maximum(xp, row_maxima, across_rows, first, candidates, **scan)
    return out, winners, column_winners


def _running_maximum(
    xp, x, geometry: WindowGeometry, first, candidates=None, *, channels_last: bool = False, nan_free: bool = False,
    copy_windows: bool = True,
):
    """Maxima of the windows of ``geometry`` over ``x`` (already padded) and the ``Winner`` code of each:
    ``FIRST + k`` for the k-th slice (or ``candidates``' k-th array), by :func:`_first_maximum`'s rule; ``first``
    where nothing beats ``-inf``. The first slice is taken unless it lies in the padding (then its candidate is
    below ``first``) or the window has no element in bounds (``first`` is NONE). ``nan_free``: x is known to hold
    no NaN. ``copy_windows``: copy a slice that is strided along the width once, so that the comparisons run on
    contiguous memory (:attr:`xpcnn._tuning.Profile.copy_strided_windows`).
    """
    if candidates is None:
        candidates = (Winner.FIRST + k for k in range(len(geometry.offsets())))
    copy = copy_windows and geometry.stride[1] > 1
    values = (xp.asarray(window, copy=True) if copy else window
              for _, _, window in windows(x, geometry, channels_last=channels_last))
    out, chosen = _first_maximum(xp, values, candidates, first=first, nan_free=nan_free)
    single_view = len(geometry.offsets()) == 1 and not copy  # out would be a view of x: never hand one back
    return (xp.asarray(out, copy=True) if single_view else out), chosen


@accepts_unbatched_backward
@half_in_float32_backward
def max_pool2d_backward(dout: Array, cache: MaxPool2dCache, *, _gather: bool | None = None) -> Array:
    """Gradient of :func:`max_pool2d_forward`: each ``dout`` element goes to its window's chosen input element
    (after a separable forward pass: first to the chosen row of the first pass's result, then along that row to
    the chosen column, piece by piece so that the intermediate stays in cache; with the device profile's
    ``gather_max_pool``: one comparison of the winners with every offset's code, then the parts added back per
    offset, in the order of the other path, so the gradients are the same bits).

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: its shape (NCHW or NHWC, as x), dtype, library
        and device.
    cache : MaxPool2dCache
        What :func:`max_pool2d_forward` returned.

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
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    >>> out, cache = F.max_pool2d_forward(x, 2, data_format="NHWC")
    >>> F.max_pool2d_backward(np.ones_like(out), cache)[0, :, :, 0]
    array([[0., 0., 0., 0.],
           [0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]], dtype=float32)
    """
    check_cache(cache, MaxPool2dCache, "max_pool2d")
    winners, column_winners, geometry, dtype, limit, last = cache
    xp, device = check_upstream(dout, winners.shape, winners, dtype)
    if profile_for(dout).gather_max_pool if _gather is None else as_bool(_gather, "_gather"):
        return concat_pieces(xp, [_gathered_routes(xp, dout[part, ...], winners[part, ...], geometry, last)
                                  for part in _pool_pieces(xp, dout, geometry, limit, last, gathered=True)])
    lead, trail = _lead_and_trail(winners.shape, last)
    like = dict(dtype=dout.dtype, device=device, trailing_shape=trail)
    if column_winners is None and _tiles_input(geometry):  # disjoint windows: interleave, nothing to add up
        return _from_tile_parts(xp, list(_routed(xp, dout, winners, geometry)), geometry, device, last)
    if column_winners is None:
        return scatter_windows(xp, _routed(xp, dout, winners, geometry), geometry, lead, **like)
    along_rows, across_rows = by_axis(geometry)
    pieces = []
    for part in _pool_pieces(xp, dout, geometry, limit, last):
        piece_lead = (len(range(winners.shape[0])[part]), *lead[1:])
        row_winners = (winners[part, ...] - Winner.FIRST) // geometry.kernel[1] + Winner.FIRST  # NONE stays NONE
        finite = known_finite(xp, dout[part, ...])  # then so is what it routes to the rows
        to_rows = _routed(xp, dout[part, ...], row_winners, across_rows, finite=finite)
        to_rows = scatter_windows(xp, to_rows, across_rows, piece_lead, **like)
        to_columns = _routed(xp, to_rows, column_winners[part, ...], along_rows, finite=finite)
        grad = scatter_windows(xp, to_columns, along_rows, piece_lead, **like)
        pieces.append(crop(grad, geometry, channels_last=last))
    return concat_pieces(xp, pieces)


def _gathered_routes(xp, dout, winners, geometry: WindowGeometry, channels_last: bool):
    """:func:`max_pool2d_backward` with every offset at once: ``parts[i, j] = dout`` where the window chose offset
    ``(i, j)``, else 0 (one comparison of the winners with all codes, one ``where``: a non-finite dout reaches only
    the chosen element), ``(N, C, kh, kw, out_h, out_w)`` (NHWC: ``(N, out_h, out_w, kh, kw, C)``). The parts are
    then added back into place:

    * windows that tile x: interleaved by one transpose (no additions);
    * where the host path takes the separable passes (:func:`_host_adds_by_axis`): along the rows' offsets first,
      into one row array per column offset, then along the columns (the host's order of additions, so the
      sums of overlapping windows round alike);
    * otherwise offset by offset in row-major order (:func:`scatter_windows`, the host's order too).
    """
    device = device_of(dout)
    (kh, kw), (padded_h, _), (out_h, out_w) = geometry.kernel, geometry.padded_size, geometry.out_size
    n, like = dout.shape[0], dict(dtype=dout.dtype, device=device)
    codes = _code_table(xp, geometry, channels_last, device)
    if channels_last:
        channels = dout.shape[3]
        window_axes = (n, out_h, out_w, 1, 1, channels)
    else:
        channels = dout.shape[1]
        window_axes = (n, channels, 1, 1, out_h, out_w)
    parts = xp.where(xp.reshape(winners, window_axes) == codes, xp.reshape(dout, window_axes), 0.0)
    if channels_last:
        if _tiles_input(geometry):  # (N, out_h, out_w, kh, kw, C) -> (N, out_h, kh, out_w, kw, C)
            grad = xp.reshape(xp.permute_dims(parts, (0, 1, 3, 2, 4, 5)), (n, out_h * kh, out_w * kw, channels))
            return _zero_extended(xp, grad, geometry, device, True)
        if not _host_adds_by_axis(geometry):
            return scatter_windows(xp, [parts[:, :, :, i, j, :] for i, j in geometry.offsets()], geometry, (n,),
                                   trailing_shape=(channels,), **like)
        along_rows, across_rows = by_axis(geometry)
        by_row = xp.reshape(parts, (n, out_h, out_w, kh, kw * channels))
        rows = scatter_windows(xp, [by_row[:, :, :, i, :] for i in range(kh)], across_rows, (n,),
                               trailing_shape=(kw * channels,), **like)
        rows = xp.reshape(rows, (n, padded_h, out_w, kw, channels))
        grad = scatter_windows(xp, [rows[:, :, :, j, :] for j in range(kw)], along_rows, (n,),
                               trailing_shape=(channels,), **like)
        return crop(grad, geometry, channels_last=True)
    if _tiles_input(geometry):  # (N, C, kh, kw, out_h, out_w) -> (N, C, out_h, kh, out_w, kw)
        grad = xp.reshape(xp.permute_dims(parts, (0, 1, 4, 2, 5, 3)), (n, channels, out_h * kh, out_w * kw))
        return _zero_extended(xp, grad, geometry, device, False)
    if not _host_adds_by_axis(geometry):
        return scatter_windows(xp, [parts[:, :, i, j, ...] for i, j in geometry.offsets()], geometry, (n, channels),
                               **like)
    along_rows, across_rows = by_axis(geometry)
    rows = scatter_windows(xp, [parts[:, :, i, ...] for i in range(kh)], across_rows, (n, channels, kw), **like)
    grad = scatter_windows(xp, [rows[:, :, j, ...] for j in range(kw)], along_rows, (n, channels), **like)
    return crop(grad, geometry)


def _code_table(xp, geometry: WindowGeometry, channels_last: bool, device):
    """The ``Winner`` code ``FIRST + i * kw + j`` of every kernel offset, int16, shaped ``(kh, kw, 1, 1)`` (NHWC:
    ``(kh, kw, 1)``) to broadcast against :func:`_gathered_routes`' parts; made once per device."""
    kh, kw = geometry.kernel

    def build():
        codes = xp.arange(Winner.FIRST, Winner.FIRST + kh * kw, dtype=xp.int16, device=device)
        return xp.reshape(codes, (kh, kw, 1) if channels_last else (kh, kw, 1, 1))

    return on_device(xp, device, ("max_pool2d codes", kh, kw, channels_last), build)


def _host_adds_by_axis(geometry: WindowGeometry) -> bool:
    """Whether the host profile's max pooling takes the separable passes for ``geometry``, and so adds the
    gradients of overlapping windows along the rows first: the gathered backward pass adds in the same order."""
    return _separable_is_cheaper(geometry, HOST.separable_max_pool_ratio)


def _lead_and_trail(shape, channels_last: bool) -> tuple[tuple, tuple]:
    """The axes before and after the spatial ones: ``((N, C), ())`` for NCHW, ``((N,), (C,))`` for NHWC."""
    return ((shape[0],), (shape[3],)) if channels_last else ((shape[0], shape[1]), ())


def _separable_is_cheaper(geometry: WindowGeometry, ratio: float = 1.0) -> bool:
    """Whether the two passes of :func:`by_axis` walk fewer than ``ratio`` times the elements of the ``kh * kw``
    slices (3x3 windows with stride 1: 6336 against 9216 per 32x32 plane; 2x2 windows with stride 2: 1536 against
    1024); :attr:`xpcnn._tuning.Profile.separable_max_pool_ratio`."""
    (kh, kw), (padded_h, _), (out_h, out_w) = geometry.kernel, geometry.padded_size, geometry.out_size
    return kw * padded_h * out_w + kh * out_h * out_w < ratio * kh * kw * out_h * out_w


def _routed(xp, grad, winners, geometry: WindowGeometry, *, finite: bool | None = None):
    """For each slice k of ``geometry``: ``grad`` where ``winners == FIRST + k``, else 0.

    Where grad is known to be finite (``finite``, or else :func:`xpcnn._dispatch.known_finite`: NumPy, checked
    for free) a product with the 0/1 mask, several times faster on NumPy than a ``where`` on a random mask.
    Otherwise the ``where``: a non-finite grad must reach only the chosen element (``inf * 0`` would put NaN on
    the others).
    """
    fast = known_finite(xp, grad) if finite is None else finite
    for k in range(len(geometry.offsets())):
        chosen = winners == Winner.FIRST + k
        yield grad * xp.astype(chosen, grad.dtype) if fast else xp.where(chosen, grad, 0.0)


@accepts_unbatched
@half_in_float32
def avg_pool2d_forward(
    x: Array,
    kernel_size: int | tuple[int, ...],
    *,
    stride: int | tuple[int, ...] | None = None,
    padding: int | tuple[int, ...] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    data_format: str = "NCHW",
    workspace_limit: int | None = None,
) -> tuple[Array, AvgPool2dCache]:
    """Average pooling as ``torch.nn.functional.avg_pool2d``.

    Parameters
    ----------
    x : array, (N, C, H, W) for ``data_format="NCHW"``, (N, H, W, C) for ``"NHWC"``; or one unbatched image,
        (C, H, W) or (H, W, C). Real floating.
    kernel_size, stride, padding : int or tuple of one or two ints
        (height, width); one value serves both axes. ``stride`` defaults to ``kernel_size`` (also when ``()``).
        ``padding`` is zeros, at most half the kernel.
    ceil_mode : bool
        Round the output size up (the overhang past the padded input is never counted).
    count_include_pad : bool
        Divide by the window size clipped to the padded input (True) or by the number of x's elements in it.
    divisor_override : int, optional
        Divide every window's sum by this instead.
    data_format : {"NCHW", "NHWC"}
        x's layout; out and the gradient have the same.
    workspace_limit : int, optional
        Bytes of temporaries per batch piece (default: the global setting of :mod:`xpcnn.config`).

    Returns
    -------
    out : array, (N, C, out_h, out_w) or (N, out_h, out_w, C) (without N for an unbatched x)
    cache : AvgPool2dCache

    Raises
    ------
    ValueError, TypeError
        As :func:`max_pool2d_forward`; a ``divisor_override`` that is not a nonzero int.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> out, cache = F.avg_pool2d_forward(x, 2)
    >>> out
    array([[[[ 2.5,  4.5],
             [10.5, 12.5]]]], dtype=float32)
    >>> F.avg_pool2d_backward(np.ones_like(out), cache)[0, 0, 0]
    array([0.25, 0.25, 0.25, 0.25], dtype=float32)
    """
    xp, device, last = _check_input(x, data_format)
    geometry = _pool_geometry(x, kernel_size, stride, padding, 1, ceil_mode, last)
    count_include_pad, divisor_override = avg_pool_options(count_include_pad, divisor_override)
    first, second = by_axis(geometry, rows_first=False)
    sums = []
    for part in _pool_pieces(xp, x, geometry, workspace_limit, last):
        x_padded = pad(xp, x[part, ...], geometry, 0.0, channels_last=last)
        sums.append(_sum(_sum(x_padded, first, last), second, last))
    divisor = _divisor(xp, geometry, count_include_pad, divisor_override, x.dtype, device, last)
    return concat_pieces(xp, sums) / divisor, AvgPool2dCache(divisor, geometry, tuple(x.shape), workspace_limit, last)


@accepts_unbatched_backward
@half_in_float32_backward
def avg_pool2d_backward(dout: Array, cache: AvgPool2dCache) -> Array:
    """Gradient of :func:`avg_pool2d_forward`: each ``dout / divisor`` is spread evenly over its window (back
    across the rows, then along them, piece by piece so that the intermediate stays in cache).

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: its shape (NCHW or NHWC, as x), dtype, library
        and device.
    cache : AvgPool2dCache
        What :func:`avg_pool2d_forward` returned.

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
    >>> out, cache = F.avg_pool2d_forward(np.ones((1, 1, 3, 3), dtype=np.float32), 2, stride=1)
    >>> F.avg_pool2d_backward(np.ones_like(out), cache)[0, 0]
    array([[0.25, 0.5 , 0.25],
           [0.5 , 1.  , 0.5 ],
           [0.25, 0.5 , 0.25]], dtype=float32)
    """
    check_cache(cache, AvgPool2dCache, "avg_pool2d")
    divisor, geometry, x_shape, limit, last = cache
    lead, trail = _lead_and_trail(x_shape, last)
    xp, device = check_upstream(dout, (*lead, *geometry.out_size, *trail), divisor, divisor.dtype)
    share = dout / divisor
    if _tiles_input(geometry):
        return _from_tiles(xp, share, geometry, device, last)
    first, second = by_axis(geometry, rows_first=False)
    like = dict(dtype=dout.dtype, device=device, trailing_shape=trail)
    pieces = []
    for part in _pool_pieces(xp, dout, geometry, limit, last):
        piece_lead = (len(range(x_shape[0])[part]), *lead[1:])
        sums = scatter_windows(xp, _repeated(share[part, ...], second), second, piece_lead, **like)
        grad = scatter_windows(xp, _repeated(sums, first), first, piece_lead, **like)
        pieces.append(crop(grad, geometry, channels_last=last))
    return concat_pieces(xp, pieces)


def _sum(x, geometry: WindowGeometry, channels_last: bool = False):
    """The sum over each window of ``geometry``, slice by slice."""
    total = None
    for _, _, window in windows(x, geometry, channels_last=channels_last):
        total = window if total is None else total + window
    return total


def _repeated(array, geometry: WindowGeometry):
    return (array for _ in geometry.offsets())


def _tiles_input(geometry: WindowGeometry) -> bool:
    """The windows are disjoint, unpadded and inside x: stride = kernel, no padding, dilation 1, no overhang."""
    return (
        geometry.stride == geometry.kernel
        and geometry.dilation == (1, 1)
        and geometry.padding == ((0, 0), (0, 0))
        and geometry.padded_size == geometry.in_size
    )


def _from_tiles(xp, share, geometry: WindowGeometry, device, channels_last: bool = False):
    """Each output value repeated over its tile; zeros for the rows and columns no window covers."""
    (kh, kw), rows_axis, cols_axis = geometry.kernel, *((1, 2) if channels_last else (2, 3))
    grad = xp.repeat(xp.repeat(share, kh, axis=rows_axis), kw, axis=cols_axis)
    return _zero_extended(xp, grad, geometry, device, channels_last)


def _zero_extended(xp, grad, geometry: WindowGeometry, device, channels_last: bool):
    """The gradient of the tiles, ``(out_h * kh, out_w * kw)`` on the spatial axes, extended with zeros to x's
    (H, W): the rows and columns past the last tile."""
    (out_h, out_w), (kh, kw), (height, width) = geometry.out_size, geometry.kernel, geometry.in_size
    rows_axis, cols_axis = (1, 2) if channels_last else (2, 3)

    def zeros(axis, size):
        shape = list(grad.shape)
        shape[axis] = size
        return xp.zeros(tuple(shape), dtype=grad.dtype, device=device)

    if out_w * kw < width:
        grad = xp.concat([grad, zeros(cols_axis, width - out_w * kw)], axis=cols_axis)
    if out_h * kh < height:
        grad = xp.concat([grad, zeros(rows_axis, height - out_h * kh)], axis=rows_axis)
    return grad


def _from_tile_parts(xp, parts, geometry: WindowGeometry, device, channels_last: bool = False):
    """:func:`scatter_windows` for windows that tile x (:func:`_tiles_input`): element ``(i, j)`` of every tile,
    ``parts[i * kw + j]`` (the output's shape), interleaved into place by two stacks and reshapes (no zeros to add
    into, no strided adds); zeros for the rows and columns no window covers."""
    (out_h, out_w), (kh, kw) = geometry.out_size, geometry.kernel
    shape = parts[0].shape
    if channels_last:  # (N, out_h, out_w, C): columns interleave on the axis before C
        n, channels = shape[0], shape[3]
        rows = [xp.reshape(xp.stack(parts[i * kw : (i + 1) * kw], axis=3), (n, out_h, out_w * kw, channels))
                for i in range(kh)]
        grad = xp.reshape(xp.stack(rows, axis=2), (n, out_h * kh, out_w * kw, channels))
    else:  # (N, C, out_h, out_w)
        lead = tuple(shape[:2])
        rows = [xp.reshape(xp.stack(parts[i * kw : (i + 1) * kw], axis=-1), (*lead, out_h, out_w * kw))
                for i in range(kh)]
        grad = xp.reshape(xp.stack(rows, axis=-2), (*lead, out_h * kh, out_w * kw))
    return _zero_extended(xp, grad, geometry, device, channels_last)


def _pool_pieces(xp, x, geometry: WindowGeometry, workspace_limit, channels_last: bool, *,
                 gathered: bool = False) -> list[slice]:
    """Batch pieces whose padded input and per-offset temporaries (about six output-sized arrays; ``gathered``:
    three arrays of all windows, :func:`_gathered_maximum`) fit the workspace limit. Small pieces stay in the
    CPU's caches while the kernel offsets are walked."""
    (padded_h, padded_w), (out_h, out_w) = geometry.padded_size, geometry.out_size
    channels = x.shape[3] if channels_last else x.shape[1]
    temporaries = 3 * len(geometry.offsets()) if gathered else 6
    per_sample = channels * (padded_h * padded_w + temporaries * out_h * out_w) * xp.finfo(x.dtype).bits // 8
    return batch_pieces(x.shape[0], samples_per_piece(per_sample, resolve_workspace_limit(workspace_limit, x)))


def _check_input(x, data_format: str = "NCHW") -> tuple[Any, Any, bool]:
    """The checks every pooling op makes on x (4-D here: :func:`accepts_unbatched` has batched a 3-D one).
    Returns ``(xp, device, channels_last)``."""
    xp, device = namespace_and_device(x=x)
    check_floating(xp, x, "x")
    last = is_channels_last(data_format)
    check_image_ndim(x, data_format)
    return xp, device, last


def _spatial_size(x, channels_last: bool) -> tuple[int, int]:
    return tuple(x.shape[1:3]) if channels_last else tuple(x.shape[2:])


def _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, channels_last: bool) -> WindowGeometry:
    kernel, stride, pads, dilation, ceil_mode = pool_options(kernel_size, stride, padding, dilation, ceil_mode)
    pads = tuple((p, p) for p in pads)
    return window_geometry(_spatial_size(x, channels_last), kernel, stride, dilation, pads, ceil_mode=ceil_mode)


def pool_options(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The pooling arguments checked and normalised: ``(kernel, stride, padding, dilation, ceil_mode)``, pairs as
    (height, width) tuples. Each may be an int or a tuple of one or two ints, as PyTorch takes them; ``stride``
    None or ``()`` is the kernel size. The layers call it when they are built, the ops on every call (same
    messages)."""
    kernel = _pool_pair(kernel_size, "kernel_size", minimum=1)
    if kernel[0] * kernel[1] > MAX_KERNEL_ELEMENTS:
        raise ValueError(
            f"kernel_size may have at most {MAX_KERNEL_ELEMENTS} elements (int16 winners), got {kernel_size!r}"
        )
    stride = kernel if stride is None or _is_empty_sequence(stride) else _pool_pair(stride, "stride", minimum=1)
    dilation = _pool_pair(dilation, "dilation", minimum=1)
    pads = _pool_pair(padding, "padding", minimum=0)
    if any(p > k // 2 for p, k in zip(pads, kernel)):
        raise ValueError(
            f"padding must be at most half the kernel size ({kernel[0] // 2}, {kernel[1] // 2}), "
            f"got padding {padding!r} with kernel_size {kernel_size!r}"
        )
    return kernel, stride, pads, dilation, as_bool(ceil_mode, "ceil_mode")


def _is_empty_sequence(value) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 0


def _pool_pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """``value`` as a (height, width) pair: an int, or a tuple/list of one int (both axes) or two."""
    if isinstance(value, (tuple, list)):
        if len(value) not in (1, 2):
            raise ValueError(f"{name} must be an int or a pair of ints (or a tuple of one int), got {value!r}")
        pair = tuple(as_int(v, name) for v in value) * (3 - len(value))
    else:
        pair = (as_int(value, name),) * 2
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def avg_pool_options(count_include_pad=True, divisor_override=None) -> tuple[bool, int | None]:
    """``count_include_pad`` and ``divisor_override`` checked (a bool; None or a nonzero int: PyTorch divides by a
    negative one too)."""
    count_include_pad = as_bool(count_include_pad, "count_include_pad")
    if divisor_override is not None:
        divisor_override = as_int(divisor_override, "divisor_override")
        if divisor_override == 0:
            raise ValueError(f"divisor_override must be a nonzero int, got {divisor_override}")
    return count_include_pad, divisor_override


def _divisor(xp, geometry: WindowGeometry, count_include_pad, divisor_override, dtype, device, channels_last=False):
    """(out_h, out_w) divisors of the window sums ((out_h, out_w, 1) for NHWC), computed per axis as PyTorch; made
    once per device (read-only: calls of the same geometry share it)."""

    def build():
        if divisor_override is not None:
            divisor = xp.full(geometry.out_size, divisor_override, dtype=dtype, device=device)
            return divisor[..., None] if channels_last else divisor
        counts = []
        for axis in (0, 1):
            size, kernel, before = geometry.in_size[axis], geometry.kernel[axis], geometry.padding[axis][0]
            axis_counts = []
            for start in geometry.window_starts(axis):
                end = min(start + kernel, size + before)
                if not count_include_pad:
                    start, end = max(start, 0), min(end, size)
                axis_counts.append(end - start)
            counts.append(xp.asarray(axis_counts, dtype=dtype, device=device))  # host: once per geometry
        divisor = counts[0][:, None] * counts[1][None, :]
        return divisor[..., None] if channels_last else divisor

    key = ("avg_pool2d divisor", geometry, count_include_pad, divisor_override, str(dtype), channels_last)
    return on_device(xp, device, key, build)


# -- adaptive pooling -------------------------------------------------------------------------------------------------

MAX_KERNEL_ELEMENTS = 2**15 - 1
"""Pooling's kernel limit (max_pool2d's int16 ``Winner`` codes): larger tiling windows take the gathered path."""


class AdaptiveAvgPool2dCache(NamedTuple):
    """divisor: (out_h, out_w) array in x's dtype ((out_h, out_w, 1) for NHWC), the size of each window (the sum is
    divided by it); rows, cols: the windows along the height and the width (None for the global mean: one window);
    pooled: avg_pool2d's cache when the windows tile x (``H % out_h == W % out_w == 0``), else None;
    x_shape: x's (4-D) shape; channels_last: whether x was NHWC."""

    __repr__ = cache_repr

    divisor: Any
    rows: Any
    cols: Any
    pooled: Any
    x_shape: tuple
    channels_last: bool = False


class AdaptiveMaxPool2dCache(NamedTuple):
    """flat_indices: int64 in the output's shape and layout, the flat position ``row * W + col`` in x of each
    maximum; chosen_columns: (N, C, H, out_w) int16 ((N, H, out_w, C) for NHWC; int32 for planes wider than 32767),
    the column of each row's window maximum (the first pass, along the rows); rows, cols: the windows. pooled:
    max_pool2d's cache when the windows tile x (then every other array is None). x_shape: x's (4-D) shape; dtype:
    x's dtype. channels_last: whether x was NHWC."""

    __repr__ = cache_repr

    flat_indices: Any
    chosen_columns: Any
    rows: Any
    cols: Any
    pooled: Any
    x_shape: tuple
    dtype: Any
    channels_last: bool = False

    @property
    def indices(self):
        """int64 in the output's shape and layout: the flat position ``row * W + col`` in x of each output's
        maximum, as PyTorch's ``return_indices``."""
        return self.pooled.indices if self.pooled is not None else self.flat_indices


def _axes(channels_last: bool) -> tuple[int, int]:
    """The (height, width) axes, counted from the end: (-2, -1) for NCHW, (-3, -2) for NHWC."""
    return (-3, -2) if channels_last else (-2, -1)


def _image_shape(n: int, channels: int, size, channels_last: bool) -> tuple[int, int, int, int]:
    return (n, *size, channels) if channels_last else (n, channels, *size)


@accepts_unbatched
@half_in_float32
def adaptive_avg_pool2d_forward(
    x: Array, output_size: int | tuple[int | None, int | None], *, data_format: str = "NCHW"
) -> tuple[Array, AdaptiveAvgPool2dCache]:
    """Adaptive average pooling as ``torch.nn.functional.adaptive_avg_pool2d``.

    Output ``(i, j)`` is the mean of rows ``[floor(i * H / out_h), ceil((i + 1) * H / out_h))`` and likewise columns
    (windows of at most two sizes per axis, neighbours overlapping by at most one row or column; an output larger
    than x repeats rows and columns). ``output_size=1`` is the global mean over H and W; windows that tile x are
    avg_pool2d's, with kernel = stride = ``(H // out_h, W // out_w)``.

    Parameters
    ----------
    x : array, (N, C, H, W) for ``data_format="NCHW"``, (N, H, W, C) for ``"NHWC"``, or one unbatched image
        ((C, H, W) or (H, W, C)); real floating; H and W at least 1.
    output_size : int or pair
        (out_h, out_w), each an int >= 0 or None (None keeps that axis's size).
    data_format : {"NCHW", "NHWC"}
        x's layout; out and the gradient have the same.

    Returns
    -------
    out : array, (N, C, out_h, out_w) or (N, out_h, out_w, C) (without N for an unbatched x)
    cache : AdaptiveAvgPool2dCache

    Raises
    ------
    ValueError
        x not 3-D or 4-D, or with an empty height or width; an output size below 0; a pair of the wrong length; a
        bad ``data_format``.
    TypeError
        x not a floating array; ``output_size`` not an int, None or a pair of them.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> out, cache = F.adaptive_avg_pool2d_forward(np.ones((2, 3, 7, 7), dtype=np.float32), (1, 1))
    >>> out.shape
    (2, 3, 1, 1)
    >>> F.adaptive_avg_pool2d_backward(np.ones_like(out), cache).shape
    (2, 3, 7, 7)
    """
    xp, device, last = _check_adaptive_input(x, data_format)
    in_size = _spatial_size(x, last)
    out_size = _adaptive_output_size(output_size, in_size)
    height_axis, width_axis = _axes(last)
    if out_size == (1, 1):  # global average pooling: one mean per plane
        divisor = xp.full((1, 1), in_size[0] * in_size[1], dtype=x.dtype, device=device)
        out = xp.mean(x, axis=(height_axis, width_axis), keepdims=True)
        return out, AdaptiveAvgPool2dCache(divisor, None, None, None, tuple(x.shape), last)
    kernel = _tiling_kernel(in_size, out_size)
    if kernel is not None:
        out, pooled = avg_pool2d_forward(x, kernel, data_format=data_format)
        return out, AdaptiveAvgPool2dCache(pooled.divisor, None, None, pooled, tuple(x.shape), last)
    rows, cols = (adaptive_windows(n, out) for n, out in zip(in_size, out_size))
    divisor = _window_sizes(xp, rows, cols, x.dtype, device, last)
    cache = AdaptiveAvgPool2dCache(divisor, rows, cols, None, tuple(x.shape), last)
    if 0 in out_size:
        n, channels = _batch_and_channels(x.shape, last)
        return xp.zeros(_image_shape(n, channels, out_size, last), dtype=x.dtype, device=device), cache
    return _window_sums(xp, x, rows, cols, last) / divisor, cache


@accepts_unbatched_backward
@half_in_float32_backward
def adaptive_avg_pool2d_backward(dout: Array, cache: AdaptiveAvgPool2dCache) -> Array:
    """Gradient of :func:`adaptive_avg_pool2d_forward`: ``dx[r, c] = sum of dout[i, j] / divisor[i, j]`` over the
    windows ``(i, j)`` that hold ``(r, c)`` (through the transposed windows: no scatter).

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: its shape (NCHW or NHWC, as x), dtype, library
        and device.
    cache : AdaptiveAvgPool2dCache
        What :func:`adaptive_avg_pool2d_forward` returned.

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
    >>> out, cache = F.adaptive_avg_pool2d_forward(np.ones((1, 1, 2, 2), dtype=np.float32), 1)
    >>> F.adaptive_avg_pool2d_backward(np.ones_like(out), cache)[0, 0]
    array([[0.25, 0.25],
           [0.25, 0.25]], dtype=float32)
    """
    check_cache(cache, AdaptiveAvgPool2dCache, "adaptive_avg_pool2d")
    divisor, rows, cols, pooled, x_shape, last = cache
    if pooled is not None:
        return avg_pool2d_backward(dout, pooled)
    out_size = (1, 1) if rows is None else (rows.out_size, cols.out_size)
    n, channels = _batch_and_channels(x_shape, last)
    xp, device = check_upstream(dout, _image_shape(n, channels, out_size, last), divisor, divisor.dtype)
    share = dout / divisor
    if rows is None:  # the global mean: each plane's share everywhere
        return xp.asarray(xp.broadcast_to(share, x_shape), copy=True)
    if 0 in out_size:
        return xp.zeros(x_shape, dtype=dout.dtype, device=device)
    height_axis, width_axis = _axes(last)
    return combined(xp, combined(xp, share, rows.transposed, height_axis), cols.transposed, width_axis)


@accepts_unbatched
@half_in_float32
def adaptive_max_pool2d_forward(
    x: Array, output_size: int | tuple[int | None, int | None], *, data_format: str = "NCHW",
    _gather: bool | None = None,
) -> tuple[Array, AdaptiveMaxPool2dCache]:
    """Adaptive max pooling as ``torch.nn.functional.adaptive_max_pool2d`` (windows as
    :func:`adaptive_avg_pool2d_forward`), with max_pool2d's rules: the gradient goes to the first maximum of each
    window in row-major order, NaN propagates (its gradient and index go to the last NaN of the window), and
    ``cache.indices`` holds the flat positions ``row * W + col`` as PyTorch's ``return_indices``, in the output's
    shape and layout.

    Windows that tile x are max_pool2d's (kernel = stride = ``(H // out_h, W // out_w)``). Other windows are
    gathered along the rows (one ``take``; a running maximum over the taps gives each row's window maximum and its
    first-maximum column), then across them, as max_pool2d's separable passes. With the device profile's
    ``gather_max_pool`` each pass instead takes one ``max`` over all taps and finds the chosen positions by one more
    over a score array (:func:`_chosen_at_once`), and the backward pass compares with all taps at once: the same
    bits, in a fixed number of kernels.

    Parameters
    ----------
    x : array, (N, C, H, W) for ``data_format="NCHW"``, (N, H, W, C) for ``"NHWC"``, or one unbatched image
        ((C, H, W) or (H, W, C)); real floating; H and W at least 1.
    output_size : int or pair
        (out_h, out_w), each an int >= 0 or None (None keeps that axis's size).
    data_format : {"NCHW", "NHWC"}
        x's layout; out, ``cache.indices`` and the gradient have the same.

    Returns
    -------
    out : array, (N, C, out_h, out_w) or (N, out_h, out_w, C) (without N for an unbatched x)
    cache : AdaptiveMaxPool2dCache

    Raises
    ------
    ValueError, TypeError
        As :func:`adaptive_avg_pool2d_forward`.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> out, cache = F.adaptive_max_pool2d_forward(x, 2)
    >>> out[0, 0], cache.indices[0, 0]
    (array([[ 5.,  7.],
           [13., 15.]], dtype=float32), array([[ 5,  7],
           [13, 15]]))
    >>> F.adaptive_max_pool2d_backward(np.ones_like(out), cache).shape
    (1, 1, 4, 4)
    """
    xp, device, last = _check_adaptive_input(x, data_format)
    in_size = _spatial_size(x, last)
    n, channels = _batch_and_channels(x.shape, last)
    out_size = _adaptive_output_size(output_size, in_size)
    height_axis, width_axis = _axes(last)
    kernel = _tiling_kernel(in_size, out_size)
    at_once = profile_for(x).gather_max_pool if _gather is None else as_bool(_gather, "_gather")
    if kernel is not None:
        out, pooled = max_pool2d_forward(x, kernel, data_format=data_format, _gather=at_once)
        return out, AdaptiveMaxPool2dCache(None, None, None, None, pooled, tuple(x.shape), x.dtype, last)
    rows, cols = (adaptive_windows(size, out) for size, out in zip(in_size, out_size))
    if 0 in out_size:
        shape = _image_shape(n, channels, out_size, last)
        empty = xp.zeros(shape, dtype=xp.int64, device=device)
        return xp.zeros(shape, dtype=x.dtype, device=device), AdaptiveMaxPool2dCache(
            empty, None, rows, cols, None, tuple(x.shape), x.dtype, last)
    index = _position_dtype(xp, max(in_size))
    # Along each row first, then across the rows: a window's first maximum in row-major order is the first row
    # maximum that beats the earlier rows' (NaN: the last NaN of the last row holding one).
    column_positions = per_tap(xp, cols.flat_index, cols, width_axis, dtype=index, device=device)
    if at_once:
        row_maxima, chosen_columns = _chosen_at_once(
            xp, gathered(xp, x, cols, width_axis), column_positions, in_size[1], width_axis)
    else:
        row_maxima, chosen_columns = _first_maximum(xp, taps(gathered(xp, x, cols, width_axis), width_axis),
                                                    [column_positions[k, ...] for k in range(cols.width)])
    # Across the rows, each tap's candidate is the flat position of its row's maximum: row * W + column.
    row_positions = per_tap(xp, rows.flat_index, rows, height_axis, dtype=xp.int64, device=device) * in_size[1]
    row_taps = gathered(xp, row_maxima, rows, height_axis)
    if at_once:
        candidates = row_positions + xp.astype(gathered(xp, chosen_columns, rows, height_axis), xp.int64)
        out, flat = _chosen_at_once(xp, row_taps, candidates, in_size[0] * in_size[1], height_axis)
    else:
        column_taps = taps(gathered(xp, chosen_columns, rows, height_axis), height_axis)
        candidates = [row_positions[k, ...] + xp.astype(column, xp.int64) for k, column in enumerate(column_taps)]
        out, flat = _first_maximum(xp, taps(row_taps, height_axis), candidates)
    return out, AdaptiveMaxPool2dCache(flat, chosen_columns, rows, cols, None, tuple(x.shape), x.dtype, last)


@accepts_unbatched_backward
@half_in_float32_backward
def adaptive_max_pool2d_backward(dout: Array, cache: AdaptiveMaxPool2dCache, *, _gather: bool | None = None) -> Array:
    """Gradient of :func:`adaptive_max_pool2d_forward`: each ``dout`` element goes to its window's chosen input
    element; overlapping windows that chose one element add up. First back across the rows (row ``r`` of output
    column ``j`` receives ``dout[i, j]`` from every window ``i`` that chose it), then along them to the chosen
    columns: tap ``k`` of every window gets the gradient where the window chose it, and the taps are added back
    to the positions they read through the transposed windows (no scatter; a non-finite ``dout`` reaches only the
    chosen element).

    Parameters
    ----------
    dout : array
        Gradient of the loss with respect to the forward output: its shape (NCHW or NHWC, as x), dtype, library
        and device.
    cache : AdaptiveMaxPool2dCache
        What :func:`adaptive_max_pool2d_forward` returned.

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
    >>> x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    >>> out, cache = F.adaptive_max_pool2d_forward(x, 2)      # overlapping windows
    >>> F.adaptive_max_pool2d_backward(np.ones_like(out), cache)[0, 0]
    array([[0., 0., 0.],
           [0., 1., 1.],
           [0., 1., 1.]], dtype=float32)
    """
    check_cache(cache, AdaptiveMaxPool2dCache, "adaptive_max_pool2d")
    flat, chosen_columns, rows, cols, pooled, x_shape, dtype, last = cache
    if pooled is not None:
        return max_pool2d_backward(dout, pooled, _gather=_gather)
    xp, device = check_upstream(dout, flat.shape, flat, dtype)
    if chosen_columns is None:  # an empty output
        return xp.zeros(x_shape, dtype=dout.dtype, device=device)
    at_once = profile_for(dout).gather_max_pool if _gather is None else as_bool(_gather, "_gather")
    height_axis, width_axis = _axes(last)
    width = x_shape[2] if last else x_shape[3]
    to_rows = _routed_back(xp, dout, flat // width, rows, height_axis, at_once=at_once)
    return _routed_back(xp, to_rows, chosen_columns, cols, width_axis, at_once=at_once)


def _batch_and_channels(shape, channels_last: bool) -> tuple[int, int]:
    return (shape[0], shape[3]) if channels_last else (shape[0], shape[1])


def _check_adaptive_input(x, data_format: str) -> tuple[Any, Any, bool]:
    xp, device, last = _check_input(x, data_format)
    if min(_spatial_size(x, last)) < 1:
        raise ValueError(
            f"x must have a non-empty height and width, got shape {tuple(x.shape)} (data_format={data_format!r})"
        )
    return xp, device, last


def adaptive_output_size(output_size) -> tuple:
    """Check an adaptive pooling's ``output_size`` (also for the layers' constructors): an (out_h, out_w) pair of
    ints >= 0 or None (None keeps the input's size on that axis)."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or a pair (out_h, out_w), got {output_size!r}")
        pair = output_size
    elif output_size is None:
        raise TypeError("output_size must be an int or a pair (out_h, out_w) whose items may be None (None keeps "
                        "that axis); a bare None is not accepted (as PyTorch), got None")
    else:
        pair = (output_size, output_size)
    return tuple(None if v is None else as_int(v, "output_size", minimum=0) for v in pair)


def _adaptive_output_size(output_size, in_size) -> tuple[int, int]:
    return tuple(n if v is None else v for v, n in zip(adaptive_output_size(output_size), in_size))


def _tiling_kernel(in_size, out_size) -> tuple[int, int] | None:
    """The kernel (= stride) of windows that tile x exactly, when every axis divides evenly and the kernel is
    within pooling's limit."""
    if 0 in out_size or any(n % out for n, out in zip(in_size, out_size)):
        return None
    kernel = tuple(n // out for n, out in zip(in_size, out_size))
    return kernel if kernel[0] * kernel[1] <= MAX_KERNEL_ELEMENTS else None


def _window_sizes(xp, rows, cols, dtype, device, channels_last: bool = False):
    """(out_h, out_w) ((out_h, out_w, 1) for NHWC): the number of elements of every window, in ``dtype``; made once
    per device."""

    def build():
        counts = [xp.asarray([len(t) for t in m.taps], dtype=dtype, device=device)  # host: once per shape
                  for m in (rows, cols)]
        sizes = counts[0][:, None] * counts[1][None, :]
        return sizes[..., None] if channels_last else sizes

    return on_device(xp, device, ("adaptive window sizes", rows, cols, str(dtype), channels_last), build)


def _window_sums(xp, x, rows, cols, channels_last: bool = False):
    """The sums over the taps of ``rows`` (along the height) and ``cols`` (along the width) of x, one axis after the
    other: first the order that carries fewer elements, gathers along the width (in NCHW the last axis, several
    times slower per element on NumPy) counted twice. The order changes the rounding only."""
    (height, width), out_h, out_w = _spatial_size(x, channels_last), rows.out_size, cols.out_size
    height_axis, width_axis = _axes(channels_last)
    if out_h * width + 2 * out_h * out_w <= 2 * height * out_w + out_h * out_w:
        return combined(xp, combined(xp, x, rows, height_axis), cols, width_axis)
    return combined(xp, combined(xp, x, cols, width_axis), rows, height_axis)


def _first_maximum(xp, values, positions, *, first=None, nan_free: bool = False):
    """The running maximum of ``values`` (same-shaped arrays, one per tap or window slice, in order) and the
    position it came from (``positions``: one integer array or int per value, broadcasting against the values and
    never decreasing from one to the next), by PyTorch's rule: take a value strictly greater than the maximum so
    far, or a NaN. So the first maximum wins, or the last NaN where there is one; a repeated last tap changes
    neither. Max pooling and adaptive max pooling both choose by this one function.

    ``first`` (max pooling's ``Winner`` codes of each window's first element inside x): the first value is
    taken only where its position is not below ``first``, and nothing where ``first`` is NONE (padding never wins;
    a window of ``-inf`` chooses its first element inside x). ``nan_free``: the values are known to hold no NaN,
    so the NaN test is skipped.

    Written without ``where`` (a slow select on NumPy): ``maximum`` propagates NaN as the rule does, and the
    positions never decrease, so taking value k is ``maximum(chosen, take * positions[k])``."""
    best = chosen = None
    steps = 0
    for value, position in zip(values, positions, strict=True):
        steps += 1
        if best is None:
            best = value
            if first is None:
                chosen = xp.broadcast_to(position, tuple(value.shape))
            else:
                at_least = xp.clip(first, min=position) if isinstance(position, int) else xp.maximum(first, position)
                chosen = at_least * xp.astype(first != Winner.NONE, xp.int16)
            continue
        take = value > best if nan_free else (value > best) | xp.isnan(value)
        best = xp.maximum(best, value)
        chosen = xp.maximum(chosen, xp.astype(take, chosen.dtype) * position)
    chosen = xp.broadcast_to(chosen, tuple(best.shape))
    return best, xp.asarray(chosen, copy=True) if steps == 1 else chosen


def _routed_back(xp, grad, chosen, axis_map, axis: int, *, at_once: bool = False):
    """Adjoint of taking the chosen tap along ``axis`` (-1 or -2): position ``r`` receives the gradient of every
    output that chose it. ``grad``, ``chosen`` (the chosen positions): (..., out_size, ...) along ``axis``.

    Tap ``k`` of every output gets ``grad`` where the output chose that tap, 0 elsewhere (a product with the 0/1
    mask where grad is known to be finite, else a ``where``: ``inf * 0`` would be NaN); the taps are then added back
    to the positions they read (:attr:`xpcnn._axis_maps.AxisMap.tap_adjoint`). ``at_once``: every tap by one
    comparison and one ``where``, laid out tap-major as the taps one by one are."""
    device, fast = device_of(grad), known_finite(xp, grad)
    positions = per_tap(xp, axis_map.tap_positions, axis_map, axis, dtype=chosen.dtype, device=device)
    if at_once:
        tap = tap_axis(axis)
        mask = xp.expand_dims(chosen, axis=tap) == positions  # (..., width, out_size, ...)
        parts = xp.where(mask, xp.expand_dims(grad, axis=tap), 0.0)
        shape, t = list(parts.shape), parts.ndim + tap
        shape[t:t + 2] = [shape[t] * shape[t + 1]]
        zero_shape = list(grad.shape)
        zero_shape[axis] = 1
        parts = [xp.reshape(parts, tuple(shape)), xp.zeros(tuple(zero_shape), dtype=grad.dtype, device=device)]
        return combined(xp, xp.concat(parts, axis=axis), axis_map.tap_adjoint, axis)
    parts = []
    for k in range(axis_map.width):
        mask = chosen == positions[k, ...]
        parts.append(grad * xp.astype(mask, grad.dtype) if fast else xp.where(mask, grad, 0.0))
    zero_shape = list(grad.shape)
    zero_shape[axis] = 1
    parts.append(xp.zeros(tuple(zero_shape), dtype=grad.dtype, device=device))
    return combined(xp, xp.concat(parts, axis=axis), axis_map.tap_adjoint, axis)


def _chosen_at_once(xp, gathered_taps, positions, bound: int, axis: int):
    """:func:`_first_maximum` over all taps of :func:`xpcnn._axis_maps.gathered`'s result at once: the maximum
    (one ``max`` over the tap axis) and the position it came from. ``positions`` (below ``bound``, never decreasing
    from one tap to the next, equal for a repeated last tap) broadcasts against the taps. Each tap scores
    ``2 * bound + position`` where it is NaN, ``bound - position`` where it equals the maximum, 0 elsewhere: the
    largest score is the last NaN or else the first maximum, as :func:`_first_maximum` chooses (a repeated tap has
    its original's position). The positions come back in ``positions``' dtype."""
    tap = tap_axis(axis)
    best = max_over(xp, gathered_taps, axis=tap)
    wide = xp.astype(positions, xp.int64, copy=False)
    scores = xp.where(xp.isnan(gathered_taps), wide + 2 * bound,
                      xp.where(gathered_taps == xp.expand_dims(best, axis=tap), bound - wide, 0))
    score = xp.max(scores, axis=tap)  # integers: no NaN to drop
    chosen = xp.where(score > bound, score - 2 * bound, bound - score)
    return best, xp.astype(chosen, positions.dtype)


def _position_dtype(xp, size: int):
    """The smallest of int16 and int32 that holds positions below ``size``."""
    return xp.int16 if size < 2**15 else xp.int32

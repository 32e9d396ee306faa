"""2-D max and average pooling and their backward passes, with PyTorch's semantics.

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
to its first in-bounds element, as PyTorch. The chosen positions are kept in ``cache.indices`` with the layout of
PyTorch's ``return_indices``: a flat index into each unpadded ``H * W`` plane.

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
from typing import Any, NamedTuple

from array_api_compat import device as device_of

from .._axis_maps import adaptive_windows, combined, gathered, per_tap, taps
from .._dispatch import known_finite
from .._precision import half_in_float32, half_in_float32_backward
from .._validation import (
    as_bool,
    as_int,
    check_cache,
    check_floating,
    check_ndim,
    check_upstream,
    int_pair,
    namespace_and_device,
)
from .._windows import (
    WindowGeometry,
    batch_pieces,
    by_axis,
    concat_pieces,
    crop,
    pad,
    samples_per_piece,
    scatter_windows,
    window_geometry,
    windows,
)
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


class MaxPool2dCache(NamedTuple):
    """offsets: (N, C, out_h, out_w) int16, the kernel offset ``i * kw + j`` that won each window (-1: none, for a
    window entirely in the padding); ``indices`` gives them as PyTorch's ``return_indices``.
    column_choices: (N, C, Hp, out_w) int16, ``j + 1`` of the winner along each padded row's column window (the
    first pass), by which the backward pass routes a row's gradient to its column."""

    offsets: Any
    column_choices: Any  # None: the forward pass walked the kh * kw slices directly
    geometry: WindowGeometry
    dtype: Any
    workspace_limit: Any

    @property
    def indices(self):
        """(N, C, out_h, out_w) int64: the flat position ``row * W + col`` in x of each output's maximum."""
        xp, device = namespace_and_device(offsets=self.offsets)
        g, offsets = self.geometry, xp.astype(self.offsets, xp.int64)
        rows = xp.asarray(_window_starts(g, 0), dtype=xp.int64, device=device)[:, None]
        cols = xp.asarray(_window_starts(g, 1), dtype=xp.int64, device=device)[None, :]
        kw, (dh, dw) = g.kernel[1], g.dilation
        flat = (rows + (offsets // kw) * dh) * g.in_size[1] + cols + (offsets % kw) * dw
        return xp.where(offsets >= 0, flat, _first_in_bounds_index(xp, g, device))


class AvgPool2dCache(NamedTuple):
    """divisor: (out_h, out_w) array in x's dtype, the count each window's sum was divided by."""

    divisor: Any
    geometry: WindowGeometry
    x_shape: tuple
    workspace_limit: Any


@half_in_float32
def max_pool2d_forward(x, kernel_size, *, stride=None, padding=0, dilation=1, ceil_mode=False, workspace_limit=None):
    """Max pooling as ``torch.nn.functional.max_pool2d``. x: (N, C, H, W); stride defaults to kernel_size.

    workspace_limit: bytes of temporaries per batch piece (default: the global setting of :mod:`xpcnn.config`).
    Returns ``(out, cache)``; out: (N, C, out_h, out_w); ``cache.indices`` holds the argmax positions.
    """
    xp, device = _check_input(x)
    geometry = _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    first_row, first_col = (_first_in_bounds_step(xp, geometry, axis, device) for axis in (0, 1))
    first = xp.where((first_row >= 0) & (first_col >= 0), first_row * geometry.kernel[1] + first_col + 1, 0)
    separable = _separable_is_cheaper(geometry)
    along_rows, across_rows = by_axis(geometry)
    pieces = []
    for part in _pool_pieces(xp, x, geometry, workspace_limit):
        x_padded = pad(xp, x[part, ...], geometry, -math.inf)
        if not separable:
            out, chosen = _running_maximum(xp, x_padded, geometry, first)
            pieces.append((out, chosen - 1))
            continue
        # Along each padded row first (column choice j + 1), then across the rows: a window's first maximum in
        # row-major order is the first row maximum that beats the earlier rows' (NaN: the last NaN of the last
        # row holding one), as the scan over all kh * kw elements finds it.
        row_maxima, column_choices = _running_maximum(xp, x_padded, along_rows, first_col + 1)
        candidates = (
            column_choices[..., across_rows.slices(i, 0)[0], :] + i * geometry.kernel[1]
            for i, _ in across_rows.offsets()
        )
        out, chosen = _running_maximum(xp, row_maxima, across_rows, first, candidates)
        pieces.append((out, chosen - 1, column_choices))
    out, offsets, *column_choices = (concat_pieces(xp, list(arrays)) for arrays in zip(*pieces))
    column_choices = column_choices[0] if column_choices else None
    return out, MaxPool2dCache(offsets, column_choices, geometry, x.dtype, workspace_limit)


def _running_maximum(xp, x, geometry: WindowGeometry, first, candidates=None):
    """Maxima of the windows of ``geometry`` over ``x`` (already padded) and the choice of each: ``k + 1`` for
    the k-th slice (or ``candidates``' k-th array), ``first`` where nothing beats ``-inf`` (0: no element in
    bounds). PyTorch's rule: in order, take an element strictly greater than the maximum so far, or a NaN.

    Written without ``where`` (a slow, branchy select on NumPy): ``maximum`` propagates NaN as the rule does, and
    the choices grow with k, so taking the k-th is ``maximum(chosen, take * candidate_k)``. The first slice is
    taken unless it lies in the padding (then its candidate is below ``first``) or the window has no element
    in bounds.
    """
    out, chosen = None, None
    candidates = candidates if candidates is not None else (k + 1 for k in range(len(geometry.offsets())))
    for (_, _, window), candidate in zip(windows(x, geometry), candidates, strict=True):
        window = xp.asarray(window, copy=True)  # one strided read; the comparisons then run on contiguous memory
        if out is None:
            out, chosen = window, xp.maximum(first, candidate) * xp.astype(first > 0, xp.int16)
            continue
        take = xp.astype((window > out) | xp.isnan(window), xp.int16)
        out = xp.maximum(out, window)
        chosen = xp.maximum(chosen, take * candidate)
    return out, xp.broadcast_to(chosen, out.shape)


@half_in_float32_backward
def max_pool2d_backward(dout, cache: MaxPool2dCache):
    """Gradient of :func:`max_pool2d_forward`: each ``dout`` element goes to its window's chosen input element
    (after a separable forward pass: first to the chosen row of the first pass's result, then along that row to
    the chosen column, piece by piece so that the intermediate stays in cache)."""
    check_cache(cache, MaxPool2dCache, "max_pool2d")
    offsets, column_choices, geometry, dtype, limit = cache
    n, channels = offsets.shape[:2]
    xp, device = check_upstream(dout, offsets.shape, offsets, dtype)
    if column_choices is None:
        parts = _routed(xp, dout, offsets + 1, geometry)
        return scatter_windows(xp, parts, geometry, (n, channels), dtype=dout.dtype, device=device)
    along_rows, across_rows = by_axis(geometry)
    row_choices = offsets // geometry.kernel[1] + 1  # 0: none
    pieces = []
    for part in _pool_pieces(xp, dout, geometry, limit):
        lead = (len(range(n)[part]), channels)
        to_rows = _routed(xp, dout[part, ...], row_choices[part, ...], across_rows)
        to_rows = scatter_windows(xp, to_rows, across_rows, lead, dtype=dout.dtype, device=device)
        to_columns = _routed(xp, to_rows, column_choices[part, ...], along_rows)
        grad = scatter_windows(xp, to_columns, along_rows, lead, dtype=dout.dtype, device=device)
        pieces.append(crop(grad, geometry))
    return concat_pieces(xp, pieces)


def _separable_is_cheaper(geometry: WindowGeometry) -> bool:
    """Whether the two passes of :func:`by_axis` walk fewer elements than the ``kh * kw`` slices (3x3 windows
    with stride 1: 6336 against 9216 per 32x32 plane; 2x2 windows with stride 2: 1536 against 1024)."""
    (kh, kw), (padded_h, _), (out_h, out_w) = geometry.kernel, geometry.padded_size, geometry.out_size
    return kw * padded_h * out_w + kh * out_h * out_w < kh * kw * out_h * out_w


def _routed(xp, grad, choices, geometry: WindowGeometry):
    """For each slice k of ``geometry``: ``grad`` where ``choices == k + 1``, else 0.

    Where grad is known to be finite (:func:`xpcnn._dispatch.known_finite`: NumPy, checked for free) a product
    with the 0/1 mask, several times faster on NumPy than a ``where`` on a random mask. Otherwise the ``where``:
    a non-finite grad must reach only the chosen element (``inf * 0`` would put NaN on the others).
    """
    fast = known_finite(xp, grad)
    for k in range(len(geometry.offsets())):
        chosen = choices == k + 1
        yield grad * xp.astype(chosen, grad.dtype) if fast else xp.where(chosen, grad, 0.0)


@half_in_float32
def avg_pool2d_forward(
    x, kernel_size, *, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None,
    workspace_limit=None,
):
    """Average pooling as ``torch.nn.functional.avg_pool2d``. x: (N, C, H, W); stride defaults to kernel_size.

    workspace_limit: bytes of temporaries per batch piece (default: the global setting of :mod:`xpcnn.config`).
    Returns ``(out, cache)``; out: (N, C, out_h, out_w).
    """
    xp, device = _check_input(x)
    geometry = _pool_geometry(x, kernel_size, stride, padding, 1, ceil_mode)
    count_include_pad, divisor_override = avg_pool_options(count_include_pad, divisor_override)
    first, second = by_axis(geometry, rows_first=False)
    pieces = _pool_pieces(xp, x, geometry, workspace_limit)
    total = concat_pieces(xp, [_sum(_sum(pad(xp, x[part, ...], geometry, 0.0), first), second) for part in pieces])
    divisor = _divisor(xp, geometry, count_include_pad, divisor_override, x.dtype, device)
    return total / divisor, AvgPool2dCache(divisor, geometry, tuple(x.shape), workspace_limit)


@half_in_float32_backward
def avg_pool2d_backward(dout, cache: AvgPool2dCache):
    """Gradient of :func:`avg_pool2d_forward`: each ``dout / divisor`` is spread evenly over its window (back
    across the rows, then along them, piece by piece so that the intermediate stays in cache)."""
    check_cache(cache, AvgPool2dCache, "avg_pool2d")
    divisor, geometry, x_shape, limit = cache
    lead = tuple(x_shape[:2])
    xp, device = check_upstream(dout, (*lead, *geometry.out_size), divisor, divisor.dtype)
    share = dout / divisor
    if _tiles_input(geometry):
        return _from_tiles(xp, share, geometry, device)
    first, second = by_axis(geometry, rows_first=False)
    pieces = []
    for part in _pool_pieces(xp, dout, geometry, limit):
        piece_lead = (len(range(lead[0])[part]), lead[1])
        like = dict(dtype=dout.dtype, device=device)
        sums = scatter_windows(xp, _repeated(share[part, ...], second), second, piece_lead, **like)
        grad = scatter_windows(xp, _repeated(sums, first), first, piece_lead, **like)
        pieces.append(crop(grad, geometry))
    return concat_pieces(xp, pieces)


def _sum(x, geometry: WindowGeometry):
    """The sum over each window of ``geometry``, slice by slice."""
    total = None
    for _, _, window in windows(x, geometry):
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


def _from_tiles(xp, share, geometry: WindowGeometry, device):
    """Each (N, C, out_h, out_w) value repeated over its tile; zeros for the rows and columns no window covers."""
    (out_h, out_w), (kh, kw), (height, width) = geometry.out_size, geometry.kernel, geometry.in_size
    lead = tuple(share.shape[:2])
    grad = xp.repeat(xp.repeat(share, kh, axis=2), kw, axis=3)
    if out_w * kw < width:
        grad = xp.concat([grad, xp.zeros((*lead, out_h * kh, width - out_w * kw), dtype=share.dtype, device=device)], axis=-1)
    if out_h * kh < height:
        grad = xp.concat([grad, xp.zeros((*lead, height - out_h * kh, width), dtype=share.dtype, device=device)], axis=-2)
    return grad


def _pool_pieces(xp, x, geometry: WindowGeometry, workspace_limit) -> list[slice]:
    """Batch pieces whose padded input and per-offset temporaries (about six output-sized arrays) fit the
    workspace limit. Small pieces stay in the CPU's caches while the kernel offsets are walked."""
    (padded_h, padded_w), (out_h, out_w) = geometry.padded_size, geometry.out_size
    per_sample = x.shape[1] * (padded_h * padded_w + 6 * out_h * out_w) * xp.finfo(x.dtype).bits // 8
    return batch_pieces(x.shape[0], samples_per_piece(per_sample, resolve_workspace_limit(workspace_limit, x)))


def _check_input(x):
    xp, device = namespace_and_device(x=x)
    check_floating(xp, x, "x")
    check_ndim(x, "x", 4, "(N, C, H, W)")
    return xp, device


def _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode) -> WindowGeometry:
    kernel, stride, pads, dilation, ceil_mode = pool_options(kernel_size, stride, padding, dilation, ceil_mode)
    return window_geometry(tuple(x.shape[2:]), kernel, stride, dilation, tuple((p, p) for p in pads), ceil_mode=ceil_mode)


def pool_options(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The pooling arguments checked and normalised: ``(kernel, stride, padding, dilation, ceil_mode)``, pairs as
    (height, width) tuples. The layers call it when they are built, the ops on every call (same messages)."""
    kernel = int_pair(kernel_size, "kernel_size", minimum=1)
    if kernel[0] * kernel[1] > 2**15 - 1:
        raise ValueError(f"kernel_size may have at most 32767 elements (int16 offsets), got {kernel_size!r}")
    stride = kernel if stride is None else int_pair(stride, "stride", minimum=1)
    dilation = int_pair(dilation, "dilation", minimum=1)
    pads = int_pair(padding, "padding", minimum=0)
    if any(p > k // 2 for p, k in zip(pads, kernel)):
        raise ValueError(
            f"padding must be at most half the kernel size ({kernel[0] // 2}, {kernel[1] // 2}), "
            f"got padding {padding!r} with kernel_size {kernel_size!r}"
        )
    return kernel, stride, pads, dilation, as_bool(ceil_mode, "ceil_mode")


def avg_pool_options(count_include_pad=True, divisor_override=None) -> tuple[bool, int | None]:
    """``count_include_pad`` and ``divisor_override`` checked (a bool; None or a positive int)."""
    count_include_pad = as_bool(count_include_pad, "count_include_pad")
    if divisor_override is not None:
        divisor_override = as_int(divisor_override, "divisor_override")
        if divisor_override <= 0:
            raise ValueError(f"divisor_override must be a positive int, got {divisor_override}")
    return count_include_pad, divisor_override


def _window_starts(geometry: WindowGeometry, axis: int) -> list[int]:
    """Unpadded coordinate of the first element of every window along one axis (negative inside the padding)."""
    before = geometry.padding[axis][0]
    return [o * geometry.stride[axis] - before for o in range(geometry.out_size[axis])]


def _first_steps(geometry: WindowGeometry, axis: int) -> list[int]:
    """For every window along one axis, the kernel steps from its start to its first position past the top/left
    padding (PyTorch's ``while start < 0: start += dilation``); that position may still lie past x's end."""
    d = geometry.dilation[axis]
    return [-(-max(0, -start) // d) for start in _window_starts(geometry, axis)]


def _first_in_bounds_index(xp, geometry: WindowGeometry, device):
    """(out_h, out_w) int64: PyTorch's index for a window where nothing beats ``-inf``: the flat position of its
    first element past the padding (outside the plane when the window lies entirely in the padding)."""
    rows, cols = (
        xp.asarray([start + step * geometry.dilation[axis]
                    for start, step in zip(_window_starts(geometry, axis), _first_steps(geometry, axis))],
                   dtype=xp.int64, device=device)
        for axis in (0, 1)
    )
    return rows[:, None] * geometry.in_size[1] + cols[None, :]


def _first_in_bounds_step(xp, geometry: WindowGeometry, axis: int, device):
    """(out_h, 1) or (1, out_w) int16: along one axis, the kernel step of each window's first element inside x,
    -1 when there is none (the window lies entirely in the padding)."""
    d, k, size = geometry.dilation[axis], geometry.kernel[axis], geometry.in_size[axis]
    starts, steps = _window_starts(geometry, axis), _first_steps(geometry, axis)
    firsts = [step if step < k and start + step * d < size else -1 for start, step in zip(starts, steps)]
    firsts = xp.asarray(firsts, dtype=xp.int16, device=device)
    return firsts[:, None] if axis == 0 else firsts[None, :]


def _divisor(xp, geometry: WindowGeometry, count_include_pad, divisor_override, dtype, device):
    """(out_h, out_w) divisors of the window sums, computed per axis as PyTorch does."""
    if divisor_override is not None:
        return xp.full(geometry.out_size, divisor_override, dtype=dtype, device=device)
    counts = []
    for axis in (0, 1):
        size, kernel, before = geometry.in_size[axis], geometry.kernel[axis], geometry.padding[axis][0]
        axis_counts = []
        for start in _window_starts(geometry, axis):
            end = min(start + kernel, size + before)
            if not count_include_pad:
                start, end = max(start, 0), min(end, size)
            axis_counts.append(end - start)
        counts.append(xp.asarray(axis_counts, dtype=dtype, device=device))
    return counts[0][:, None] * counts[1][None, :]


# -- adaptive pooling -------------------------------------------------------------------------------------------------

MAX_KERNEL_ELEMENTS = 2**15 - 1
"""Pooling's kernel limit (max_pool2d's int16 offsets): larger tiling windows take the gathered path."""


class AdaptiveAvgPool2dCache(NamedTuple):
    """divisor: (out_h, out_w) array in x's dtype, the size of each window (the sum is divided by it);
    rows, cols: the windows along the height and the width (None for the global mean: one window);
    pooled: avg_pool2d's cache when the windows tile x (``H % out_h == W % out_w == 0``), else None."""

    divisor: Any
    rows: Any
    cols: Any
    pooled: Any
    x_shape: tuple


class AdaptiveMaxPool2dCache(NamedTuple):
    """flat_indices: (N, C, out_h, out_w) int64, the flat position ``row * W + col`` in x of each maximum;
    chosen_columns: (N, C, H, out_w) int16 (int32 for planes wider than 32767), the column of each row's window
    maximum (the first pass, along the rows); rows, cols: the windows. pooled: max_pool2d's cache when the windows
    tile x (then every other array is None)."""

    flat_indices: Any
    chosen_columns: Any
    rows: Any
    cols: Any
    pooled: Any
    x_shape: tuple
    dtype: Any

    @property
    def indices(self):
        """(N, C, out_h, out_w) int64: the flat position ``row * W + col`` in x of each output's maximum, as
        PyTorch's ``return_indices``."""
        return self.pooled.indices if self.pooled is not None else self.flat_indices


@half_in_float32
def adaptive_avg_pool2d_forward(x, output_size):
    """Adaptive average pooling as ``torch.nn.functional.adaptive_avg_pool2d``.

    Output ``(i, j)`` is the mean of rows ``[floor(i * H / out_h), ceil((i + 1) * H / out_h))`` and likewise columns
    (windows of at most two sizes per axis, neighbours overlapping by at most one row or column; an output larger
    than x repeats rows and columns). ``output_size=1`` is the global mean over H and W; windows that tile x are
    avg_pool2d's, with kernel = stride = ``(H // out_h, W // out_w)``.

    Parameters
    ----------
    x : array, (N, C, H, W), real floating; H and W at least 1.
    output_size : int or pair
        (out_h, out_w), each an int >= 0 or None (None keeps that axis's size).

    Returns
    -------
    out : array, (N, C, out_h, out_w)
    cache : AdaptiveAvgPool2dCache

    Raises
    ------
    ValueError
        x not 4-D, or with an empty height or width; an output size below 0; a pair of the wrong length.
    TypeError
        x not a floating array; ``output_size`` not an int, None or a pair of them.
    """
    xp, device = _check_adaptive_input(x)
    in_size = tuple(x.shape[2:])
    out_size = _adaptive_output_size(output_size, in_size)
    if out_size == (1, 1):  # global average pooling: one mean per plane
        divisor = xp.full((1, 1), in_size[0] * in_size[1], dtype=x.dtype, device=device)
        return xp.mean(x, axis=(2, 3), keepdims=True), AdaptiveAvgPool2dCache(divisor, None, None, None, tuple(x.shape))
    kernel = _tiling_kernel(in_size, out_size)
    if kernel is not None:
        out, pooled = avg_pool2d_forward(x, kernel)
        return out, AdaptiveAvgPool2dCache(pooled.divisor, None, None, pooled, tuple(x.shape))
    rows, cols = (adaptive_windows(n, out) for n, out in zip(in_size, out_size))
    divisor = _window_sizes(xp, rows, cols, x.dtype, device)
    cache = AdaptiveAvgPool2dCache(divisor, rows, cols, None, tuple(x.shape))
    if 0 in out_size:
        return xp.zeros((*x.shape[:2], *out_size), dtype=x.dtype, device=device), cache
    return _window_sums(xp, x, rows, cols) / divisor, cache


@half_in_float32_backward
def adaptive_avg_pool2d_backward(dout, cache: AdaptiveAvgPool2dCache):
    """Gradient of :func:`adaptive_avg_pool2d_forward`: ``dx[r, c] = sum of dout[i, j] / divisor[i, j]`` over the
    windows ``(i, j)`` that hold ``(r, c)`` (through the transposed windows: no scatter).

    dout: (N, C, out_h, out_w) in the forward input's dtype, library and device. Returns dx: (N, C, H, W).
    """
    check_cache(cache, AdaptiveAvgPool2dCache, "adaptive_avg_pool2d")
    divisor, rows, cols, pooled, x_shape = cache
    if pooled is not None:
        return avg_pool2d_backward(dout, pooled)
    out_size = tuple(divisor.shape) if rows is None else (rows.out_size, cols.out_size)
    xp, device = check_upstream(dout, (*x_shape[:2], *out_size), divisor, divisor.dtype)
    share = dout / divisor
    if rows is None:  # the global mean: each plane's share everywhere
        return xp.asarray(xp.broadcast_to(share, x_shape), copy=True)
    if 0 in out_size:
        return xp.zeros(x_shape, dtype=dout.dtype, device=device)
    return _window_sums(xp, share, rows.transposed, cols.transposed)


@half_in_float32
def adaptive_max_pool2d_forward(x, output_size):
    """Adaptive max pooling as ``torch.nn.functional.adaptive_max_pool2d`` (windows as
    :func:`adaptive_avg_pool2d_forward`), with max_pool2d's rules: the gradient goes to the first maximum of each
    window in row-major order, NaN propagates (its gradient and index go to the last NaN of the window), and
    ``cache.indices`` holds the flat positions ``row * W + col`` as PyTorch's ``return_indices``.

    Windows that tile x are max_pool2d's (kernel = stride = ``(H // out_h, W // out_w)``). Other windows are
    gathered along the rows (one ``take``; a running maximum over the taps gives each row's window maximum and its
    first-maximum column), then across them, as max_pool2d's separable passes.

    Parameters
    ----------
    x : array, (N, C, H, W), real floating; H and W at least 1.
    output_size : int or pair
        (out_h, out_w), each an int >= 0 or None (None keeps that axis's size).

    Returns
    -------
    out : array, (N, C, out_h, out_w)
    cache : AdaptiveMaxPool2dCache

    Raises
    ------
    ValueError, TypeError
        As :func:`adaptive_avg_pool2d_forward`.
    """
    xp, device = _check_adaptive_input(x)
    in_size, lead = tuple(x.shape[2:]), tuple(x.shape[:2])
    out_size = _adaptive_output_size(output_size, in_size)
    kernel = _tiling_kernel(in_size, out_size)
    if kernel is not None:
        out, pooled = max_pool2d_forward(x, kernel)
        return out, AdaptiveMaxPool2dCache(None, None, None, None, pooled, tuple(x.shape), x.dtype)
    rows, cols = (adaptive_windows(n, out) for n, out in zip(in_size, out_size))
    if 0 in out_size:
        empty = xp.zeros((*lead, *out_size), dtype=xp.int64, device=device)
        return xp.zeros((*lead, *out_size), dtype=x.dtype, device=device), AdaptiveMaxPool2dCache(
            empty, None, rows, cols, None, tuple(x.shape), x.dtype)
    index = _position_dtype(xp, max(in_size))
    # Along each row first, then across the rows: a window's first maximum in row-major order is the first row
    # maximum that beats the earlier rows' (NaN: the last NaN of the last row holding one).
    column_positions = per_tap(xp, cols.flat_index, cols, -1, dtype=index, device=device)
    row_maxima, chosen_columns = _first_maximum(
        xp, taps(gathered(xp, x, cols, -1), -1), [column_positions[k, ...] for k in range(cols.width)]
    )
    # Across the rows, each tap's candidate is the flat position of its row's maximum: row * W + column.
    row_positions = per_tap(xp, rows.flat_index, rows, -2, dtype=xp.int64, device=device) * in_size[1]
    column_taps = taps(gathered(xp, chosen_columns, rows, -2), -2)
    candidates = [row_positions[k, ...] + xp.astype(column, xp.int64) for k, column in enumerate(column_taps)]
    out, flat = _first_maximum(xp, taps(gathered(xp, row_maxima, rows, -2), -2), candidates)
    return out, AdaptiveMaxPool2dCache(flat, chosen_columns, rows, cols, None, tuple(x.shape), x.dtype)


@half_in_float32_backward
def adaptive_max_pool2d_backward(dout, cache: AdaptiveMaxPool2dCache):
    """Gradient of :func:`adaptive_max_pool2d_forward`: each ``dout`` element goes to its window's chosen input
    element; overlapping windows that chose one element add up. First back across the rows (row ``r`` of output
    column ``j`` receives ``dout[i, j]`` from every window ``i`` that chose it), then along them to the chosen
    columns: tap ``k`` of every window gets the gradient where the window chose it, and the taps are added back
    to the positions they read through the transposed windows (no scatter; a non-finite ``dout`` reaches only the
    chosen element).

    dout: (N, C, out_h, out_w) in the forward input's dtype, library and device. Returns dx: (N, C, H, W).
    """
    check_cache(cache, AdaptiveMaxPool2dCache, "adaptive_max_pool2d")
    flat, chosen_columns, rows, cols, pooled, x_shape, dtype = cache
    if pooled is not None:
        return max_pool2d_backward(dout, pooled)
    xp, device = check_upstream(dout, flat.shape, flat, dtype)
    if chosen_columns is None:  # an empty output
        return xp.zeros(x_shape, dtype=dout.dtype, device=device)
    to_rows = _routed_back(xp, dout, flat // x_shape[3], rows, -2)
    return _routed_back(xp, to_rows, chosen_columns, cols, -1)


def _check_adaptive_input(x):
    xp, device = namespace_and_device(x=x)
    check_floating(xp, x, "x")
    check_ndim(x, "x", 4, "(N, C, H, W)")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"x must have a non-empty height and width, got shape {tuple(x.shape)}")
    return xp, device


def adaptive_output_size(output_size) -> tuple:
    """Check an adaptive pooling's ``output_size`` (also for the layers' constructors): an (out_h, out_w) pair of
    ints >= 0 or None (None keeps the input's size on that axis)."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or a pair (out_h, out_w), got {output_size!r}")
        pair = output_size
    elif output_size is None:
        raise TypeError("output_size must be an int or a pair of ints or None (None keeps that axis), got None")
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


def _window_sizes(xp, rows, cols, dtype, device):
    """(out_h, out_w): the number of elements of every window, in ``dtype``."""
    counts = [xp.asarray([len(t) for t in m.taps], dtype=dtype, device=device) for m in (rows, cols)]
    return counts[0][:, None] * counts[1][None, :]


def _window_sums(xp, x, rows, cols):
    """The sums over the taps of ``rows`` (along the height) and ``cols`` (along the width) of (N, C, H, W) x, one
    axis after the other: first the order that carries fewer elements, gathers along the width (the last axis,
    several times slower per element on NumPy) counted twice. The order changes the rounding only."""
    height, width = x.shape[2:]
    out_h, out_w = rows.out_size, cols.out_size
    if out_h * width + 2 * out_h * out_w <= 2 * height * out_w + out_h * out_w:
        return combined(xp, combined(xp, x, rows, -2), cols, -1)
    return combined(xp, combined(xp, x, cols, -1), rows, -2)


def _first_maximum(xp, values, positions):
    """The running maximum of ``values`` (same-shaped arrays, one per tap, in order) and the position it came
    from (``positions``: one integer array per tap, broadcasting against the values and never decreasing from tap
    to tap), by PyTorch's rule: take a tap strictly greater than the maximum so far, or a NaN. So the first
    maximum wins, or the last NaN where there is one; a repeated last tap changes neither.

    Written without ``where`` (a slow select on NumPy): ``maximum`` propagates NaN as the rule does, and the
    positions never decrease, so taking tap k is ``maximum(chosen, take * positions[k])``."""
    best = values[0]
    chosen = xp.broadcast_to(positions[0], tuple(best.shape))
    for value, position in zip(values[1:], positions[1:]):
        take = xp.astype((value > best) | xp.isnan(value), position.dtype)
        best = xp.maximum(best, value)
        chosen = xp.maximum(chosen, take * position)
    return best, xp.asarray(chosen, copy=True) if len(values) == 1 else chosen


def _routed_back(xp, grad, chosen, axis_map, axis: int):
    """Adjoint of taking the chosen tap along ``axis`` (-1 or -2): position ``r`` receives the gradient of every
    output that chose it. ``grad``, ``chosen`` (the chosen positions): (..., out_size, ...) along ``axis``.

    Tap ``k`` of every output gets ``grad`` where the output chose that tap, 0 elsewhere (a product with the 0/1
    mask where grad is known to be finite, else a ``where``: ``inf * 0`` would be NaN); the taps are then added back
    to the positions they read (:attr:`xpcnn._axis_maps.AxisMap.tap_adjoint`)."""
    device, fast = device_of(grad), known_finite(xp, grad)
    positions = per_tap(xp, axis_map.tap_positions, axis_map, axis, dtype=chosen.dtype, device=device)
    parts = []
    for k in range(axis_map.width):
        mask = chosen == positions[k, ...]
        parts.append(grad * xp.astype(mask, grad.dtype) if fast else xp.where(mask, grad, 0.0))
    zero_shape = list(grad.shape)
    zero_shape[axis] = 1
    parts.append(xp.zeros(tuple(zero_shape), dtype=grad.dtype, device=device))
    return combined(xp, xp.concat(parts, axis=axis), axis_map.tap_adjoint, axis)


def _position_dtype(xp, size: int):
    """The smallest of int16 and int32 that holds positions below ``size``."""
    return xp.int16 if size < 2**15 else xp.int32

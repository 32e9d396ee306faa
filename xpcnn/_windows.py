"""The one window primitive behind convolution and pooling.

A sliding 2-D window over the spatial axes of an array is described by a :class:`WindowGeometry`. The spatial
axes are the last two, ``(..., H, W)`` (NCHW), or with ``channels_last=True`` the two before the last,
``(..., H, W, C)`` (NHWC: each window element is then a contiguous run of C values, and the slices below keep it
whole). :func:`is_channels_last` reads an op's ``data_format`` argument.

* :func:`pad` pads the input (zeros for convolution and average pooling, ``-inf`` for max pooling).
* :func:`windows` yields, for each kernel offset ``(i, j)`` in row-major order, the strided slice of the padded input
  that holds element ``(i, j)`` of every window: an ``(N, C, out_h, out_w)`` array. Pooling reduces them one at a
  time, so no ``kh * kw`` times larger temporary is needed.
* :func:`stacked_windows` gathers all of them at once, ``(N, C, kh * kw, out_h, out_w)`` (im2col, for convolution):
  by stacking the slices, or, for short output rows, by one ``take`` from the flattened planes.
* :func:`scatter_windows` is the accumulating inverse (col2im): it adds one ``(N, C, out_h, out_w)`` array per offset
  back into the slice it came from and crops the padding. Overlapping windows accumulate; within one offset every
  position is distinct, so there is no scatter-add, no integer indexing and no atomics: the result is deterministic
  on every backend. :func:`scatter_wide_rows` does the same for stride 1 from rows padded to the full width, one
  contiguous run per offset.

Only basic strided slices with in-bounds stops and ``take`` along one axis are used, which every array API library
supports.
"""

from __future__ import annotations

import collections
import functools
import math
import operator
import threading
from dataclasses import dataclass
from typing import Any

import array_api_extra as xpx
from array_api_compat import device as device_of
from array_api_compat import is_lazy_array

from ._dispatch import take_nonnegative, updates_in_place
from ._layout import DATA_FORMATS, is_channels_last  # noqa: F401  (re-exported for the ops)
from ._tuning import profile_for
from ._typing import Array  # noqa: F401

_AXES = ("height", "width")



def spatial(rows, cols, *, channels_last: bool = False) -> tuple:
    """The index of ``(rows, cols)`` on the spatial axes: ``(..., rows, cols)`` or ``(..., rows, cols, :)``."""
    return plane_index(rows, cols, channels_last=channels_last)


@dataclass(frozen=True)
class WindowGeometry:
    """Where every window of a 2-D sliding-window op lies. All pairs are (height, width)."""

    in_size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right)) as the op asked for
    out_size: tuple[int, int]

    @property
    def padded_size(self) -> tuple[int, int]:
        """Size of the padded input: the requested padding, extended (ceil_mode) so every slice stays in bounds."""
        return tuple(
            max(n + before + after, (o - 1) * s + d * (k - 1) + 1)
            for n, (before, after), o, s, d, k in zip(
                self.in_size, self.padding, self.out_size, self.stride, self.dilation, self.kernel
            )
        )

    def offsets(self):
        """Kernel offsets ``(i, j)`` in row-major order."""
        kh, kw = self.kernel
        return [(i, j) for i in range(kh) for j in range(kw)]

    def slices(self, i: int, j: int) -> tuple[slice, slice]:
        """Row and column slices of the padded input that hold element ``(i, j)`` of every window."""
        return tuple(
            slice(k * d, k * d + s * (o - 1) + 1, s)
            for k, d, s, o in zip((i, j), self.dilation, self.stride, self.out_size)
        )

    # -- where the windows lie in the unpadded input, along one axis (0: height, 1: width), as PyTorch counts --

    def window_starts(self, axis: int) -> list[int]:
        """The unpadded coordinate of every window's first element (negative inside the top/left padding)."""
        before = self.padding[axis][0]
        return [o * self.stride[axis] - before for o in range(self.out_size[axis])]

    def first_steps(self, axis: int) -> list[int]:
        """For every window, the kernel steps from its start to its first element past the top/left padding
        (PyTorch's ``while start < 0: start += dilation``); that element may still lie past x's end."""
        d = self.dilation[axis]
        return [-(-max(0, -start) // d) for start in self.window_starts(axis)]

    def first_positions(self, axis: int) -> list[int]:
        """The unpadded coordinate of every window's first element past the top/left padding (PyTorch's index of
        a window in which nothing beats ``-inf``; past x's end for a window lying entirely in the padding)."""
        d = self.dilation[axis]
        return [start + step * d for start, step in zip(self.window_starts(axis), self.first_steps(axis))]

    def first_inside_steps(self, axis: int) -> list[int | None]:
        """For every window, the kernel step of its first element inside x; None where it has none (the window
        lies entirely in the padding)."""
        d, k, size = self.dilation[axis], self.kernel[axis], self.in_size[axis]
        return [
            step if step < k and start + step * d < size else None
            for start, step in zip(self.window_starts(axis), self.first_steps(axis))
        ]


def window_geometry(in_size, kernel, stride, dilation, padding, *, ceil_mode=False, kernel_name="kernel_size"):
    """Build the geometry; output size ``floor((H + pads - d(k-1) - 1) / s) + 1`` (or ceil, as PyTorch's pooling).

    ``padding`` is ((top, bottom), (left, right)). Raises a ValueError when the dilated kernel does not fit into the
    padded input. With ``ceil_mode`` the last window is dropped when it would start inside the bottom/right padding.
    """
    out_size = []
    for axis, n, k, s, d, (before, after) in zip(_AXES, in_size, kernel, stride, dilation, padding):
        span = d * (k - 1) + 1
        padded = n + before + after
        out = (padded - span + (s - 1 if ceil_mode else 0)) // s + 1  # floor division, as PyTorch's div_rtn
        if ceil_mode and (out - 1) * s >= n + before:
            out -= 1
        # With ceil_mode a window may overhang the padded input (PyTorch keeps it when it starts inside x or the
        # top/left padding); otherwise, and whenever no window is left, the kernel must fit.
        if padded < span and (out < 1 or not ceil_mode):
            raise ValueError(
                f"{kernel_name} {k} (dilation {d}, span {span}) is larger than the padded input {axis} {padded} "
                f"(input {n}, padding {before} + {after})"
            )
        out_size.append(out)
    return WindowGeometry(tuple(in_size), tuple(kernel), tuple(stride), tuple(dilation), tuple(padding), tuple(out_size))


def pad(xp, x, geometry: WindowGeometry, value: float, *, channels_last: bool = False):
    """Pad the spatial axes of ``x`` (the last two, or the two before the channels with ``channels_last``) with
    ``value`` to ``geometry.padded_size``; ``x`` itself when none is needed.

    Where the library updates arrays in place (:func:`xpcnn._dispatch.updates_in_place`), x is assigned into a
    filled array (one copy). Elsewhere the padded array is concatenated from constant blocks (in x's dtype, on
    x's device): no item assignment, so lazy and immutable arrays pad like any other.
    """
    (top, _), (left, _) = geometry.padding
    height, width = geometry.in_size
    padded_height, padded_width = geometry.padded_size
    bottom, right = padded_height - height - top, padded_width - width - left
    if top == bottom == left == right == 0:
        return x
    (lead, trail), device = _around_the_plane(x, channels_last), device_of(x)
    if updates_in_place(x):
        padded = xp.full((*lead, padded_height, padded_width, *trail), value, dtype=x.dtype, device=device)
        padded[(..., slice(top, top + height), slice(left, left + width), *_whole(trail))] = x
        return padded

    def block(rows, cols):
        return xp.full((*lead, rows, cols, *trail), value, dtype=x.dtype, device=device)

    row_axis, col_axis = (-3, -2) if channels_last else (-2, -1)
    x = xp.concat([block(height, left), x, block(height, right)], axis=col_axis)
    return xp.concat([block(top, padded_width), x, block(bottom, padded_width)], axis=row_axis)


def _around_the_plane(x, channels_last: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of the axes before and after the two spatial ones (NCHW: (N, C) and (); NHWC: (N,) and (C,))."""
    return (tuple(x.shape[:-3]), tuple(x.shape[-1:])) if channels_last else (tuple(x.shape[:-2]), ())


def _whole(trail) -> tuple[slice, ...]:
    """Full slices for the axes after the spatial ones."""
    return (slice(None),) * len(trail)


def plane_index(rows: slice, cols: slice, *, channels_last: bool = False) -> tuple:
    """The index of a (rows, cols) region of the spatial axes: ``(..., rows, cols)``, or ``(..., rows, cols, :)``
    channels-last."""
    return (..., rows, cols, slice(None)) if channels_last else (..., rows, cols)


def windows(x_padded, geometry: WindowGeometry, *, channels_last: bool = False):
    """Yield ``(i, j, slice)`` for every kernel offset; each slice is ``(..., out_h, out_w)`` (channels-last:
    ``(..., out_h, out_w, C)``)."""
    for i, j, rows, cols in _offset_slices(geometry):
        yield i, j, x_padded[plane_index(rows, cols, channels_last=channels_last)]


@functools.lru_cache(maxsize=256)
def _offset_slices(geometry: WindowGeometry) -> tuple[tuple[int, int, slice, slice], ...]:
    """``(i, j, rows, cols)`` for every kernel offset, built once per geometry (the batch pieces of an op, and
    its backward pass, share it)."""
    return tuple((i, j, *geometry.slices(i, j)) for i, j in geometry.offsets())


def stacked_windows(xp, x, geometry: WindowGeometry, fill: float, *, by_take=None, channels_last: bool = False):
    """Every window of the (unpadded) ``x``, ``(..., H, W) -> (..., kh * kw, out_h, out_w)``; offsets in row-major
    order, positions in the padding hold ``fill``. ``by_take`` chooses the method (default: the cost model's
    choice, :attr:`xpcnn._tuning.Profile.take_short_rows` and ``take_max_indices``); both give identical arrays.

    With ``channels_last``, ``(..., H, W, C) -> (..., out_h, out_w, kh * kw, C)``: each offset's slice is copied as
    runs of ``out_w * C`` contiguous values, by stacking (no ``take``)."""
    if channels_last:
        slices = [window for _, _, window in windows(pad(xp, x, geometry, fill, channels_last=True), geometry,
                                                     channels_last=True)]
        return xp.stack(slices, axis=-2)
    if by_take is None:
        profile = profile_for(x)
        elements = len(geometry.offsets()) * math.prod(geometry.out_size)
        by_take = geometry.out_size[1] < profile.take_short_rows and elements <= profile.take_max_indices
    if not by_take:
        return xp.stack([window for _, _, window in windows(pad(xp, x, geometry, fill), geometry)], axis=-3)
    lead, (height, width) = tuple(x.shape[:-2]), geometry.in_size
    device = device_of(x)
    flat = xp.reshape(x, (*lead, height * width))
    indices, reaches_padding = window_indices_on(xp, geometry, device, cache=not is_lazy_array(x))
    if reaches_padding:  # one more element, ``fill``, at flat position H * W
        flat = xp.concat([flat, xp.full((*lead, 1), fill, dtype=x.dtype, device=device)], axis=-1)
    gathered = take_nonnegative(xp, flat, indices, axis=-1)
    return xp.reshape(gathered, (*lead, len(geometry.offsets()), *geometry.out_size))


INDEX_CACHE_SIZE = 32
"""How many device index arrays :func:`window_indices_on` keeps (the least recently used goes first)."""

_index_cache: collections.OrderedDict = collections.OrderedDict()
_index_cache_lock = threading.Lock()


def window_indices_on(xp, geometry: WindowGeometry, device, *, cache: bool = True):
    """:func:`_window_indices` as an int64 array on ``device``, and whether any index is the padding's.

    With ``cache`` the array is made once per (library, device, geometry) and kept (at most
    :data:`INDEX_CACHE_SIZE`, least recently used dropped): later calls copy nothing from the host. Lazy arrays
    (JAX, also under ``jax.jit``; Dask) pass ``cache=False``: an array made while tracing must not outlive the
    trace.
    """
    key = (getattr(xp, "__name__", repr(xp)), repr(device), geometry)
    if not cache:
        host, reaches_padding = _window_indices(geometry)
        return xp.asarray(host, dtype=xp.int64, device=device), reaches_padding
    with _index_cache_lock:  # ops may be called from several threads at once
        if key in _index_cache:
            _index_cache.move_to_end(key)
            return _index_cache[key]
        host, reaches_padding = _window_indices(geometry)
        entry = (xp.asarray(host, dtype=xp.int64, device=device), reaches_padding)  # host: built once, then kept
        _index_cache[key] = entry
        while len(_index_cache) > INDEX_CACHE_SIZE:
            _index_cache.popitem(last=False)
        return entry


@functools.lru_cache(maxsize=32)
def _window_indices(geometry: WindowGeometry) -> tuple[tuple[int, ...], bool]:
    """The flat index ``row * W + col`` into an unpadded plane of every window element, in the order of
    :func:`stacked_windows` (``kh * kw * out_h * out_w`` Python ints, built once per geometry), ``H * W`` for
    one in the padding; and whether any is."""
    (height, width), (top, _), (left, _) = geometry.in_size, *geometry.padding
    (sh, sw), (dh, dw), (out_h, out_w) = geometry.stride, geometry.dilation, geometry.out_size
    pad_index, indices = height * width, []
    for i, j in geometry.offsets():
        rows = [oh * sh + i * dh - top for oh in range(out_h)]
        cols = [ow * sw + j * dw - left for ow in range(out_w)]
        cols_inside = [0 <= col < width for col in cols]
        for row in rows:
            if 0 <= row < height:
                indices.extend(row * width + col if inside else pad_index for col, inside in zip(cols, cols_inside))
            else:
                indices.extend([pad_index] * out_w)
    return tuple(indices), pad_index in indices


def scatter_windows(xp, parts, geometry: WindowGeometry, leading_shape, *, dtype, device, trailing_shape=()):
    """Accumulating inverse of :func:`windows`: add ``parts[k]`` (``(..., out_h, out_w, *trailing_shape)``, one
    per offset in row-major order) into the slice of offset ``k`` of a zero padded array, then crop the padding.

    Returns an array of shape ``(*leading_shape, H, W, *trailing_shape)``; ``trailing_shape`` is ``()`` for NCHW
    and ``(C,)`` for NHWC.
    """
    last = bool(trailing_shape)
    slices = [plane_index(rows, cols, channels_last=last) for _, _, rows, cols in _offset_slices(geometry)]
    shape = (*leading_shape, *geometry.padded_size, *trailing_shape)
    grad = _accumulated(xp, shape, slices, parts, dtype=dtype, device=device)
    return crop(grad, geometry, channels_last=last)


def scatter_wide_rows(xp, parts, geometry: WindowGeometry, leading_shape, *, dtype, device):
    """:func:`scatter_windows` for stride-1 windows, from parts whose rows run the whole padded width: each part
    is ``(*leading_shape, out_h * Wp)``, every window row followed by ``Wp - out_w`` zeros.

    Offset ``(i, j)`` then adds one contiguous run of the flattened padded plane, from ``i * dh * Wp + j * dw``
    (the zeros fall on the starts of the next rows and add nothing), instead of out_h rows of out_w: NumPy pays
    per row. The caller keeps the extension zero (it must not be ``0 * inf``).
    """
    (padded_h, padded_w), out_h, (dh, dw) = geometry.padded_size, geometry.out_size[0], geometry.dilation
    spans = (o + d * (k - 1) for o, d, k in zip(geometry.out_size, geometry.dilation, geometry.kernel))
    if geometry.stride != (1, 1) or tuple(spans) != geometry.padded_size:
        raise ValueError(f"wide rows need stride 1 and no overhang, got {geometry}")
    run = out_h * padded_w
    starts = [i * dh * padded_w + j * dw for i, j in geometry.offsets()]
    runs = [(..., slice(start, start + run)) for start in starts]
    grad = _accumulated(xp, (*leading_shape, max(starts) + run), runs, parts, dtype=dtype, device=device)
    grad = xp.reshape(grad[..., : padded_h * padded_w], (*leading_shape, padded_h, padded_w))
    return crop(grad, geometry)


def _accumulated(xp, shape, indices, parts, *, dtype, device):
    """A zero array of ``shape`` with each part added at its index, in order (the indices of one call may
    overlap; within one index every position is distinct)."""
    grad = xp.zeros(shape, dtype=dtype, device=device)
    if math.prod(shape) == 0:  # an empty batch: nothing to add (and Dask cannot assign to empty slices)
        return grad
    add = _add_in_place if updates_in_place(grad) else _add_at
    for index, part in zip(indices, parts, strict=True):
        grad = add(grad, index, part)
    return grad


def _add_in_place(grad, index, part):
    view = grad[index]  # a view: these libraries update views in place (updates_in_place)
    view += part  # not ``grad[index] += part``, which then copies the view onto itself
    return grad


def _add_at(grad, index, part):
    return xpx.at(grad)[index].add(part)


def crop(x_padded, geometry: WindowGeometry, *, channels_last: bool = False):
    """The input's own (H, W) region of a padded array: the inverse of :func:`pad`."""
    (top, _), (left, _) = geometry.padding
    height, width = geometry.in_size
    return x_padded[plane_index(slice(top, top + height), slice(left, left + width), channels_last=channels_last)]


def by_axis(geometry: WindowGeometry, *, rows_first=True) -> tuple[WindowGeometry, WindowGeometry]:
    """The windows of ``geometry`` split into a pass along the rows and a pass across them, for reductions that
    separate (a window's sum is the sum of its rows' sums; likewise its maximum).

    Returns ``(first, second)``. With ``rows_first`` the first pass runs along the rows of the padded input,
    (Hp, Wp) -> (Hp, out_w), with (1 x kw) windows, and the second across them, (Hp, out_w) -> (out_h, out_w),
    with (kh x 1) windows: the order in which a row-major first maximum can be found. Otherwise the first pass
    runs across the rows, (Hp, Wp) -> (out_h, Wp), and the second along them: with a row stride above 1 the first
    pass then walks whole padded rows (long contiguous runs) and the second fewer rows. Neither pads: pad once for
    the whole op. ``kh + kw`` slices instead of ``kh * kw``.
    """
    (padded_h, padded_w), (out_h, out_w) = geometry.padded_size, geometry.out_size
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.stride, geometry.dilation
    none = ((0, 0), (0, 0))

    def along_rows(rows):
        return WindowGeometry((rows, padded_w), (1, kw), (1, sw), (1, dw), none, (rows, out_w))

    def across_rows(cols):
        return WindowGeometry((padded_h, cols), (kh, 1), (sh, 1), (dh, 1), none, (out_h, cols))

    return (along_rows(padded_h), across_rows(out_w)) if rows_first else (across_rows(padded_w), along_rows(out_h))


def samples_per_piece(bytes_per_sample: int, limit: int) -> int:
    """How many samples of ``bytes_per_sample`` working memory fit into ``limit`` bytes, at least one."""
    return max(1, limit // max(1, bytes_per_sample))


def batch_pieces(n: int, piece: int) -> list[slice]:
    """Batch slices of at most ``piece`` samples (one empty slice for an empty batch)."""
    return [slice(start, min(start + piece, n)) for start in range(0, max(n, 1), piece)]


def map_pieces(fn, n: int, piece: int, *per_piece) -> list:
    """``[fn(part, ...) for part in batch_pieces(n, piece)]``: a function applied to each batch piece (a slice of
    at most ``piece`` samples) in order, with the matching items of ``per_piece`` (one sequence per extra
    argument, as long as the pieces) after the slice."""
    return [fn(part, *items) for part, *items in zip(batch_pieces(n, piece), *per_piece, strict=True)]


def sum_pieces(arrays):
    """The pieces' partial results added up, in order (one array: itself)."""
    return functools.reduce(operator.add, arrays)


def concat_pieces(xp, arrays):
    """The pieces' results joined along the batch axis."""
    return arrays[0] if len(arrays) == 1 else xp.concat(arrays, axis=0)

"""Per-axis gathers: the variable windows of adaptive pooling and the taps of interpolation.

:mod:`xpcnn._windows` slides a window of one size with one stride. Adaptive pooling and interpolation instead read,
for each output position along an axis, input positions that follow no stride: the window
``[floor(i * n / out), ceil((i + 1) * n / out))`` of adaptive pooling (of at most two sizes), the source of
nearest-neighbour interpolation, the two neighbours of linear interpolation and their weights. An :class:`AxisMap`
lists them, the *taps* of every output, built in Python once per shape (the builders are cached).

* :func:`gathered` reads every output's taps at once: ONE ``take`` along the axis with a table of
  ``width * out_size`` positions, tap-major (tap 0 of every output, then tap 1...), so that each tap of all outputs
  is one contiguous block (:func:`taps`). An output with fewer taps than the widest repeats its last position
  there: no padded copy of the input is made, and the reductions mask those repeats (:attr:`AxisMap.is_tap`) or,
  for a maximum, are not changed by them.
* :func:`combined` adds the taps up, weighted or not. A backward pass adds each output's gradient back to the
  positions it read: a scatter-add. Transposing the map (:attr:`AxisMap.transposed`: for every input position, the
  outputs that read it) turns it into one more gather, so :func:`combined` on the transposed map is the adjoint.
  No scatter, no integer-array assignment, no atomics: deterministic on every backend. It is exact as well: every
  product lands only where it belongs, so an ``inf`` gradient reaches only the positions its output read (a product
  with a dense ``(out, in)`` interpolation matrix would spread ``0 * inf = NaN`` over whole rows).
* :attr:`AxisMap.tap_adjoint` does the same for values given per tap (max pooling's routed gradients).

Adaptive average pooling could take a window's sum as the difference of two running sums along the axis, one pass
whatever the window sizes; it is not exact: the difference of two large partial sums loses the bits of the small
window (more the larger the plane), and an ``inf`` anywhere before a window turns its sum into ``inf - inf = NaN``.
The gathered taps add exactly the window's own elements, as PyTorch's loops do.

Only ``take`` along one axis, ``reshape``, ``where``, ``repeat`` and strided slices are used. Two layouts skip the
``take``: taps that repeat every input ``s`` times (integer nearest upsampling: ``repeat``) and blocks of ``s``
consecutive positions (its transpose: ``s`` strided slices added up).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from array_api_compat import device as device_of

from ._device_cache import on_device
from ._dispatch import take_nonnegative

FEW_TAPS = 4
"""Up to this many taps are added one by one; more by one ``sum`` over the tap axis (NumPy's reductions over a short
axis pay per element; a GPU pays per call)."""

NO_POSITION = -1
"""The position of a missing tap in :meth:`AxisMap.tap_positions` (it matches no input position)."""


@dataclass(frozen=True)
class AxisMap:
    """Output ``i`` along one axis reads input positions ``taps[i]`` (each in ``[0, in_size)``) with ``weights[i]``
    (None: all ones). An output with no taps (in a transposed map: an input that no output read) is 0."""

    in_size: int
    taps: tuple[tuple[int, ...], ...]
    weights: tuple[tuple[float, ...], ...] | None = None

    @property
    def out_size(self) -> int:
        return len(self.taps)

    @functools.cached_property
    def width(self) -> int:
        """The most taps of one output."""
        return max((len(t) for t in self.taps), default=0)

    @functools.cached_property
    def full_width(self) -> int:
        """The taps that every output has (the others are repeats, masked by :attr:`is_tap`)."""
        return min((len(t) for t in self.taps), default=0)

    def _tap_major(self, rows, pad) -> tuple:
        """``rows[i][k]`` for every tap ``k`` of every output ``i``, tap by tap; ``pad(row)`` past a short row."""
        return tuple(row[k] if k < len(row) else pad(row) for k in range(self.width) for row in rows)

    @functools.cached_property
    def flat_index(self) -> tuple[int, ...]:
        """The ``width * out_size`` positions :func:`gathered` takes: tap by tap, a short tap list repeating its
        last position (position 0 for an empty one)."""
        return self._tap_major(self.taps, lambda row: row[-1] if row else 0)

    @functools.cached_property
    def is_tap(self) -> tuple[bool, ...]:
        """Tap-major: whether each gathered position is one of its output's taps (False: a repeat)."""
        return self._tap_major(tuple((True,) * len(t) for t in self.taps), lambda row: False)

    @functools.cached_property
    def tap_positions(self) -> tuple[int, ...]:
        """Tap-major: the position each output reads through each tap, :data:`NO_POSITION` where it has none."""
        return self._tap_major(self.taps, lambda row: NO_POSITION)

    @functools.cached_property
    def flat_weights(self) -> tuple[float, ...] | None:
        return None if self.weights is None else self._tap_major(self.weights, lambda row: 0.0)

    @functools.cached_property
    def repeats(self) -> int | None:
        """``s`` when output ``i`` reads position ``i // s`` alone, unweighted, and every position is read."""
        n, out = self.in_size, self.out_size
        if self.weights is not None or self.width != 1 or n == 0 or out % n:
            return None
        s = out // n
        return s if all(t == (i // s,) for i, t in enumerate(self.taps)) else None

    @functools.cached_property
    def blocks(self) -> int | None:
        """``s`` when output ``i`` reads positions ``i * s, ..., i * s + s - 1``, unweighted, and ``in_size =
        s * out_size`` (the transpose of :attr:`repeats`)."""
        n, out = self.in_size, self.out_size
        if self.weights is not None or out == 0 or n % out:
            return None
        s = n // out
        return s if all(t == tuple(range(i * s, i * s + s)) for i, t in enumerate(self.taps)) else None

    @functools.cached_property
    def identity(self) -> bool:
        """Output ``i`` reads position ``i`` alone, unweighted."""
        return self.weights is None and self.taps == tuple((i,) for i in range(self.in_size))

    @functools.cached_property
    def transposed(self) -> AxisMap:
        """The adjoint's taps: for every input position, the outputs that read it (in increasing order; none for a
        position no output reads), with the same weights."""
        readers = self._readers()
        return AxisMap(
            in_size=self.out_size,
            taps=tuple(tuple(i for i, _, _ in entries) for entries in readers),
            weights=None if self.weights is None else tuple(tuple(w for _, _, w in entries) for entries in readers),
        )

    @functools.cached_property
    def tap_adjoint(self) -> AxisMap:
        """Taps over per-tap values: position ``r`` reads entry ``k * out_size + i`` of a ``(width * out_size + 1)``
        axis for every output ``i`` that reads it through its tap ``k``; the last entry (a zero) for positions that
        no output reads."""
        zero = self.width * self.out_size
        readers = self._readers()
        return AxisMap(zero + 1, tuple(tuple(k * self.out_size + i for i, k, _ in e) or (zero,) for e in readers))

    def _readers(self):
        readers = [[] for _ in range(self.in_size)]
        for i, taps in enumerate(self.taps):
            for k, position in enumerate(taps):
                readers[position].append((i, k, 1.0 if self.weights is None else self.weights[i][k]))
        return readers


def gathered(xp, x, axis_map: AxisMap, axis: int):
    """Every output's taps of ``x`` along ``axis`` (-1 or -2), tap-major: ``(..., n) -> (..., width, out_size)`` for
    ``axis=-1``, ``(..., n, W) -> (..., width, out_size, W)`` for ``axis=-2`` (a short tap list repeats its last
    position)."""
    lead, trail = tuple(x.shape[:axis]), tuple(x.shape[axis:][1:])
    shape = (*lead, axis_map.width, axis_map.out_size, *trail)
    if len(axis_map.flat_index) == 1:  # one tap of one output: a slice (Dask's take of a single index misreports
        position = axis_map.flat_index[0]  # the shape it computes, and a slice uploads nothing anywhere)
        return xp.reshape(x[(..., slice(position, position + 1), *(slice(None),) * len(trail))], shape)
    device = device_of(x)
    index = on_device(xp, device, ("axis map index", axis_map.flat_index),
                      lambda: xp.asarray(axis_map.flat_index, dtype=xp.int64, device=device))  # host: once a map
    return xp.reshape(take_nonnegative(xp, x, index, axis=axis), shape)


def tap_axis(axis: int) -> int:
    """The axis of the taps in :func:`gathered`'s result for ``axis``."""
    return axis - 1


def taps(gathered_taps, axis: int) -> list:
    """The taps one by one, each ``(..., out_size)`` (``axis=-1``) or ``(..., out_size, W)`` (``axis=-2``)."""
    trail = (slice(None),) * -axis
    return [gathered_taps[(..., k, *trail)] for k in range(gathered_taps.shape[tap_axis(axis)])]


def per_tap(xp, values, axis_map: AxisMap, axis: int, *, dtype, device):
    """A tap-major table of ``width * out_size`` values as a ``(width, out_size)`` (``axis=-1``) or
    ``(width, out_size, 1)`` (``axis=-2``) array: its ``[k, ...]`` broadcasts against tap ``k``. Made once per
    device (:func:`xpcnn._device_cache.on_device`): read-only."""
    shape = (axis_map.width, axis_map.out_size, *(1,) * (-axis - 1))
    return on_device(xp, device, ("axis map per tap", shape, str(dtype), tuple(values)),
                     lambda: xp.reshape(xp.asarray(values, dtype=dtype, device=device), shape))  # host: once a map


def combined(xp, x, axis_map: AxisMap, axis: int):
    """``out[i] = sum_k weights[i][k] * x[taps[i][k]]`` along ``axis`` (-1 or -2); ``(..., n, ...) ->
    (..., out_size, ...)``. Applied to ``axis_map.transposed`` it is the adjoint of applying ``axis_map``. An
    identity map returns x itself.

    Weighted taps are added in order (``w0 * x0 + w1 * x1``: PyTorch's arithmetic); the taps every output has are
    summed over the tap axis, the others added masked (``where``, so that a repeated ``inf`` adds nothing)."""
    if axis_map.identity:
        return x
    if axis_map.repeats is not None:
        return xp.repeat(x, axis_map.repeats, axis=axis)
    trail = (slice(None),) * (-axis - 1)
    if axis_map.blocks is not None:
        s, out, total = axis_map.blocks, axis_map.out_size, None
        for k in range(s):
            tap = x[(..., slice(k, k + s * (out - 1) + 1, s), *trail)]
            total = tap if total is None else total + tap
        return total
    gathered_taps = gathered(xp, x, axis_map, axis)
    device, full = device_of(x), axis_map.full_width
    tap_list = taps(gathered_taps, axis)
    is_tap = None
    if full < axis_map.width:
        is_tap = per_tap(xp, axis_map.is_tap, axis_map, axis, dtype=xp.bool, device=device)
    if axis_map.weights is None:
        total = None
        if full > FEW_TAPS:
            total = xp.sum(gathered_taps[(..., slice(0, full), slice(None), *trail)], axis=tap_axis(axis))
        else:
            for tap in tap_list[:full]:
                total = tap if total is None else total + tap
        for k in range(full, axis_map.width):
            term = xp.where(is_tap[k, ...], tap_list[k], 0.0)
            total = term if total is None else total + term
        return total
    weights = per_tap(xp, axis_map.flat_weights, axis_map, axis, dtype=x.dtype, device=device)
    total = None
    for k, tap in enumerate(tap_list):
        term = tap * weights[k, ...] if k < full else xp.where(is_tap[k, ...], tap * weights[k, ...], 0.0)
        total = term if total is None else total + term
    return total


@functools.lru_cache(maxsize=128)
def adaptive_windows(in_size: int, out_size: int) -> AxisMap:
    """Adaptive pooling's windows, as PyTorch: output ``i`` covers ``[floor(i * n / out), ceil((i + 1) * n / out))``
    (integer arithmetic). Consecutive windows overlap by at most one position when ``out <= n``; their sizes differ
    by at most one."""
    starts = [i * in_size // out_size for i in range(out_size)]
    ends = [-(-(i + 1) * in_size // out_size) for i in range(out_size)]
    return AxisMap(in_size, tuple(tuple(range(s, e)) for s, e in zip(starts, ends)))

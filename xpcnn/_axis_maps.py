"""Per-axis gathers: the variable windows of adaptive pooling and the taps of interpolation.

:mod:`xpcnn._windows` slides a window of one size with one stride. Adaptive pooling and interpolation instead read,
for each output position along an axis, input positions that follow no stride: the window
``[floor(i * n / out), ceil((i + 1) * n / out))`` of adaptive pooling (of at most two sizes), the source of
nearest-neighbour interpolation, the two neighbours of linear interpolation and their weights. An :class:`AxisMap`
lists them, the *taps* of every output, built in Python once per shape (the builders are cached).

* :func:`gathered` reads every output's taps at once: ONE ``take`` along the axis with a flat table of
  ``out_size * width`` positions (an output with fewer taps reads a fill value appended to the axis), reshaped so
  that the taps get an axis of their own. Sums, weighted sums (:func:`combined`) and maxima reduce that axis.
* A backward pass adds each output's gradient back to the positions it read: a scatter-add. Transposing the map
  (:attr:`AxisMap.transposed`: for every input position, the outputs that read it and through which of their
  taps) turns it into one more gather, so :func:`combined` on the transposed map is the adjoint. No scatter, no
  integer-array assignment, no atomics: deterministic on every backend. It is exact as well: every product lands
  only where it belongs, so an ``inf`` gradient reaches only the positions its output read (a product with a dense
  ``(out, in)`` interpolation matrix would spread ``0 * inf = NaN`` over whole rows).

Only ``take`` along one axis, ``reshape``, ``concat`` and ``repeat`` are used. Two layouts skip the ``take``: taps
that repeat every input ``s`` times (integer nearest upsampling: ``repeat``) and taps that read the axis in order,
each position once (its transpose: a ``reshape``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from array_api_compat import device as device_of

PAD_TAP = -2
"""Tap number of the entries that pad a transposed map's short tap lists (it matches no tap)."""


@dataclass(frozen=True)
class AxisMap:
    """Output ``i`` along one axis reads input positions ``taps[i]`` (each in ``[0, in_size)``) with ``weights[i]``
    (None: all ones). ``tap_numbers[r][m]``, in a transposed map only: which tap of the output ``taps[r][m]``
    position ``r`` was."""

    in_size: int
    taps: tuple[tuple[int, ...], ...]
    weights: tuple[tuple[float, ...], ...] | None = None
    tap_numbers: tuple[tuple[int, ...], ...] | None = None

    @property
    def out_size(self) -> int:
        return len(self.taps)

    @functools.cached_property
    def width(self) -> int:
        """The most taps of one output (every tap list is padded to it)."""
        return max((len(t) for t in self.taps), default=0)

    @functools.cached_property
    def flat_index(self) -> tuple[tuple[int, ...], bool]:
        """``out_size * width`` input positions, output by output; ``in_size`` (the fill value appended to the
        axis) pads the short tap lists. And whether any does."""
        width, pad = self.width, self.in_size
        index = tuple(p for taps in self.taps for p in (*taps, *[pad] * (width - len(taps))))
        return index, pad in index

    @functools.cached_property
    def flat_weights(self) -> tuple[float, ...] | None:
        if self.weights is None:
            return None
        return tuple(w for ws in self.weights for w in (*ws, *[0.0] * (self.width - len(ws))))

    @functools.cached_property
    def repeats(self) -> int | None:
        """``s`` when output ``i`` reads position ``i // s`` alone and every position is read (``repeat``)."""
        n, out = self.in_size, self.out_size
        if self.weights is not None or self.width != 1 or n == 0 or out % n:
            return None
        s = out // n
        return s if all(taps == (i // s,) for i, taps in enumerate(self.taps)) else None

    @functools.cached_property
    def in_order(self) -> bool:
        """Whether the taps read positions ``0, 1, ..., in_size - 1`` in order, each once, with no padding (the
        gathered array is then a reshape of the input)."""
        index, padded = self.flat_index
        return not padded and self.weights is None and index == tuple(range(self.in_size))

    @functools.cached_property
    def transposed(self) -> AxisMap:
        """The adjoint's taps: for every input position ``r``, the outputs that read it (in increasing order) with
        the same weights, and through which of their taps (``tap_numbers``)."""
        readers = [[] for _ in range(self.in_size)]
        for i, taps in enumerate(self.taps):
            for k, position in enumerate(taps):
                readers[position].append((i, k, 1.0 if self.weights is None else self.weights[i][k]))
        return AxisMap(
            in_size=self.out_size,
            taps=tuple(tuple(i for i, _, _ in entries) for entries in readers),
            weights=None if self.weights is None else tuple(tuple(w for _, _, w in entries) for entries in readers),
            tap_numbers=tuple(tuple(k for _, k, _ in entries) for entries in readers),
        )

    def tap_number_table(self) -> tuple[int, ...]:
        """``tap_numbers`` flattened as :attr:`flat_index`, :data:`PAD_TAP` for the padding."""
        width = self.width
        return tuple(k for ks in self.tap_numbers for k in (*ks, *[PAD_TAP] * (width - len(ks))))


def gathered(xp, x, axis_map: AxisMap, axis: int, fill):
    """Every output's taps of ``x`` along ``axis`` (-1 or -2), on a tap axis of their own:
    ``(..., n) -> (..., out_size, width)`` for ``axis=-1``, ``(..., n, W) -> (..., out_size, width, W)`` for
    ``axis=-2``. Padding taps read ``fill`` (in x's dtype)."""
    index, padded = axis_map.flat_index
    lead, n = tuple(x.shape[:axis]), x.shape[axis]
    trail = tuple(x.shape[axis:][1:])
    shape = (*lead, axis_map.out_size, axis_map.width, *trail)
    if axis_map.in_order:
        return xp.reshape(x, shape)
    device = device_of(x)
    if padded:
        x = xp.concat([x, xp.full((*lead, 1, *trail), fill, dtype=x.dtype, device=device)], axis=axis)
    if axis_map.out_size == 0 or n == 0:
        return xp.zeros(shape, dtype=x.dtype, device=device)
    taken = xp.take(x, xp.asarray(index, dtype=xp.int64, device=device), axis=axis)
    return xp.reshape(taken, shape)


def tap_axis(axis: int) -> int:
    """The axis that :func:`gathered` gives the taps of ``axis``."""
    return -1 if axis == -1 else -2


def table(xp, values, axis_map: AxisMap, axis: int, *, dtype, device):
    """A flat per-(output, tap) table (``out_size * width`` values) as an array that broadcasts against
    :func:`gathered`'s result for ``axis``."""
    shape = (axis_map.out_size, axis_map.width) if axis == -1 else (axis_map.out_size, axis_map.width, 1)
    return xp.reshape(xp.asarray(values, dtype=dtype, device=device), shape)


def combined(xp, x, axis_map: AxisMap, axis: int):
    """``out[i] = sum_k weights[i][k] * x[taps[i][k]]`` along ``axis`` (-1 or -2); ``(..., n, ...) ->
    (..., out_size, ...)``. Applied to ``axis_map.transposed`` it is the adjoint of applying ``axis_map``."""
    if axis_map.repeats is not None:
        return xp.repeat(x, axis_map.repeats, axis=axis)
    taps = gathered(xp, x, axis_map, axis, 0)
    if axis_map.weights is not None:
        taps = taps * table(xp, axis_map.flat_weights, axis_map, axis, dtype=x.dtype, device=device_of(x))
    if axis_map.width == 1:
        return xp.squeeze(taps, axis=tap_axis(axis))
    return xp.sum(taps, axis=tap_axis(axis))


@functools.lru_cache(maxsize=128)
def adaptive_windows(in_size: int, out_size: int) -> AxisMap:
    """Adaptive pooling's windows, as PyTorch: output ``i`` covers ``[floor(i * n / out), ceil((i + 1) * n / out))``
    (integer arithmetic). Consecutive windows overlap by at most one position when ``out <= n``; their sizes differ
    by at most one."""
    starts = [i * in_size // out_size for i in range(out_size)]
    ends = [-(-(i + 1) * in_size // out_size) for i in range(out_size)]
    return AxisMap(in_size, tuple(tuple(range(s, e)) for s, e in zip(starts, ends)))

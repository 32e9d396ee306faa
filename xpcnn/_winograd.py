"""Winograd minimal filtering for 3x3, stride-1, dilation-1 convolutions: forward, input and weight gradients.

Cross-correlation as ``torch.nn.functional.conv2d`` (zero padding, possibly asymmetric, groups, no bias), on the
array API standard. With F(m x m, 3 x 3) (``m = 2`` or ``4``, tile size ``alpha = m + 2``, ``T = alpha**2``
transform positions) every output tile of m x m values comes from one alpha x alpha input tile ``d`` (the tiles
overlap by 2 and step by m)::

    U = G g G^T                      filter transform      (alpha, alpha) per (o, c)
    V = B^T d B                      data transform        (alpha, alpha) per (c, tile)
    M[t] = U[t] @ V[t]               one GEMM per transform position t, over the channels:
                                     (T, O, C) @ (T, C, N * tiles) -> (T, O, N * tiles)   (per group)
    Y = A^T M A                      output transform      (m, m) per (o, tile), cropped to the output size

Each product of the direct method (``9 * m * m`` per output tile and channel pair) becomes ``alpha**2``:
2.25 times fewer multiplies with F(2x2, 3x3), 4 times fewer with F(4x4, 3x3).

The transforms are separable (``B^T d B`` is B^T applied along the rows, then along the columns), and each is
applied as a small matrix product over a leading axis of a stack of strided slices: the ``alpha`` row slices
``x_pad[..., i : i + m*(th-1) + 1 : m, :]`` (one per tile row offset i) are stacked and multiplied by B^T, then
the ``alpha`` column slices of that, and multiplied by B^T again. No tile is gathered twice and nothing is
scattered: the input is padded at the bottom and right so that whole tiles cover the output, and the output
tiles are cropped.

Gradients, both written with the same transforms:

* input gradient: for stride 1 the transposed correlation is a correlation of dout padded by ``2 - p`` on each
  side (a negative padding crops) with the kernel flipped and its in/out channels swapped per group, so
  :func:`winograd_input_grad` is :func:`winograd_forward` of that.
* weight gradient: the adjoint of the forward algorithm in g. ``<dY, A^T (U * V) A> = <(A dY A^T) * V, U>``, so
  ``dweight = G^T [sum over tiles of (A dY A^T) * V] G``: the output tiles of dout (m x m, not overlapping) go
  through A, the input tiles through B^T exactly as in the forward pass, and the sum over the batch and tiles is
  one GEMM per transform position, ``(T, O, N * tiles) @ (T, N * tiles, C)``, before G^T ... G (F(3x3, m x m)).

Layouts: ``data_format="NCHW"`` (default) or ``"NHWC"`` (channels last, weights still (O, C/groups, 3, 3)). In
NCHW the stacks are made channel-major, (C, N, tiles), so each GEMM spans the whole batch piece; in NHWC the
channels stay the contiguous inner dimension, (N * tiles, C), and the GEMMs multiply from the right.

Numerics: the transforms add and subtract values of neighbouring positions (F(4x4) also scales by up to 8 and
1/24), so rounding errors are larger than the direct method's, most for F(4x4) in float32: figures against
float64 in benchmarks/winograd_error.py. A non-finite input value spreads over every output of the tiles that
contain it (``inf - inf`` inside the transform gives NaN), where the direct method keeps it to the windows that
contain it: callers should take this path for finite data only (or accept that difference).

Memory: the batch is processed in pieces of whole samples whose transformed input and product (and the padded
rows) fit into ``workspace_limit`` bytes (at least one sample per piece); the weight gradient sums the pieces'
products in the transform domain and transforms back once.

When it pays off (a proposed cost-model rule): see :func:`winograd_pays_off`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from ._device_cache import on_device
from ._dispatch import updates_in_place
from ._tuning import HOST, Profile
from ._validation import same_device
from ._windows import map_pieces, sum_pieces

__all__ = [
    "WinogradTransform",
    "F2X2_3X3",
    "F4X4_3X3",
    "TRANSFORMS",
    "DATA_FORMATS",
    "winograd_forward",
    "winograd_input_grad",
    "winograd_weight_grad",
    "winograd_applies",
    "winograd_pays_off",
    "winograd_tile",
]

KERNEL = 3
"""The kernel size these transforms are for (3 x 3)."""

from ._layout import DATA_FORMATS  # noqa: E402


@dataclass(frozen=True)
class WinogradTransform:
    """The matrices of F(m x m, 3 x 3): ``y = A^T [(G g G^T) * (B^T d B)] A`` for a 3 x 3 kernel g and an
    ``alpha x alpha`` tile d, ``alpha = m + 2``."""

    m: int
    BT: tuple[tuple[float, ...], ...]  # (alpha, alpha): data transform B^T
    G: tuple[tuple[float, ...], ...]  # (alpha, 3): filter transform
    AT: tuple[tuple[float, ...], ...]  # (m, alpha): output transform A^T

    @property
    def alpha(self) -> int:
        return self.m + KERNEL - 1

    @property
    def name(self) -> str:
        return f"F({self.m}x{self.m},3x3)"


F2X2_3X3 = WinogradTransform(
    m=2,
    BT=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
    G=((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
    AT=((1, 1, 1, 0), (0, 1, -1, -1)),
)
"""Interpolation points 0, 1, -1 (and infinity): every transform entry is 0, +-1 or +-1/2 (exact in binary)."""

F4X4_3X3 = WinogradTransform(
    m=4,
    BT=(
        (4, 0, -5, 0, 1, 0),
        (0, -4, -4, 1, 1, 0),
        (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0),
        (0, 2, -1, -2, 1, 0),
        (0, 4, 0, -5, 0, 1),
    ),
    G=(
        (1 / 4, 0, 0),
        (-1 / 6, -1 / 6, -1 / 6),
        (-1 / 6, 1 / 6, -1 / 6),
        (1 / 24, 1 / 12, 1 / 6),
        (1 / 24, -1 / 12, 1 / 6),
        (0, 0, 1),
    ),
    AT=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)),
)
"""Lavin and Gray's matrices, interpolation points 0, +-1, +-2 (and infinity)."""

TRANSFORMS = {2: F2X2_3X3, 4: F4X4_3X3}
"""The transforms by output tile size m."""

F4_MAX_CHANNELS = HOST.winograd_f4_max_channels
"""With ``tile=None``, F(4x4, 3x3) up to this many channels per group (input and output), F(2x2, 3x3) beyond: the
host profile's ``winograd_f4_max_channels`` (:mod:`xpcnn._tuning`, where the figures behind it are)."""

DEFAULT_WORKSPACE_LIMIT = HOST.winograd_workspace_limit
"""Bytes for one batch piece's working arrays when the caller gives no limit: the host profile's
``winograd_workspace_limit`` (an accelerator wants the whole batch in one piece: pass its profile's)."""


# ---------------------------------------------------------------------------------------------------------------
# Public functions


def winograd_forward(
    xp: Any,
    x: Any,
    weight: Any,
    padding: Any = 0,
    groups: int = 1,
    *,
    tile: int | None = None,
    data_format: str = "NCHW",
    workspace_limit: int | None = None,
) -> Any:
    """Cross-correlation of x with 3 x 3 weights, stride 1, dilation 1, no bias, by Winograd's F(m x m, 3 x 3).

    Parameters
    ----------
    xp : array namespace (None: x's)
    x : array (N, C, H, W), or (N, H, W, C) with ``data_format="NHWC"``; real floating
    weight : array (O, C // groups, 3, 3), x's dtype (the same layout in both data formats)
    padding : int, (ph, pw) or ((top, bottom), (left, right))
        Zero padding, each >= 0.
    groups : int
        Divides C and O.
    tile : 2, 4 or None
        m of F(m x m, 3 x 3); None: 4 up to :data:`F4_MAX_CHANNELS` channels per group, else 2 (the same choice
        in the three functions for one layer).
    data_format : "NCHW" or "NHWC"
    workspace_limit : int, optional
        Bytes for one batch piece's working arrays (default :data:`DEFAULT_WORKSPACE_LIMIT`).

    Returns
    -------
    out : array (N, O, H_out, W_out) (NHWC: (N, H_out, W_out, O)), ``H_out = H + top + bottom - 2``, likewise W.

    Raises
    ------
    TypeError, ValueError
        Non-arrays, mismatched dtypes, a kernel other than 3 x 3, channel or group mismatches, negative padding,
        an output smaller than 1 x 1, an unknown tile or data format.
    """
    xp, layout, tf, pads, limit = _setup(
        xp, ("x", "weight"), x, weight, padding, groups, tile, data_format, workspace_limit
    )
    n, channels, height, width = _nchw_shape(x, layout)
    _check_weight(weight, channels, groups)
    tf = _transform(tf, weight.shape[1], weight.shape[0] // groups)
    out_size = _out_size((height, width), pads)
    return _correlate(xp, x, weight, pads, groups, tf, layout, out_size, limit)


def winograd_input_grad(
    xp: Any,
    dout: Any,
    weight: Any,
    padding: Any,
    groups: int,
    in_size: tuple[int, int],
    *,
    tile: int | None = None,
    data_format: str = "NCHW",
    workspace_limit: int | None = None,
) -> Any:
    """The input gradient of :func:`winograd_forward`: dx (N, C, H, W) (NHWC: (N, H, W, C)) from dout
    (N, O, H_out, W_out) (NHWC: (N, H_out, W_out, O)) and the forward pass's weight, padding and groups;
    ``in_size = (H, W)``.

    It is a correlation of dout, padded by ``2 - p`` on each side (cropped where that is negative), with the kernel
    flipped and its in and out channels swapped within each group: :func:`winograd_forward` of that. Raises as
    :func:`winograd_forward`, and a ValueError when dout's size is not the output size for ``in_size``.
    """
    xp, layout, tf, pads, limit = _setup(
        xp, ("dout", "weight"), dout, weight, padding, groups, tile, data_format, workspace_limit
    )
    n, out_channels, out_h, out_w = _nchw_shape(dout, layout)
    height, width = _size_pair(in_size)
    if weight.ndim != 4 or weight.shape[0] != out_channels:
        raise ValueError(
            f"dout has {out_channels} channels but weight of shape {tuple(weight.shape)} expects weight.shape[0]"
        )
    _check_weight(weight, weight.shape[1] * groups, groups)
    tf = _transform(tf, weight.shape[1], weight.shape[0] // groups)
    expected = _out_size((height, width), pads)
    if (out_h, out_w) != expected:
        raise ValueError(
            f"dout must have height x width {expected[0]} x {expected[1]} (in_size {(height, width)} with padding "
            f"{pads}), got {out_h} x {out_w}"
        )
    flipped = _flipped_transpose(xp, weight, groups)
    transposed_pads = tuple((KERNEL - 1 - before, KERNEL - 1 - after) for before, after in pads)
    return _correlate(xp, dout, flipped, transposed_pads, groups, tf, layout, (height, width), limit)


def winograd_weight_grad(
    xp: Any,
    x: Any,
    dout: Any,
    padding: Any,
    groups: int,
    *,
    tile: int | None = None,
    data_format: str = "NCHW",
    workspace_limit: int | None = None,
) -> Any:
    """The weight gradient of :func:`winograd_forward`: dweight (O, C // groups, 3, 3) from the forward input x
    and dout (both in ``data_format``), summed over the batch.

    ``dweight = G^T [sum over the batch and tiles of (A dY A^T) * (B^T d B)] G``: one GEMM per transform position
    over the batch piece's tiles, pieces summed before the one transform back. Raises as
    :func:`winograd_forward`, and a ValueError when dout's shape does not match x's output shape.
    """
    xp, layout, tf, pads, limit = _setup(
        xp, ("x", "dout"), x, dout, padding, groups, tile, data_format, workspace_limit
    )
    n, channels, height, width = _nchw_shape(x, layout)
    dn, out_channels, out_h, out_w = _nchw_shape(dout, layout)
    if channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide the input channels ({channels}) and the output channels ({out_channels})"
        )
    tf = _transform(tf, channels // groups, out_channels // groups)
    expected = _out_size((height, width), pads)
    if dn != n or (out_h, out_w) != expected:
        raise ValueError(
            f"dout must hold {n} samples of height x width {expected[0]} x {expected[1]} (x's output size with "
            f"padding {pads}), got shape {tuple(dout.shape)} ({layout})"
        )
    return _weight_gradient(xp, x, dout, pads, groups, tf, layout, expected, limit)


def winograd_applies(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> bool:
    """Whether these functions compute a convolution of this shape: a 3 x 3 kernel, stride 1, dilation 1."""
    return tuple(kernel) == (KERNEL, KERNEL) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)


def winograd_pays_off(
    group_channels: int, group_out: int, out_size: tuple[int, int], *, profile: Profile = HOST
) -> int | None:
    """The cost model's rule (:mod:`xpcnn._tuning`, ``profile``'s ``winograd_*`` fields): the tile m of
    F(m x m, 3 x 3) for a 3 x 3, stride-1, dilation-1 convolution with ``group_channels`` input and ``group_out``
    output channels per group and an output of ``out_size``, or None for im2col.

    * im2col below ``winograd_min_channels`` (16) channels per group on either side (depthwise included: the GEMMs
      Winograd shrinks are small there and its transforms, which cost memory passes per channel, dominate) and
      for outputs smaller than ``winograd_min_output`` (4 x 4: most of every tile would be cropped);
    * otherwise F(4x4, 3x3) up to ``winograd_f4_max_channels`` (256) channels per group (its float32 error),
      F(2x2, 3x3) beyond.

    Measured on the host (NumPy, benchmarks/bench_winograd.py; the figures are in its JSON results and
    benchmarks/README.md): forward + dx + dweight with F(4x4) took less time than im2col from 16 channels up
    (ResNet stages at 28 x 28 down to 7 x 7, conv (c), 128 channels), more on a LeNet-like 6 -> 16 layer; F(2x2)
    was never faster than F(4x4). The accelerator profile is not measured yet (no GPU here): it takes the same
    rule with the whole batch as one piece until gpu_check says otherwise.
    """
    if min(group_channels, group_out) < profile.winograd_min_channels or min(out_size) < profile.winograd_min_output:
        return None
    return winograd_tile(group_channels, group_out, profile=profile)


def winograd_tile(group_channels: int, group_out: int, *, profile: Profile = HOST) -> int:
    """m of F(m x m, 3 x 3) for these channels per group: 4 up to ``profile.winograd_f4_max_channels`` on both
    sides, else 2 (F(4x4)'s float32 error grows with the channels summed)."""
    return 4 if max(group_channels, group_out) <= profile.winograd_f4_max_channels else 2


# ---------------------------------------------------------------------------------------------------------------
# Argument handling


@dataclass(frozen=True)
class _Layout:
    """Where the axes of a 4-D activation are, and how the transforms and products are laid out for it."""

    name: str
    batch: int
    channels: int
    height: int
    width: int


_LAYOUTS = {
    "NCHW": _Layout("NCHW", 0, 1, 2, 3),
    "NHWC": _Layout("NHWC", 0, 3, 1, 2),
}


def _setup(xp, names, a, b, padding, groups, tile, data_format, workspace_limit):
    """Namespace, layout, transform, ((top, bottom), (left, right)) pads and workspace bytes, all checked;
    ``names`` are those of the arrays a and b (a is an activation in ``data_format``)."""
    for name, array in zip(names, (a, b)):
        if not hasattr(array, "shape") or not hasattr(array, "dtype"):
            raise TypeError(f"{name} must be an array, got {type(array).__name__}")
    if xp is None:
        xp = array_namespace(a, b)
    for name, array in zip(names, (a, b)):
        if array.ndim != 4:
            raise ValueError(f"{name} must be 4-D, got shape {tuple(array.shape)}")
    if not xp.isdtype(a.dtype, "real floating"):
        raise TypeError(f"{names[0]} must have a real floating dtype, got {a.dtype}")
    if a.dtype != b.dtype:
        raise TypeError(f"{names[1]} has dtype {b.dtype} but {names[0]} has dtype {a.dtype}; they must match")
    if not same_device(a, b):  # a traced JAX array's device is not known yet: it goes with any
        raise ValueError(
            f"{names[1]} is on device {device_of(b)!r} but {names[0]} is on device {device_of(a)!r}; "
            "they must share one"
        )
    if data_format not in _LAYOUTS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    if tile is not None and tile not in TRANSFORMS:
        raise ValueError(f"tile must be one of {tuple(TRANSFORMS)} (F(m x m, 3 x 3)), got {tile!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    limit = DEFAULT_WORKSPACE_LIMIT if workspace_limit is None else workspace_limit
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"workspace_limit must be an int >= 1 byte, got {workspace_limit!r}")
    return xp, _LAYOUTS[data_format], tile, _padding_pairs(padding), limit


def _transform(tile, group_channels: int, group_out: int) -> WinogradTransform:
    """The transform for ``tile``, or for None the one :data:`F4_MAX_CHANNELS` picks."""
    if tile is None:
        tile = winograd_tile(group_channels, group_out)
    return TRANSFORMS[tile]


def _padding_pairs(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) from an int, an (h, w) pair or the pairs themselves; each >= 0."""
    if isinstance(padding, int) and not isinstance(padding, bool):
        pairs = ((padding, padding), (padding, padding))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        pairs = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    else:
        raise ValueError(f"padding must be an int, (ph, pw) or ((top, bottom), (left, right)), got {padding!r}")
    flat = [p for pair in pairs for p in pair]
    if len(flat) != 4 or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in flat):
        raise ValueError(f"padding must hold ints >= 0 as ((top, bottom), (left, right)), got {padding!r}")
    return tuple(tuple(pair) for pair in pairs)


def _size_pair(size) -> tuple[int, int]:
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise ValueError(f"in_size must be a pair of ints >= 1 (H, W), got {size!r}")
    return tuple(size)


def _nchw_shape(a, layout: _Layout) -> tuple[int, int, int, int]:
    """(N, C, H, W) of a 4-D activation in ``layout``."""
    return tuple(a.shape[axis] for axis in (layout.batch, layout.channels, layout.height, layout.width))


def _check_weight(weight, channels: int, groups: int) -> None:
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (KERNEL, KERNEL):
        raise ValueError(f"weight must be (out_channels, in_channels // groups, 3, 3), got {tuple(weight.shape)}")
    out_channels, group_channels = weight.shape[:2]
    if channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide the input channels ({channels}) and out_channels ({out_channels})"
        )
    if group_channels * groups != channels:
        raise ValueError(
            f"the input has {channels} channels but weight expects weight.shape[1] * groups = "
            f"{group_channels} * {groups} = {group_channels * groups}"
        )


def _out_size(in_size, pads) -> tuple[int, int]:
    out = tuple(n + before + after - (KERNEL - 1) for n, (before, after) in zip(in_size, pads))
    if min(out) < 1:
        raise ValueError(
            f"the 3 x 3 kernel is larger than the padded input: input {tuple(in_size)} with padding {pads} gives an "
            f"output of {out[0]} x {out[1]}"
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# The algorithm


def _correlate(xp, x, weight, pads, groups, tf: WinogradTransform, layout: _Layout, out_size, limit):
    """out = A^T [U * V] A for every tile, batch piece by batch piece; pads may be negative (crops)."""
    n, channels = _nchw_shape(x, layout)[:2]
    out_channels = weight.shape[0]
    tiles = tuple(-(-size // tf.m) for size in out_size)
    like = dict(dtype=x.dtype, device=device_of(x))
    if n == 0:  # an empty batch (Dask cannot reshape empty arrays)
        shape = (0, out_channels, *out_size) if layout.name == "NCHW" else (0, *out_size, out_channels)
        return xp.zeros(shape, **like)
    u = _filter_transform(xp, weight, groups, tf, layout, like)
    piece = _samples_per_piece(channels, out_channels, tiles, tf, x.dtype, xp, limit)
    in_place = updates_in_place(x)
    tiled = xp.empty(_tiled_shape(n, out_channels, tiles, tf, layout), **like) if in_place else None

    def one_piece(part):
        v = _data_transform(xp, x[part, ...], pads, tiles, tf, layout, groups, like)
        y = _output_tiles(xp, _product(xp, u, v, layout), tf, layout, tiles, out_channels)
        if in_place:  # each piece written once into the tiled output (no reshape copy, no concatenation)
            tiled[part, ...] = y
            return None
        return xp.reshape(y, _tiled_shape(y.shape[0], out_channels, tiles, tf, layout))

    outs = map_pieces(one_piece, n, piece)
    if not in_place:
        tiled = outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)
    return _untiled(xp, tiled, n, out_channels, tiles, tf, layout, out_size)


def _tiled_shape(n, out_channels, tiles, tf: WinogradTransform, layout: _Layout):
    """The output as whole tiles: (n, O, th, m, tw, m) in NCHW, (n, th, m, tw, m, O) in NHWC."""
    (th, tw), m = tiles, tf.m
    return (n, out_channels, th, m, tw, m) if layout.name == "NCHW" else (n, th, m, tw, m, out_channels)


def _untiled(xp, tiled, n, out_channels, tiles, tf: WinogradTransform, layout: _Layout, out_size):
    """The tiles side by side, (n, O, th * m, tw * m) or (n, th * m, tw * m, O), cropped to the output size."""
    (th, tw), m = tiles, tf.m
    if layout.name == "NCHW":
        out = xp.reshape(tiled, (n, out_channels, th * m, tw * m))
        return out[..., : out_size[0], : out_size[1]]
    out = xp.reshape(tiled, (n, th * m, tw * m, out_channels))
    return out[:, : out_size[0], : out_size[1], :]


def _weight_gradient(xp, x, dout, pads, groups, tf: WinogradTransform, layout: _Layout, out_size, limit):
    """dweight = G^T [sum_tiles (A dY A^T) * (B^T d B)] G, the sum one GEMM per transform position and piece."""
    n, channels = _nchw_shape(x, layout)[:2]
    out_channels = _nchw_shape(dout, layout)[1]
    tiles = tuple(-(-size // tf.m) for size in out_size)
    like = dict(dtype=x.dtype, device=device_of(x))
    piece = _samples_per_piece(channels, out_channels, tiles, tf, x.dtype, xp, limit)
    group_channels, t = channels // groups, tf.alpha**2
    if n == 0:  # an empty batch
        return xp.zeros((out_channels, group_channels, KERNEL, KERNEL), **like)

    def one_piece(part):
        v = _data_transform(xp, x[part, ...], pads, tiles, tf, layout, groups, like)
        dy = _output_tiles_adjoint(xp, dout[part, ...], tf, layout, tiles, groups, like)
        if layout.name == "NCHW":  # dy (T, G, Og, P), v (T, G, Cg, P)
            return xp.matmul(dy, xp.matrix_transpose(v))
        return xp.matmul(xp.matrix_transpose(dy), v)  # dy (T, G, P, Og), v (T, G, P, Cg)

    total = sum_pieces(map_pieces(one_piece, n, piece))
    # (T, G, Og, Cg) -> G^T . G over the two transform axes -> (3, 3, O, Cg) -> (O, Cg, 3, 3)
    total = xp.reshape(total, (t, out_channels * group_channels))
    total = xp.reshape(total, (tf.alpha, tf.alpha, out_channels * group_channels))
    g_t = xp.matrix_transpose(_matrix(xp, tf.G, like))
    grad = _along_second(xp, g_t, _along_first(xp, g_t, total))
    grad = xp.reshape(grad, (KERNEL, KERNEL, out_channels, group_channels))
    return xp.permute_dims(grad, (2, 3, 0, 1))


def _filter_transform(xp, weight, groups, tf: WinogradTransform, layout: _Layout, like):
    """U = G g G^T for every (o, c): (T, G, Og, Cg) for NCHW's products, (T, G, Cg, Og) for NHWC's."""
    out_channels, group_channels = weight.shape[:2]
    g = _matrix(xp, tf.G, like)
    w = xp.reshape(xp.permute_dims(weight, (2, 3, 0, 1)), (KERNEL, KERNEL, out_channels * group_channels))
    u = _along_second(xp, g, _along_first(xp, g, w))  # (alpha, alpha, O * Cg)
    u = xp.reshape(u, (tf.alpha**2, groups, out_channels // groups, group_channels))
    return u if layout.name == "NCHW" else xp.matrix_transpose(u)


def _data_transform(xp, x, pads, tiles, tf: WinogradTransform, layout: _Layout, groups, like):
    """V = B^T d B for every input tile d of the padded piece: (T, G, Cg, n * th * tw) for NCHW (channel-major,
    so one GEMM spans the piece), (T, G, n * th * tw, Cg) for NHWC (channels inner).

    B^T is applied along the rows first, to the stack of the alpha row slices (one per offset inside a tile, each
    stepping by m), then along the columns, to the stack of the alpha column slices of that.
    """
    n, channels = _nchw_shape(x, layout)[:2]
    th, tw = tiles
    bt = _matrix(xp, tf.BT, like)
    rows = _along_first(xp, bt, _row_stack(xp, x, pads, tiles, tf, layout, like))
    if layout.name == "NCHW":  # rows (alpha, C, n, th, Wp)
        cols = xp.stack([rows[..., _steps(j, tf.m, tw)] for j in range(tf.alpha)], axis=1)
        v = _along_second(xp, bt, cols)  # (alpha, alpha, C, n, th, tw)
        v = xp.reshape(v, (tf.alpha**2, channels, n * th * tw))
        return xp.reshape(v, (tf.alpha**2, groups, channels // groups, n * th * tw))
    # rows (alpha, n, th, Wp, C)
    cols = xp.stack([rows[:, :, :, _steps(j, tf.m, tw), :] for j in range(tf.alpha)], axis=1)
    v = _along_second(xp, bt, cols)  # (alpha, alpha, n, th, tw, C)
    v = xp.reshape(v, (tf.alpha**2, n * th * tw, channels))
    v = xp.reshape(v, (tf.alpha**2, n * th * tw, groups, channels // groups))
    return xp.permute_dims(v, (0, 2, 1, 3))  # a view when groups is 1


def _row_stack(xp, x, pads, tiles, tf: WinogradTransform, layout: _Layout, like):
    """The alpha row slices of the padded input, stacked: row i of tile row t is padded row ``t * m + i``.
    (alpha, C, n, th, Wp) in NCHW (channel-major), (alpha, n, th, Wp, C) in NHWC; ``Wp = tw * m + 2``.

    Where arrays update in place, each slice of x is assigned straight into a zero stack (the padding is never
    materialised); elsewhere x is padded first and the slices stacked."""
    th, tw = tiles
    if not updates_in_place(x):
        padded = _pad(xp, x, pads, tiles, tf, layout, like)
        if layout.name == "NCHW":  # each (n, C, th, Wp) slice made channel-major by the stack's copy
            slices = [xp.permute_dims(padded[:, :, _steps(i, tf.m, th), :], (1, 0, 2, 3)) for i in range(tf.alpha)]
        else:
            slices = [padded[:, _steps(i, tf.m, th), ...] for i in range(tf.alpha)]
        return xp.stack(slices, axis=0)
    n, channels, height, width = _nchw_shape(x, layout)
    (top, _), (left, _) = pads
    padded_w = tw * tf.m + KERNEL - 1
    cols = slice(max(0, -left), min(width, padded_w - left))  # x's columns inside the padded width
    dest_cols = slice(cols.start + left, cols.stop + left)
    if layout.name == "NCHW":
        stack = xp.zeros((tf.alpha, channels, n, th, padded_w), **like)
    else:
        stack = xp.zeros((tf.alpha, n, th, padded_w, channels), **like)
    for i in range(tf.alpha):
        # tile row t reads x's row t * m + i - top: the tile rows [first, last) whose row lies inside x
        first = max(0, -(-(top - i) // tf.m))
        last = min(th, (height - 1 - i + top) // tf.m + 1)
        if last <= first or cols.stop <= cols.start:
            continue
        rows = _steps(first * tf.m + i - top, tf.m, last - first)
        if layout.name == "NCHW":
            stack[i, :, :, first:last, dest_cols] = xp.permute_dims(x[:, :, rows, cols], (1, 0, 2, 3))
        else:
            stack[i, :, first:last, dest_cols, :] = x[:, rows, cols, :]
    return stack


def _product(xp, u, v, layout: _Layout):
    """M[t] = U[t] V[t] per transform position and group: (T, G, Og, P) in NCHW, (T, G, P, Og) in NHWC. With one
    channel per group (depthwise) the product over it is an outer product, done by broadcasting."""
    if layout.name == "NCHW":  # u (T, G, Og, Cg), v (T, G, Cg, P)
        return u * v if u.shape[-1] == 1 else xp.matmul(u, v)
    return v * u if u.shape[-2] == 1 else xp.matmul(v, u)  # v (T, G, P, Cg), u (T, G, Cg, Og)


def _output_tiles(xp, m_prod, tf: WinogradTransform, layout: _Layout, tiles, out_channels):
    """Y = A^T M A for every tile, as a permuted view in the order of :func:`_tiled_shape`:
    (n, O, th, m, tw, m) in NCHW, (n, th, m, tw, m, O) in NHWC."""
    th, tw = tiles
    at = _matrix(xp, tf.AT, dict(dtype=m_prod.dtype, device=device_of(m_prod)))
    if layout.name == "NHWC":  # (T, G, P, Og) -> (T, P, G, Og): a view when G is 1
        m_prod = xp.permute_dims(m_prod, (0, 2, 1, 3))
    positions = m_prod.shape[-1] if layout.name == "NCHW" else m_prod.shape[1]
    n = positions // (th * tw)
    m_prod = xp.reshape(m_prod, (tf.alpha**2, out_channels * positions))
    m_prod = xp.reshape(m_prod, (tf.alpha, tf.alpha, out_channels * positions))
    y = _along_first(xp, at, _along_second(xp, at, m_prod))  # (m, m, ...)
    if layout.name == "NCHW":
        y = xp.reshape(y, (tf.m, tf.m, out_channels, n, th, tw))
        return xp.permute_dims(y, (3, 2, 4, 0, 5, 1))
    y = xp.reshape(y, (tf.m, tf.m, n, th, tw, out_channels))
    return xp.permute_dims(y, (2, 3, 0, 4, 1, 5))


def _output_tiles_adjoint(xp, dout, tf: WinogradTransform, layout: _Layout, tiles, groups, like):
    """A dY A^T for every m x m tile of dout (zero padded at the bottom and right to whole tiles): the adjoint of
    :func:`_output_tiles`. (T, G, Og, P) in NCHW, (T, G, P, Og) in NHWC, P = n * th * tw."""
    n, out_channels, out_h, out_w = _nchw_shape(dout, layout)
    th, tw = tiles
    extra = ((0, th * tf.m - out_h), (0, tw * tf.m - out_w))
    dout = _pad_spatial(xp, dout, extra, layout, like)
    a = xp.matrix_transpose(_matrix(xp, tf.AT, like))  # (alpha, m)
    if layout.name == "NCHW":  # (n, O, th, r, tw, s) -> (r, s, O, n, th, tw)
        dy = xp.reshape(dout, (n, out_channels, th, tf.m, tw, tf.m))
        dy = xp.permute_dims(dy, (3, 5, 1, 0, 2, 4))
    else:  # (n, th, r, tw, s, O) -> (r, s, n, th, tw, O)
        dy = xp.reshape(dout, (n, th, tf.m, tw, tf.m, out_channels))
        dy = xp.permute_dims(dy, (2, 4, 0, 1, 3, 5))
    dy = _along_second(xp, a, _along_first(xp, a, dy))  # (alpha, alpha, ...)
    positions = n * th * tw
    if layout.name == "NCHW":
        dy = xp.reshape(dy, (tf.alpha**2, out_channels, positions))
        return xp.reshape(dy, (tf.alpha**2, groups, out_channels // groups, positions))
    dy = xp.reshape(dy, (tf.alpha**2, positions, out_channels))
    dy = xp.reshape(dy, (tf.alpha**2, positions, groups, out_channels // groups))
    return xp.permute_dims(dy, (0, 2, 1, 3))  # a view when groups is 1


def _flipped_transpose(xp, weight, groups: int):
    """(O, Cg, 3, 3) -> (C, Og, 3, 3): in and out channels swapped within each group, the kernel flipped."""
    out_channels, group_channels = weight.shape[:2]
    w = xp.reshape(weight, (groups, out_channels // groups, group_channels, KERNEL, KERNEL))
    w = xp.permute_dims(w, (0, 2, 1, 3, 4))
    w = xp.reshape(w, (groups * group_channels, out_channels // groups, KERNEL, KERNEL))
    return xp.flip(w, axis=(2, 3))


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _matrix(xp, rows, like):
    """A transform matrix (Python floats) as an array in the data's dtype, on its device: made once per (library,
    device, dtype, matrix) and kept (:func:`xpcnn._device_cache.on_device`; built per call for JAX and Dask)."""
    return on_device(xp, like["device"], ("winograd", str(like["dtype"]), rows),
                     lambda: xp.asarray([[float(v) for v in row] for row in rows], **like))  # host: once


def _along_first(xp, mat, a):
    """Contract ``mat`` (p, k) with the first axis of a (k, ...): (p, ...), as one matrix product."""
    rest = tuple(a.shape[1:])
    prod = xp.matmul(mat, xp.reshape(a, (a.shape[0], math.prod(rest))))
    return xp.reshape(prod, (mat.shape[0], *rest))


def _along_second(xp, mat, a):
    """Contract ``mat`` (p, k) with the second axis of a (q, k, ...): (q, p, ...), q matrix products."""
    rest = tuple(a.shape[2:])
    stacked = xp.broadcast_to(mat, (a.shape[0], *mat.shape))
    prod = xp.matmul(stacked, xp.reshape(a, (a.shape[0], a.shape[1], math.prod(rest))))
    return xp.reshape(prod, (a.shape[0], mat.shape[0], *rest))


def _steps(offset: int, m: int, count: int) -> slice:
    """Rows (or columns) ``offset, offset + m, ...`` (count of them): one offset inside every tile; the stop is the
    last one plus one, so it stays in bounds."""
    return slice(offset, offset + m * (count - 1) + 1, m)


def _pad(xp, x, pads, tiles, tf: WinogradTransform, layout: _Layout, like):
    """x padded by ``pads`` (negative: cropped), plus zeros at the bottom and right so that whole tiles cover the
    output: (tiles * m + 2) rows and columns."""
    sizes = (x.shape[layout.height], x.shape[layout.width])
    full = tuple((before, t * tf.m + KERNEL - 1 - n - before) for t, n, (before, _) in zip(tiles, sizes, pads))
    return _pad_spatial(xp, x, full, layout, like)


def _pad_spatial(xp, x, pads, layout: _Layout, like):
    """Zero padding of the height and width axes by ((top, bottom), (left, right)); a negative amount crops."""
    (top, bottom), (left, right) = pads
    h_axis, w_axis = layout.height, layout.width
    if min(top, bottom, left, right) < 0:
        index = [slice(None)] * 4
        height, width = x.shape[h_axis], x.shape[w_axis]
        index[h_axis] = slice(max(0, -top), height - max(0, -bottom))
        index[w_axis] = slice(max(0, -left), width - max(0, -right))
        x = x[tuple(index)]
        top, bottom, left, right = (max(0, p) for p in (top, bottom, left, right))
    if top == bottom == left == right == 0:
        return x
    shape = list(x.shape)
    height, width = shape[h_axis], shape[w_axis]
    shape[h_axis], shape[w_axis] = height + top + bottom, width + left + right
    if updates_in_place(x):
        padded = xp.zeros(tuple(shape), **like)
        index = [slice(None)] * 4
        index[h_axis], index[w_axis] = slice(top, top + height), slice(left, left + width)
        padded[tuple(index)] = x
        return padded

    def block(axis, size, base):
        block_shape = list(base.shape)
        block_shape[axis] = size
        return xp.zeros(tuple(block_shape), **like)

    x = xp.concat([block(w_axis, left, x), x, block(w_axis, right, x)], axis=w_axis)
    return xp.concat([block(h_axis, top, x), x, block(h_axis, bottom, x)], axis=h_axis)


def _samples_per_piece(channels, out_channels, tiles, tf: WinogradTransform, dtype, xp, limit) -> int:
    """Samples whose padded rows, transformed input, product and output tiles fit into ``limit`` bytes (>= 1)."""
    th, tw = tiles
    padded_w = tw * tf.m + KERNEL - 1
    elements = (
        tf.alpha * th * padded_w * channels  # the row stack
        + tf.alpha**2 * th * tw * (2 * channels + 2 * out_channels)  # column stack and V; M and its transform
    )
    return max(1, limit // max(1, elements * xp.finfo(dtype).bits // 8))

"""2-D convolution, transposed convolution and their backward passes: one family on one window primitive.

Cross-correlation over NCHW input (or NHWC with ``data_format="NHWC"``) with ``(out_channels, in_channels // groups,
kh, kw)`` weights in both layouts, as PyTorch.
With ``G`` groups of ``Cg = C / G`` input and ``Og = O / G`` output channels, ``K = kh * kw`` kernel offsets and
``P = out_h * out_w`` output positions:

Which algorithm computes each part is chosen in one place, ``conv2d_plan``, from the cost model
(:mod:`xpcnn._tuning`), and can be chosen explicitly with the ops' private ``_plan`` argument. The batch is
processed in pieces whose column buffer fits the workspace limit (:mod:`xpcnn.config`). When the whole batch fits
in one piece, the cache keeps its columns for the backward pass (at most the limit's bytes); otherwise the backward
pass gathers them again, piece by piece (a piece's buffer is then reused hot in the caches: keeping every piece's
columns instead was slower on the host, fresh memory for each).

Channels-last (NHWC) is computed natively: the windows are taken on axes 1 and 2, and the columns are
``(G, N*P, K*Cg)`` (every position of the batch a row, the channels contiguous within each kernel offset), so
``out = cols @ weight^T`` comes out channels-last with no transposed copy and the weight gradient is one product.

Forward (im2col, one matrix product per group, the result already in NCHW order)::

    cols[n, g, (c, i, j), p] = x_pad[n, g*Cg + c, oh*sh + i*dh, ow*sw + j*dw]      (N, G, Cg*K, P)
    out[n, g, o, p]          = sum_q weight[g, o, q] * cols[n, g, q, p]  + bias     (N, G, Og, P)

Backward::

    dweight[g]  = sum_n dout[n, g] @ cols[n, g]^T                                  (G, Og, Cg*K)
    dcols[n, g] = weight[g]^T @ dout[n, g]                                         (N, G, Cg*K, P)
    dx          = col2im(dcols)   (each column added back where it was gathered; on NumPy, for stride 1, in rows
                                   extended to the padded width, one contiguous run per kernel offset)
    dbias       = dout summed over N, out_h and out_w

With stride 1, dx is itself a convolution: of dout, padded by ``d(k-1) - p`` on each side, with the kernel
flipped and its in/out channels swapped (per group). That path gathers and multiplies like the forward pass
instead of adding K strided slices back. It is taken when the padding allows (``p <= d(k-1)``) and when it is the
cheaper one: it gathers ``O * H * W`` values per kernel offset where col2im adds ``C * out_h * out_w`` (an add
costing about two copies), so layers that expand the channels (1 -> 32, say) keep col2im. That path and the wide
rows put zeros in front of the weights, so they are taken only for weights known to be finite (a NaN or inf weight
would spread NaN where PyTorch has none).

Winograd (:mod:`xpcnn._winograd`): a 3 x 3, stride-1, dilation-1 convolution with enough channels per group
computes each part with F(m x m, 3 x 3) instead, about four times fewer multiplies -- the forward pass, dx as the
transposed correlation above, and dweight as the adjoint of the forward pass in the weights. Its float32 rounding
error is larger (about 1e-5 relative), and it spreads an inf or NaN over whole tiles, so the cost model takes it
only for data known to be finite (``conv2d_plan``); ``algorithm=`` and :func:`xpcnn.config.set_winograd`
switch it off (or force it).

The transposed convolution (``torch.nn.functional.conv_transpose2d``, weights ``(C_in, C_out / G, kh, kw)``) is
the same pair read the other way round. Its forward pass is conv2d's input gradient with x in dout's place
(:func:`_correlate_transposed`: col2im, or the correlation above); its backward pass is conv2d's forward pass
applied to dout, and conv2d's weight gradient with x in dout's place, from one set of columns::

    out         = col2im(weight^T @ x) + bias
    cols        = im2col(dout)
    dx          = weight @ cols
    dweight     = sum_n x[n] @ cols[n]^T
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, NamedTuple, TypeAlias

from array_api_compat import device as device_of

from .._dispatch import known_finite
from .._precision import half_in_float32, half_in_float32_backward
from .._layout import DATA_FORMATS, NCHW, NHWC, check_data_format  # noqa: F401
from .._tuning import Profile, profile_for
from .._typing import Array
from .._validation import (
    as_bool,
    as_int,
    check_cache,
    check_floating,
    check_same_dtype,
    check_shape,
    check_upstream,
    int_pair,
    namespace_and_device,
)
from .._windows import (
    WindowGeometry,
    concat_pieces,
    map_pieces,
    samples_per_piece,
    scatter_wide_rows,
    scatter_windows,
    stacked_windows,
    sum_pieces,
    window_geometry,
)
from .._winograd import winograd_applies, winograd_forward, winograd_input_grad, winograd_pays_off, winograd_tile
from .._winograd import winograd_weight_grad
from ..config import get_winograd, resolve_workspace_limit

__all__ = [
    "Conv2dCache",
    "conv2d_forward",
    "conv2d_backward",
    "ConvTranspose2dCache",
    "conv_transpose2d_forward",
    "conv_transpose2d_backward",
]

IntPair: TypeAlias = int | tuple[int, int]
"""An int for both axes, or a (height, width) pair."""

AUTO, IM2COL, WINOGRAD = "auto", "im2col", "winograd"
ALGORITHMS = (AUTO, IM2COL, WINOGRAD)
"""conv2d's public ``algorithm=`` choice: the cost model's (``"auto"``, Winograd where it pays off, the data is
known finite and :func:`xpcnn.config.set_winograd` allows it), im2col's family only (``"im2col"``), or Winograd
for the forward pass, dx and dweight (``"winograd"``: 3 x 3 kernels, stride 1, dilation 1; whatever the data)."""


# --------------------------------------------------------------------------------------------------------------
# The algorithms, chosen in one place
# --------------------------------------------------------------------------------------------------------------


class ForwardAlgorithm(str, enum.Enum):
    """How the correlation itself (conv2d's forward pass) is computed."""

    IM2COL = "im2col"  # gather the windows as columns, one matrix product per group
    WINOGRAD = "winograd"  # 3x3, stride 1, dilation 1: F(m x m, 3 x 3) (xpcnn._winograd), 4x fewer multiplies


class DxAlgorithm(str, enum.Enum):
    """How the input gradient (and conv_transpose2d's forward pass) is computed."""

    COL2IM = "col2im"  # dcols = weight^T @ dout, each kernel offset's part added back where it was gathered
    COL2IM_WIDE_ROWS = "col2im_wide_rows"  # the same, rows extended to the padded width: one run per offset (NCHW)
    TRANSPOSED_CORRELATION = "transposed_correlation"  # stride 1: a correlation of dout with the flipped kernel
    WINOGRAD = "winograd"  # that correlation by Winograd (3x3, stride 1, dilation 1)


class WeightGradientAlgorithm(str, enum.Enum):
    """How ``dweight[g] = sum_n dout[n, g] @ cols[n, g]^T`` is multiplied (NCHW; NHWC's columns already hold the
    batch in their rows: always one product)."""

    PER_SAMPLE = "per_sample"  # one product per sample, summed
    BATCH_FOLDED = "batch_folded"  # one product with the batch folded into the positions (a transposed copy)
    WINOGRAD = "winograd"  # the adjoint of Winograd's forward pass in the weights (3x3, stride 1, dilation 1)


class Conv2dPlan(NamedTuple):
    """The algorithm of each part of a convolution, chosen by ``conv2d_plan`` from the cost model
    (:mod:`xpcnn._tuning`). Every choice gives the same result (up to rounding); tests pick one explicitly with
    the ops' private ``_plan`` argument (a plan, or a mapping of the fields to change)."""

    forward: ForwardAlgorithm
    dx: DxAlgorithm
    dweight: WeightGradientAlgorithm
    keep_columns: bool
    """The forward pass keeps its columns for the weight gradient when the batch is one piece."""
    tile: int | None = None
    """m of Winograd's F(m x m, 3 x 3) for the parts it computes (None: the cost model's choice)."""
    if_dout_not_finite: tuple[DxAlgorithm, WeightGradientAlgorithm] | None = None
    """dx and dweight for a dout not known to be finite, when the cost model chose Winograd for a finite one (it
    spreads an inf or NaN over whole tiles); None: the same whatever dout holds (:func:`plan_for_dout`)."""


class ConvShape(NamedTuple):
    """One convolution as the algorithms see it: from ``channels`` to ``out_channels`` in ``groups``, its window
    geometry (input and output sizes) and the data layout."""

    geometry: WindowGeometry
    channels: int
    out_channels: int
    groups: int
    data_format: str

    @property
    def channels_last(self) -> bool:
        return self.data_format == NHWC


def conv2d_plan(xp, x: Array, weight: Array, conv: ConvShape, overrides: Conv2dPlan | Mapping | None = None,
                *, algorithm: str = AUTO, transposed: bool = False) -> Conv2dPlan:
    """The algorithms for ``conv`` on x's device, from the cost model (:func:`xpcnn._tuning.profile_for`);
    ``algorithm`` (:data:`ALGORITHMS`) narrows the choice, ``overrides`` (a plan, or a mapping of field names to
    values) replaces it. ``transposed``: for conv_transpose2d, whose forward pass is dx with x in dout's place.

    * Winograd (:mod:`xpcnn._winograd`) for a 3 x 3, stride-1, dilation-1 convolution where the cost model's
      rule (:func:`xpcnn._winograd.winograd_pays_off`: enough channels per group, a large enough output) says
      it pays off, :func:`xpcnn.config.get_winograd` allows it, and the data each part reads is known finite
      (:func:`xpcnn._dispatch.known_finite`; it spreads an inf or NaN over whole tiles where im2col keeps it to
      the windows): forward, x and weight; dx, dout and weight; dweight, x and dout. dout is checked by the
      backward pass (:func:`plan_for_dout`); the plan carries the choice for a dout that is not finite.
    * forward: im2col otherwise.
    * dx: a correlation of dout where stride 1 allows it and it gathers at most ``transposed_dx_ratio`` times
      what col2im adds; else col2im, in wide rows where the windows reach the padded input's far edge (NCHW,
      stride 1) and the output channels are no more than ``C * K``. The correlation and the wide rows put zeros in
      front of the weights, so both need weights known to be finite (:func:`xpcnn._dispatch.known_finite`): a
      NaN or inf weight would spread NaN where PyTorch has none.
    * dweight: per sample where ``P >= per_sample_weight_gradient_ratio * Og``, else batch-folded.
    * keep_columns: when the whole batch is one piece (its columns then take at most the workspace limit).
    * tile: F(4x4) up to ``winograd_f4_max_channels`` channels per group, F(2x2) beyond.

    ``algorithm="winograd"`` takes Winograd for every part whatever the rule, the switch and the data;
    ``"im2col"`` never. Raises a ValueError for an unknown algorithm or field, and for Winograd on a
    convolution that is not 3 x 3, stride 1, dilation 1.
    """
    if isinstance(overrides, Conv2dPlan):
        tile = _winograd_tile(profile_for(x), conv) if overrides.tile is None else overrides.tile
        return _checked_plan(overrides._replace(tile=tile), conv)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    profile = profile_for(x)
    finite_weight = known_finite(xp, weight)
    dx = _im2col_dx(profile, conv, finite_weight)
    dweight = _im2col_dweight(profile, conv)
    plan = Conv2dPlan(forward=ForwardAlgorithm.IM2COL, dx=dx, dweight=dweight, keep_columns=True,
                      tile=_winograd_tile(profile, conv))
    if algorithm == WINOGRAD:
        plan = plan._replace(forward=ForwardAlgorithm.WINOGRAD, dx=DxAlgorithm.WINOGRAD,
                             dweight=WeightGradientAlgorithm.WINOGRAD)
    elif algorithm == AUTO and get_winograd() and _winograd_pays_off(profile, conv):
        finite_x = known_finite(xp, x)  # conv_transpose2d: its x is in dout's place
        if transposed:
            plan = plan._replace(dx=DxAlgorithm.WINOGRAD) if finite_x and finite_weight else plan
        else:
            plan = plan._replace(
                forward=ForwardAlgorithm.WINOGRAD if finite_x and finite_weight else plan.forward,
                dx=DxAlgorithm.WINOGRAD if finite_weight else dx,
                dweight=WeightGradientAlgorithm.WINOGRAD if finite_x else dweight,
            )
            if (plan.dx, plan.dweight) != (dx, dweight):
                plan = plan._replace(if_dout_not_finite=(dx, dweight))
    if overrides:
        unknown = set(overrides) - set(Conv2dPlan._fields)
        if unknown:
            raise ValueError(f"_plan names no field {sorted(unknown)}; the fields are {Conv2dPlan._fields}")
        plan = plan._replace(**overrides)
        if plan.tile is None:
            plan = plan._replace(tile=_winograd_tile(profile, conv))
        if plan.if_dout_not_finite is not None and "if_dout_not_finite" not in overrides:  # forced parts stay
            fallback = tuple(overrides.get(name, chosen) for name, chosen in zip(("dx", "dweight"),
                                                                                   plan.if_dout_not_finite))
            plan = plan._replace(if_dout_not_finite=fallback)
    fallback = plan.if_dout_not_finite
    if fallback is not None:
        fallback = (DxAlgorithm(fallback[0]), WeightGradientAlgorithm(fallback[1]))
        fallback = None if fallback == (DxAlgorithm(plan.dx), WeightGradientAlgorithm(plan.dweight)) else fallback
    return _checked_plan(Conv2dPlan(ForwardAlgorithm(plan.forward), DxAlgorithm(plan.dx),
                                    WeightGradientAlgorithm(plan.dweight), bool(plan.keep_columns),
                                    plan.tile, fallback), conv)


def plan_for_dout(xp, plan: Conv2dPlan, dout: Array) -> Conv2dPlan:
    """The backward pass's plan for this dout: where the cost model chose Winograd for dx or dweight (assuming a
    finite dout), a dout not known to be finite (:func:`xpcnn._dispatch.known_finite`) takes
    ``plan.if_dout_not_finite`` instead. A dout that is finite, or a plan without that field, keeps the plan."""
    if plan.if_dout_not_finite is None or known_finite(xp, dout):
        return plan
    dx, dweight = plan.if_dout_not_finite
    return plan._replace(dx=dx, dweight=dweight, if_dout_not_finite=None)


def _im2col_dx(profile: Profile, conv: ConvShape, finite_weight: bool) -> DxAlgorithm:
    """dx without Winograd: the transposed correlation, col2im in wide rows, or col2im (``conv2d_plan``)."""
    geometry = conv.geometry
    if finite_weight and _transposed_geometry(geometry, conv.channels, conv.out_channels,
                                              profile.transposed_dx_ratio) is not None:
        return DxAlgorithm.TRANSPOSED_CORRELATION
    if (finite_weight and not conv.channels_last and _windows_reach_the_far_edge(geometry)
            and conv.out_channels <= conv.channels * len(geometry.offsets())):  # extending dout < dcols' scatter
        return DxAlgorithm.COL2IM_WIDE_ROWS
    return DxAlgorithm.COL2IM


def _im2col_dweight(profile: Profile, conv: ConvShape) -> WeightGradientAlgorithm:
    """dweight without Winograd: per sample where ``P >= per_sample_weight_gradient_ratio * Og``, else folded."""
    positions = conv.geometry.out_size[0] * conv.geometry.out_size[1]
    per_sample = positions >= profile.per_sample_weight_gradient_ratio * (conv.out_channels // conv.groups)
    return WeightGradientAlgorithm.PER_SAMPLE if per_sample else WeightGradientAlgorithm.BATCH_FOLDED


def _winograd_geometry(conv: ConvShape) -> bool:
    """Whether Winograd computes ``conv``: a 3 x 3 kernel, stride 1, dilation 1."""
    geometry = conv.geometry
    return winograd_applies(geometry.kernel, geometry.stride, geometry.dilation)


def _winograd_tile(profile: Profile, conv: ConvShape) -> int | None:
    """The cost model's F(m x m, 3 x 3) tile for ``conv`` when Winograd computes it, else None."""
    if not _winograd_geometry(conv):
        return None
    return winograd_tile(conv.channels // conv.groups, conv.out_channels // conv.groups, profile=profile)


def _winograd_pays_off(profile: Profile, conv: ConvShape) -> bool:
    """The cost model's rule for Winograd on ``conv`` (channels per group and output size; dx's output, x's
    size, is never smaller)."""
    return _winograd_geometry(conv) and winograd_pays_off(
        conv.channels // conv.groups, conv.out_channels // conv.groups, conv.geometry.out_size, profile=profile
    ) is not None


def _checked_plan(plan: Conv2dPlan, conv: ConvShape) -> Conv2dPlan:
    """``plan``, or a ValueError when it takes Winograd for a convolution Winograd does not compute."""
    parts = (plan.forward, plan.dx, plan.dweight, *(plan.if_dout_not_finite or ()))
    if any(part == WINOGRAD for part in parts):
        if not _winograd_geometry(conv):
            geometry = conv.geometry
            raise ValueError(f"the winograd algorithm needs a 3 x 3 kernel, stride 1 and dilation 1, got kernel "
                             f"{geometry.kernel}, stride {geometry.stride} and dilation {geometry.dilation}")
        if plan.tile not in (2, 4):
            raise ValueError(f"the winograd tile must be 2 or 4, got {plan.tile!r}")
    return plan


# --------------------------------------------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------------------------------------------


class Conv2dCache(NamedTuple):
    """What :func:`conv2d_backward` needs, returned by :func:`conv2d_forward` (treat it as opaque).

    Fields: ``x``, the input, 4-D (an unbatched input with its batch axis of one), in ``data_format``;
    ``weight``, the weights (PyTorch's layout); ``has_bias``, whether the forward pass had a bias (dbias is then
    computed, else None); ``conv``, the convolution's shape (channels, groups, window geometry, data format);
    ``plan``, the algorithms chosen for the forward pass, dx and dweight; ``workspace_limit``, the bytes for one
    batch piece's column buffer, as resolved by the forward pass; ``unbatched``, whether x was (C, H, W) (or
    (H, W, C)): dout and dx are then too; ``columns``, x's columns when the plan keeps them and the batch was one
    piece (else None: they are gathered again, piece by piece); ``winograd_workspace_limit``, the bytes for one
    Winograd piece's arrays (None: ``workspace_limit``).
    """

    x: Array
    weight: Array
    has_bias: bool
    conv: ConvShape
    plan: Conv2dPlan
    workspace_limit: int  # bytes for one piece's column buffer
    unbatched: bool = False  # x was (C, H, W) (or (H, W, C)): dout and dx are too
    columns: Array | None = None
    winograd_workspace_limit: int | None = None  # bytes for one Winograd piece's arrays (None: workspace_limit)

    @property
    def geometry(self) -> WindowGeometry:
        return self.conv.geometry

    @property
    def groups(self) -> int:
        return self.conv.groups


@half_in_float32
def conv2d_forward(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    *,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    data_format: str = NCHW,
    workspace_limit: int | None = None,
    algorithm: str = AUTO,
    _plan: Conv2dPlan | Mapping | None = None,
) -> tuple[Array, Conv2dCache]:
    """2-D convolution (cross-correlation) as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    x : array (N, C, H, W), or (N, H, W, C) with ``data_format="NHWC"``; real floating
        Unbatched input, (C, H, W) or (H, W, C), is taken as a batch of one and gives unbatched output.
    weight : array (O, C // groups, kh, kw), x's dtype
        PyTorch's layout whatever the data format.
    bias : array (O,) or None
    stride, dilation : int or (height, width) pair (a one-element sequence counts for both axes), >= 1
    padding : int, (height, width) pair, ``"valid"`` or ``"same"``
        ``"same"`` needs stride 1; an odd total pad puts the extra row/column at the bottom/right, as PyTorch.
    groups : int
        Divides C and O.
    data_format : ``"NCHW"`` (default) or ``"NHWC"``
        The layout of x and out (never guessed from the shapes).
    workspace_limit : int, optional
        Bytes for one batch piece's column buffer, or Winograd's working arrays (default: the global setting of
        :mod:`xpcnn.config`, else the device profile's ``workspace_limit`` or ``winograd_workspace_limit``).
    algorithm : ``"auto"`` (default), ``"im2col"`` or ``"winograd"``
        How the forward pass, dx and dweight are computed. ``"auto"``: the cost model's choice (``conv2d_plan``),
        Winograd's F(m x m, 3 x 3) for 3 x 3, stride-1, dilation-1 convolutions with 16 or more channels per
        group where the data is known finite (NumPy) and :func:`xpcnn.config.set_winograd` allows it;
        ``"im2col"``: never Winograd; ``"winograd"``: Winograd for the three parts (3 x 3, stride 1, dilation 1
        only; an inf or NaN then spreads over the tiles that hold it). Winograd's float32 results differ from
        im2col's by rounding (about 1e-5 relative).

    Returns
    -------
    out : array (N, O, out_h, out_w), or (N, out_h, out_w, O) channels-last
        ``out_h = floor((H + 2ph - dh(kh-1) - 1) / sh) + 1``, likewise out_w.
    cache : Conv2dCache
        For :func:`conv2d_backward`: x, weight, the plan, and the columns when the cost model keeps them.

    Raises
    ------
    TypeError
        Non-arrays, non-floating or mismatched dtypes, non-int arguments.
    ValueError
        Wrong ranks, channel, group or bias mismatches (naming ``data_format`` when the other layout would fit),
        empty kernels, arrays from different libraries or devices, bad stride, padding, dilation or data_format,
        a kernel larger than the padded input, an unknown algorithm, ``"winograd"`` for another kernel, stride or
        dilation.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    >>> weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    >>> bias = np.zeros(4, dtype=np.float32)
    >>> out, cache = F.conv2d_forward(x, weight, bias, padding=1)
    >>> out.shape
    (2, 4, 8, 8)

    Channels-last data (the weight keeps PyTorch's layout), an explicit algorithm, an unbatched input:

    >>> out_nhwc, _ = F.conv2d_forward(x.transpose(0, 2, 3, 1), weight, bias, padding=1, data_format="NHWC")
    >>> out_nhwc.shape, bool(np.allclose(out_nhwc.transpose(0, 3, 1, 2), out, atol=1e-5))
    ((2, 8, 8, 4), True)
    >>> out_winograd, _ = F.conv2d_forward(x, weight, bias, padding=1, algorithm="winograd")
    >>> bool(np.allclose(out_winograd, out, atol=1e-4))
    True
    >>> F.conv2d_forward(x[0], weight, padding="same")[0].shape
    (4, 8, 8)
    >>> F.conv2d_forward(x, weight, stride=2, algorithm="winograd")
    Traceback (most recent call last):
        ...
    ValueError: the winograd algorithm needs a 3 x 3 kernel, stride 1 and dilation 1, got kernel (3, 3), ...
    """
    args = _conv2d_arguments(x, weight, bias, stride, padding, dilation, groups, data_format)
    xp, x, conv = args.xp, args.x, args.conv
    limit = resolve_workspace_limit(workspace_limit, x)
    winograd_limit = resolve_workspace_limit(workspace_limit, x, field="winograd_workspace_limit")
    plan = conv2d_plan(xp, x, weight, conv, _plan, algorithm=algorithm)
    out, columns = _forward(xp, x, weight, conv, plan, limit, winograd_limit)
    if bias is not None:
        out = out + _per_channel(xp, bias, conv.data_format)
    cache = Conv2dCache(x, weight, bias is not None, conv, plan, limit, args.unbatched, columns, winograd_limit)
    return (out[0, ...] if args.unbatched else out), cache


@half_in_float32_backward
def conv2d_backward(
    dout: Array, cache: Conv2dCache, *, input_grad: bool = True, _plan: Conv2dPlan | Mapping | None = None
) -> tuple[Array | None, Array, Array | None]:
    """Gradients of :func:`conv2d_forward`.

    Parameters
    ----------
    dout : array of the forward output's shape, layout and dtype
    cache : Conv2dCache
        What :func:`conv2d_forward` returned.
    input_grad : bool
        False when x needs no gradient: only dweight and dbias are computed.

    Returns
    -------
    dx : array of x's shape (and layout), or None when not ``input_grad``
    dweight : array (O, C // groups, kh, kw)
    dbias : array (O,), or None when bias was None

    Raises
    ------
    TypeError
        A cache from another op, dout not an array or not of the forward input's dtype, a non-bool input_grad.
    ValueError
        dout of another shape, library or device than the forward pass's.

    With ``cols`` the columns of x (kept by the forward pass or gathered again, piece by piece)::

        dweight[g] = sum_n dout[n, g] @ cols[n, g]^T
        dx         = col2im(weight^T @ dout), or, with stride 1, a correlation of dout with the flipped kernel
        dbias      = dout summed over every axis but the channels

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    >>> weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    >>> out, cache = F.conv2d_forward(x, weight, np.zeros(4, dtype=np.float32), stride=2, padding=1)
    >>> dx, dweight, dbias = F.conv2d_backward(np.ones_like(out), cache)
    >>> out.shape, dx.shape, dweight.shape, dbias.shape
    ((2, 4, 4, 4), (2, 3, 8, 8), (4, 3, 3, 3), (4,))
    >>> dx, dweight, dbias = F.conv2d_backward(np.ones_like(out), cache, input_grad=False)
    >>> dx is None, dweight.shape
    (True, (4, 3, 3, 3))
    """
    check_cache(cache, Conv2dCache, "conv2d")
    input_grad = as_bool(input_grad, "input_grad")
    x, weight, conv = cache.x, cache.weight, cache.conv
    xp, dout = _checked_dout(dout, cache, _out_shape(x.shape[0], conv.out_channels, conv))
    plan = cache.plan if _plan is None else conv2d_plan(xp, x, weight, conv, _replanned(cache.plan, _plan))
    plan = plan_for_dout(xp, plan, dout)
    limits = (cache.workspace_limit, cache.winograd_workspace_limit or cache.workspace_limit)

    dweight = _weight_gradient(xp, dout, x, conv, plan, limits, cache.columns)
    dx = _input_gradient(xp, dout, weight, conv, plan, limits) if input_grad else None
    dbias = xp.sum(dout, axis=_non_channel_axes(conv.data_format)) if cache.has_bias else None
    return (dx[0, ...] if cache.unbatched and dx is not None else dx), dweight, dbias


class _Arguments(NamedTuple):
    xp: Any
    x: Array  # 4-D
    conv: ConvShape
    unbatched: bool


def _conv2d_arguments(x, weight, bias, stride, padding, dilation, groups, data_format) -> _Arguments:
    """conv2d's arguments checked (each error names the argument) and normalised."""
    xp, _ = namespace_and_device(x=x, weight=weight, bias=bias, optional=("bias",))
    data_format = data_format_checked(data_format)
    check_floating(xp, x, "x")
    x, unbatched = _batched(xp, x, "x", data_format)
    _check_weight(weight, "weight", "(out_channels, in_channels // groups, kh, kw)")
    check_same_dtype(weight, "weight", x, "x")
    groups = as_int(groups, "groups", minimum=1)
    out_channels, group_channels, kh, kw = weight.shape
    channels, (height, width) = _channels_and_size(x, data_format)
    if channels % groups:
        raise ValueError(f"groups={groups} must divide the input channels, got x with {channels} channels"
                         + _layout_hint(x, data_format, lambda c: c % groups == 0 and c != channels))
    if out_channels % groups:
        raise ValueError(f"groups={groups} must divide out_channels, got weight with {out_channels} output channels")
    expected = group_channels * groups
    if channels != expected:
        raise ValueError(
            f"x has {channels} channels but weight expects weight.shape[1] * groups = {group_channels} * {groups} = "
            f"{expected}" + _layout_hint(x, data_format, lambda c: c == expected)
        )
    _check_bias(bias, out_channels, "out_channels of weight", x)
    stride, padding, dilation = conv_options((kh, kw), stride, padding, dilation)
    geometry = window_geometry((height, width), (kh, kw), stride, dilation, padding, kernel_name="weight kernel size")
    return _Arguments(xp, x, ConvShape(geometry, channels, out_channels, groups, data_format), unbatched)


def conv_options(kernel, stride=1, padding=0, dilation=1):
    """The convolution arguments checked and normalised: ``(stride, padding, dilation)``, padding as
    ((top, bottom), (left, right)). :class:`xpcnn.nn.Conv2d` calls it when it is built, the op on every call."""
    stride = _int_pair(stride, "stride", minimum=1)
    dilation = _int_pair(dilation, "dilation", minimum=1)
    return stride, _padding_pairs(padding, kernel, stride, dilation), dilation


def _padding_pairs(padding, kernel, stride, dilation):
    """((top, bottom), (left, right)) from an int, a pair, ``"valid"`` or ``"same"``."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride {stride}")
            totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return tuple((total // 2, total - total // 2) for total in totals)
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    ph, pw = _int_pair(padding, "padding", minimum=0)
    return ((ph, ph), (pw, pw))


def _int_pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """:func:`xpcnn._validation.int_pair`, also taking a one-element sequence for both axes, as PyTorch."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    return int_pair(value, name, minimum=minimum)


# --------------------------------------------------------------------------------------------------------------
# conv_transpose2d
# --------------------------------------------------------------------------------------------------------------


class ConvTranspose2dCache(NamedTuple):
    """What :func:`conv_transpose2d_backward` needs, returned by :func:`conv_transpose2d_forward` (treat it as
    opaque).

    Fields: ``x``, the input, 4-D (an unbatched input with its batch axis of one), in ``data_format``;
    ``weight``, the weights (PyTorch's layout, (C_in, C_out // groups, kh, kw)); ``has_bias``, whether the forward
    pass had a bias (dbias is then computed, else None); ``conv``, the convolution the op transposes: from the
    output (Hout, Wout) with C_out channels to x's (H, W) with C_in; ``plan``, the algorithms chosen (the forward
    pass is that convolution's dx; the backward pass is im2col's); ``workspace_limit``, the bytes for one batch
    piece's column buffer, as resolved by the forward pass; ``unbatched``, whether x was (C_in, H, W) (or
    (H, W, C_in)): dout and dx are then too; ``winograd_workspace_limit``, the bytes for one Winograd piece's
    arrays (None: ``workspace_limit``).
    """

    x: Array
    weight: Array
    has_bias: bool
    conv: ConvShape
    plan: Conv2dPlan
    workspace_limit: int  # bytes for one piece's column buffer
    unbatched: bool = False
    winograd_workspace_limit: int | None = None  # bytes for one Winograd piece's arrays (None: workspace_limit)

    @property
    def geometry(self) -> WindowGeometry:
        return self.conv.geometry

    @property
    def groups(self) -> int:
        return self.conv.groups


@half_in_float32
def conv_transpose2d_forward(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    *,
    stride: IntPair = 1,
    padding: IntPair = 0,
    output_padding: IntPair = 0,
    groups: int = 1,
    dilation: IntPair = 1,
    data_format: str = NCHW,
    workspace_limit: int | None = None,
    _plan: Conv2dPlan | Mapping | None = None,
) -> tuple[Array, ConvTranspose2dCache]:
    """2-D transposed convolution as ``torch.nn.functional.conv_transpose2d``: the input gradient of the
    convolution with the same weights, stride, padding, dilation and groups, from x in the place of dout.

    Parameters
    ----------
    x : array (N, C_in, H, W), or (N, H, W, C_in) with ``data_format="NHWC"``; real floating
        Unbatched input, (C_in, H, W) or (H, W, C_in), is taken as a batch of one and gives unbatched output.
    weight : array (C_in, C_out // groups, kh, kw), x's dtype
        PyTorch's layout whatever the data format.
    bias : array (C_out,) or None
    stride, padding, dilation : int or (height, width) pair (a one-element sequence counts for both axes)
        stride and dilation >= 1, padding >= 0 (removed from both sides of the output).
    output_padding : int or (height, width) pair
        Rows and columns added to the bottom and right of the output (reached by no window: bias only), each
        smaller than the stride or the dilation of its axis.
    groups : int
        Divides C_in; ``C_out = weight.shape[1] * groups``.
    data_format : ``"NCHW"`` (default) or ``"NHWC"``
        The layout of x and out (never guessed from the shapes).
    workspace_limit : int, optional
        Bytes for one batch piece's column buffer (default: the global setting of :mod:`xpcnn.config`).

    Returns
    -------
    out : array (N, C_out, Hout, Wout), or (N, Hout, Wout, C_out) channels-last
        ``Hout = (H - 1) * sh - 2 * ph + dh * (kh - 1) + output_padding_h + 1``, likewise Wout.
    cache : ConvTranspose2dCache
        For :func:`conv_transpose2d_backward`.

    Raises
    ------
    TypeError
        Non-arrays (None for x or weight), non-floating or mismatched dtypes, non-int arguments.
    ValueError
        Wrong ranks, channel, group or bias mismatches (naming ``data_format`` when the other layout would fit),
        empty kernels or planes, arrays from different libraries or devices, bad stride, padding, dilation or
        data_format, output_padding not below the stride or dilation, an output smaller than 1 x 1.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    >>> weight = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)  # (C_in, C_out // groups, kh, kw)
    >>> out, cache = F.conv_transpose2d_forward(x, weight, stride=2, padding=1, output_padding=1)
    >>> out.shape
    (2, 2, 16, 16)
    >>> out_nhwc, _ = F.conv_transpose2d_forward(x.transpose(0, 2, 3, 1), weight, stride=2, padding=1,
    ...                                          output_padding=1, data_format="NHWC")
    >>> out_nhwc.shape, bool(np.allclose(out_nhwc.transpose(0, 3, 1, 2), out, atol=1e-5))
    ((2, 16, 16, 2), True)
    """
    args = _conv_transpose2d_arguments(x, weight, bias, stride, padding, output_padding, dilation, groups,
                                       data_format)
    xp, x, conv, unbatched = args.xp, args.x, args.conv, args.unbatched
    limit = resolve_workspace_limit(workspace_limit, x)
    winograd_limit = resolve_workspace_limit(workspace_limit, x, field="winograd_workspace_limit")
    plan = conv2d_plan(xp, x, weight, conv, _plan, transposed=True)
    if WINOGRAD in (plan.forward, plan.dweight):
        raise ValueError("conv_transpose2d's backward pass is im2col's: only _plan's dx (its forward pass) may be "
                         f"'winograd', got {plan}")
    out = _input_gradient(xp, x, weight, conv, plan, (limit, winograd_limit))
    if bias is not None:
        out = out + _per_channel(xp, bias, conv.data_format)
    cache = ConvTranspose2dCache(x, weight, bias is not None, conv, plan, limit, unbatched, winograd_limit)
    return (out[0, ...] if unbatched else out), cache


@half_in_float32_backward
def conv_transpose2d_backward(
    dout: Array, cache: ConvTranspose2dCache, *, input_grad: bool = True
) -> tuple[Array | None, Array, Array | None]:
    """Gradients of :func:`conv_transpose2d_forward`: a convolution of dout, and its weight gradient.

    Parameters
    ----------
    dout : array of the forward output's shape, layout and dtype
    cache : ConvTranspose2dCache
        What :func:`conv_transpose2d_forward` returned.
    input_grad : bool
        False when x needs no gradient: only dweight and dbias are computed.

    Returns
    -------
    dx : array of x's shape (and layout), or None when not ``input_grad``
    dweight : array (C_in, C_out // groups, kh, kw)
    dbias : array (C_out,), or None when bias was None

    Raises
    ------
    TypeError
        A cache from another op, dout not an array or not of the forward input's dtype, a non-bool input_grad.
    ValueError
        dout of another shape, library or device than the forward pass's.

    With ``cols`` the windows of dout (the columns conv2d gathers from its input, dout zero padded by p)::

        dx[n, g]    = weight[g] @ cols[n, g]                     (conv2d of dout with the same weights)
        dweight[g]  = sum_n x[n, g] @ cols[n, g]^T               (conv2d's weight gradient, x in dout's place)
        dbias       = dout summed over every axis but the channels

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import functional as F
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    >>> weight = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    >>> out, cache = F.conv_transpose2d_forward(x, weight, np.zeros(2, dtype=np.float32), stride=2)
    >>> dx, dweight, dbias = F.conv_transpose2d_backward(np.ones_like(out), cache)
    >>> out.shape, dx.shape, dweight.shape, dbias.shape
    ((2, 2, 17, 17), (2, 3, 8, 8), (3, 2, 3, 3), (2,))
    """
    check_cache(cache, ConvTranspose2dCache, "conv_transpose2d")
    input_grad = as_bool(input_grad, "input_grad")
    x, weight, conv = cache.x, cache.weight, cache.conv
    n = x.shape[0]
    out_shape = (n, conv.channels, *conv.geometry.in_size)
    xp, dout = _checked_dout(dout, cache, out_shape if conv.data_format == NCHW else _to_nhwc(out_shape))
    dbias = xp.sum(dout, axis=_non_channel_axes(conv.data_format)) if cache.has_bias else None
    if n == 0:  # an empty batch (Dask cannot reshape empty arrays with chunked axes)
        dx = xp.zeros(x.shape, dtype=x.dtype, device=device_of(x)) if input_grad else None
        dweight = xp.zeros(weight.shape, dtype=weight.dtype, device=device_of(weight))
        return (dx[0, ...] if cache.unbatched and dx is not None else dx), dweight, dbias
    w_mat = _weight_matrix(xp, weight, conv)
    x_rows = _rows_of(xp, x, conv)

    def one_piece(part):
        cols = _im2col(xp, dout[part, ...], conv)
        dweight = _weight_product(xp, x_rows(part), cols, conv, cache.plan.dweight)
        return dweight, (_product(xp, w_mat, cols, conv, part.stop - part.start) if input_grad else None)

    parts = map_pieces(one_piece, n, _batch_piece(xp, conv, dout.dtype, cache.workspace_limit))
    dweight = _weight_from_matrix(xp, sum_pieces([dweight for dweight, _ in parts]), weight.shape, conv)
    dx = concat_pieces(xp, [dx for _, dx in parts]) if input_grad else None
    return (dx[0, ...] if cache.unbatched and dx is not None else dx), dweight, dbias


def _conv_transpose2d_arguments(x, weight, bias, stride, padding, output_padding, dilation, groups,
                                data_format) -> _Arguments:
    """conv_transpose2d's arguments checked (each error names the argument) and normalised; ``conv`` is the
    convolution it transposes."""
    xp, _ = namespace_and_device(x=x, weight=weight, bias=bias, optional=("bias",))
    data_format = data_format_checked(data_format)
    check_floating(xp, x, "x")
    x, unbatched = _batched(xp, x, "x", data_format, names="C_in")
    _check_weight(weight, "weight", "(in_channels, out_channels // groups, kh, kw)")
    check_same_dtype(weight, "weight", x, "x")
    groups = as_int(groups, "groups", minimum=1)
    in_channels, group_out, kh, kw = weight.shape
    channels, (height, width) = _channels_and_size(x, data_format)
    if min(height, width) < 1:
        raise ValueError(f"x must have a non-empty height and width, got shape {tuple(x.shape)}")
    if in_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels, got weight with {in_channels} input channels")
    if channels != in_channels:
        raise ValueError(f"x has {channels} channels but weight expects weight.shape[0] = {in_channels}"
                         + _layout_hint(x, data_format, lambda c: c == in_channels))
    out_channels = group_out * groups
    _check_bias(bias, out_channels, "out_channels = weight.shape[1] * groups", x)
    options = conv_transpose_options(stride, padding, output_padding, dilation)
    geometry = _conv_transpose_geometry((height, width), (kh, kw), *options)
    conv = ConvShape(geometry, out_channels, in_channels, groups, data_format)  # the convolution it transposes
    return _Arguments(xp, x, conv, unbatched)


def conv_transpose_options(stride=1, padding=0, output_padding=0, dilation=1):
    """The transposed convolution's arguments checked and normalised to (height, width) pairs: ``(stride,
    padding, output_padding, dilation)``, output_padding below the stride or the dilation on each axis.
    :class:`xpcnn.nn.ConvTranspose2d` calls it when it is built, the op on every call."""
    stride = _int_pair(stride, "stride", minimum=1)
    padding = _int_pair(padding, "padding", minimum=0)
    output_padding = _int_pair(output_padding, "output_padding", minimum=0)
    dilation = _int_pair(dilation, "dilation", minimum=1)
    if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(
            f"output_padding must be smaller than the stride or the dilation on each axis, got output_padding "
            f"{output_padding} with stride {stride} and dilation {dilation}"
        )
    return stride, padding, output_padding, dilation


def _conv_transpose_geometry(size, kernel, stride, padding, output_padding, dilation) -> WindowGeometry:
    """The geometry of the convolution that conv_transpose2d transposes: its input is the transposed
    convolution's output (Hout, Wout), padded by p on both sides, its output x's (H, W).

    ``Hout = (H - 1) * s - 2p + d(k - 1) + output_padding + 1``: the padded output reaches as far as the last
    window, and output_padding rows (columns) beyond it that no window reaches; with output_padding >= the stride
    (PyTorch allows it below the dilation) that is more than a convolution's output size rounds away. Raises a
    ValueError for an output smaller than 1 x 1.
    """
    out_size = tuple(
        (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        for n, k, s, d, p, op in zip(size, kernel, stride, dilation, padding, output_padding)
    )
    if min(out_size) < 1:
        raise ValueError(
            f"the output would be {out_size[0]} x {out_size[1]} = (H - 1) * stride - 2 * padding + dilation * "
            f"(kernel - 1) + output_padding + 1 for x of height x width {size[0]} x {size[1]}, weight kernel size "
            f"{kernel}, stride {stride}, padding {padding}, dilation {dilation}, output_padding {output_padding}; "
            "it must be at least 1 x 1"
        )
    pads = tuple((p, p) for p in padding)
    return WindowGeometry(out_size, tuple(kernel), tuple(stride), tuple(dilation), pads, tuple(size))


# --------------------------------------------------------------------------------------------------------------
# Argument checks shared by the two ops
# --------------------------------------------------------------------------------------------------------------


def data_format_checked(data_format) -> str:
    """``data_format`` if it is ``"NCHW"`` or ``"NHWC"``, else a ValueError. The layers call it when built."""
    return check_data_format(data_format)


def _layout_names(data_format: str, channels: str = "C") -> str:
    return f"(N, {channels}, H, W)" if data_format == NCHW else f"(N, H, W, {channels})"


def _batched(xp, x, name: str, data_format: str, names: str = "C") -> tuple[Array, bool]:
    """x as a 4-D batch, and whether it was unbatched (3-D, a batch of one as PyTorch takes it)."""
    if x.ndim == 3:
        return xp.expand_dims(x, axis=0), True
    if x.ndim != 4:
        unbatched = _layout_names(data_format, names).replace("N, ", "")
        raise ValueError(f"{name} must be 4-D {_layout_names(data_format, names)} (or 3-D {unbatched}, unbatched) "
                         f"with data_format={data_format!r}, got shape {tuple(x.shape)}")
    return x, False


def _channels_and_size(x, data_format: str) -> tuple[int, tuple[int, int]]:
    if data_format == NCHW:
        return x.shape[1], (x.shape[2], x.shape[3])
    return x.shape[3], (x.shape[1], x.shape[2])


def _layout_hint(x, data_format: str, fits) -> str:
    """A hint that x may be in the other layout, when its channel axis there would ``fits``."""
    other, axis = (NHWC, 3) if data_format == NCHW else (NCHW, 1)
    if not fits(x.shape[axis]):
        return ""
    return (f"; x's {'last' if other == NHWC else 'second'} axis has {x.shape[axis]}: if x is {other} "
            f"{_layout_names(other)}, pass data_format={other!r}")


def _check_weight(weight, name: str, layout: str) -> None:
    if weight.ndim != 4:
        raise ValueError(f"{name} must be 4-D {layout} (PyTorch's layout for every data_format), "
                         f"got shape {tuple(weight.shape)}")
    if min(weight.shape) < 1:
        raise ValueError(f"{name} must have no empty axis, got shape {tuple(weight.shape)}")


def _check_bias(bias, out_channels: int, what: str, x) -> None:
    if bias is None:
        return
    if bias.ndim != 1:
        raise ValueError(f"bias must be 1-D (out_channels,), got shape {tuple(bias.shape)}")
    check_shape(bias, "bias", (out_channels,), what)
    check_same_dtype(bias, "bias", x, "x")


def _checked_dout(dout, cache, shape) -> tuple[Any, Array]:
    """dout checked against the forward output (its shape unbatched when x was) and made 4-D."""
    if cache.unbatched:
        xp, _ = check_upstream(dout, shape[1:], cache.weight, cache.weight.dtype)
        return xp, xp.expand_dims(dout, axis=0)
    xp, _ = check_upstream(dout, shape, cache.weight, cache.weight.dtype)
    return xp, dout


def _replanned(plan: Conv2dPlan, overrides) -> Conv2dPlan | dict:
    """The backward pass's ``_plan``: a whole plan, or the forward plan's fields with some replaced (those also
    replace the forward plan's choice for a dout not known finite: what the caller names is taken)."""
    if isinstance(overrides, Conv2dPlan):
        return overrides
    overrides = dict(overrides)
    merged = {**plan._asdict(), **overrides}
    if plan.if_dout_not_finite is not None and "if_dout_not_finite" not in overrides:
        merged["if_dout_not_finite"] = tuple(overrides.get(name, chosen) for name, chosen in
                                             zip(("dx", "dweight"), plan.if_dout_not_finite))
    return merged


# --------------------------------------------------------------------------------------------------------------
# The parts of the passes. NCHW columns are (m, G, Cg*K, P), rows in (channel, offset) order as the weights;
# NHWC columns are (G, m*P, K*Cg): the batch's positions as rows, channels contiguous within each offset.
# --------------------------------------------------------------------------------------------------------------


def _forward(xp, x, weight, conv: ConvShape, plan: Conv2dPlan, limit: int, winograd_limit: int):
    """conv2d's output without bias by ``plan.forward``, and the columns the backward pass may reuse (or None).
    One branch per :class:`ForwardAlgorithm`."""
    if x.shape[0] == 0:  # an empty batch (Dask cannot reshape empty arrays with chunked axes)
        return xp.zeros(_out_shape(0, conv.out_channels, conv), dtype=x.dtype, device=device_of(x)), None
    if plan.forward == ForwardAlgorithm.IM2COL:
        return _correlate(xp, x, weight, conv, limit, keep_columns=plan.keep_columns)
    if plan.forward == ForwardAlgorithm.WINOGRAD:
        out = winograd_forward(xp, x, weight, conv.geometry.padding, conv.groups, tile=plan.tile,
                               data_format=conv.data_format, workspace_limit=winograd_limit)
        return out, None
    raise ValueError(f"no forward algorithm {plan.forward!r}")


def _correlate(xp, x, weight, conv: ConvShape, limit: int, *, keep_columns: bool = False):
    """Cross-correlation of x with weight (no bias) by im2col, piece by piece: the output in x's layout, and the
    columns when ``keep_columns`` and the batch is one piece (else None)."""
    w_mat = _weight_matrix(xp, weight, conv)
    n, piece = x.shape[0], _batch_piece(xp, conv, x.dtype, limit)
    if keep_columns and n <= piece:
        columns = _im2col(xp, x, conv)
        return _product(xp, w_mat, columns, conv, n), columns

    def one_piece(part):
        return _product(xp, w_mat, _im2col(xp, x[part, ...], conv), conv, part.stop - part.start)

    return concat_pieces(xp, map_pieces(one_piece, n, piece)), None


def _weight_gradient(xp, dout, x, conv: ConvShape, plan: Conv2dPlan, limits: tuple[int, int], columns):
    """``dweight[g] = sum_n dout[n, g] @ cols[n, g]^T``, piece by piece, from the kept columns (the batch in one
    piece) or gathered again; or Winograd's adjoint (``limits``: im2col's and Winograd's workspace bytes)."""
    limit, winograd_limit = limits
    if x.shape[0] == 0:  # an empty batch: no term in the sum
        return xp.zeros(_conv2d_weight_shape(conv), dtype=x.dtype, device=device_of(x))
    if plan.dweight == WeightGradientAlgorithm.WINOGRAD:
        return winograd_weight_grad(xp, x, dout, conv.geometry.padding, conv.groups, tile=plan.tile,
                                    data_format=conv.data_format, workspace_limit=winograd_limit)
    dout_rows = _rows_of(xp, dout, conv)
    if columns is not None:
        return _weight_from_matrix(xp, _weight_product(xp, dout_rows(slice(None)), columns, conv, plan.dweight),
                                   _conv2d_weight_shape(conv), conv)

    def one_piece(part):
        return _weight_product(xp, dout_rows(part), _im2col(xp, x[part, ...], conv), conv, plan.dweight)

    parts = map_pieces(one_piece, x.shape[0], _batch_piece(xp, conv, x.dtype, limit))
    return _weight_from_matrix(xp, sum_pieces(parts), _conv2d_weight_shape(conv), conv)


def _conv2d_weight_shape(conv: ConvShape) -> tuple[int, int, int, int]:
    """conv2d's weight shape (O, Cg, kh, kw) for ``conv``."""
    return (conv.out_channels, conv.channels // conv.groups, *conv.geometry.kernel)


def _input_gradient(xp, dout, weight, conv: ConvShape, plan: Conv2dPlan, limits: tuple[int, int]):
    """The transpose of :func:`_correlate` in x: from dout (N, O, out_h, out_w) to (N, C, H, W) (NHWC alike), by
    ``plan.dx`` (``limits``: im2col's and Winograd's workspace bytes). conv2d's input gradient, and
    conv_transpose2d's output."""
    algorithm, (limit, winograd_limit) = plan.dx, limits
    if dout.shape[0] == 0:  # an empty batch
        in_shape = (0, conv.channels, *conv.geometry.in_size)
        return xp.zeros(in_shape if conv.data_format == NCHW else _to_nhwc(in_shape), dtype=dout.dtype,
                        device=device_of(dout))
    if algorithm == DxAlgorithm.WINOGRAD:
        return winograd_input_grad(xp, dout, weight, conv.geometry.padding, conv.groups, conv.geometry.in_size,
                                   tile=plan.tile, data_format=conv.data_format, workspace_limit=winograd_limit)
    if algorithm == DxAlgorithm.TRANSPOSED_CORRELATION:
        transposed = _transposed_geometry(conv.geometry, conv.channels, conv.out_channels, float("inf"))
        if transposed is None:
            raise ValueError(f"dx as a transposed correlation needs stride 1 and padding <= dilation * (kernel - 1), "
                             f"got {conv.geometry}")
        flipped = ConvShape(transposed, conv.out_channels, conv.channels, conv.groups, conv.data_format)
        dx, _ = _correlate(xp, dout, _flipped_transpose(xp, weight, conv.groups), flipped, limit)
        return dx
    wide_rows = algorithm == DxAlgorithm.COL2IM_WIDE_ROWS
    if wide_rows and (conv.channels_last or not _windows_reach_the_far_edge(conv.geometry)):
        raise ValueError(f"col2im in wide rows needs NCHW, stride 1 and no overhang, got {conv}")
    w_mat = _weight_matrix(xp, weight, conv)
    dout_rows = _rows_of(xp, dout, conv)
    device = device_of(dout)

    def one_piece(part):
        return _col2im(xp, w_mat, dout_rows(part), conv, part.stop - part.start, wide_rows, device)

    return concat_pieces(xp, map_pieces(one_piece, dout.shape[0], _batch_piece(xp, conv, dout.dtype, limit)))


def _im2col(xp, x, conv: ConvShape):
    """Columns of one piece of the input (padded here: a piece's padded copy stays in the caches), in the
    layout's column order (see above)."""
    geometry, groups = conv.geometry, conv.groups
    m, num_offsets = x.shape[0], len(geometry.offsets())
    positions = geometry.out_size[0] * geometry.out_size[1]
    if not conv.channels_last:
        cols = stacked_windows(xp, x, geometry, 0.0)  # (m, C, K, out_h, out_w)
        # Two reshapes, each only splitting or merging axes (Dask cannot do both in one); views elsewhere.
        cols = xp.reshape(cols, (m, groups, conv.channels // groups, num_offsets, positions))
        return xp.reshape(cols, (m, groups, conv.channels // groups * num_offsets, positions))
    cols = stacked_windows(xp, x, geometry, 0.0, channels_last=True)  # (m, out_h, out_w, K, C)
    if groups == 1:
        return xp.reshape(cols, (1, m * positions, num_offsets * conv.channels))
    cols = xp.reshape(cols, (m * positions, num_offsets, groups, conv.channels // groups))
    cols = xp.permute_dims(cols, (2, 0, 1, 3))
    return xp.reshape(cols, (groups, m * positions, num_offsets * (conv.channels // groups)))


def _product(xp, w_mat, cols, conv: ConvShape, m: int):
    """The correlation of one piece from its columns: ``weight[g] @ cols[n, g]`` as (m, O, out_h, out_w), or
    ``cols[g] @ weight[g]^T`` as (m, out_h, out_w, O) channels-last: no transposed copy in either layout."""
    out_h, out_w = conv.geometry.out_size
    if not conv.channels_last:
        return xp.reshape(xp.matmul(w_mat, cols), (m, conv.out_channels, out_h, out_w))
    out = xp.matmul(cols, xp.matrix_transpose(w_mat))  # (G, m*P, Og)
    if conv.groups > 1:
        out = xp.permute_dims(out, (1, 0, 2))
    return xp.reshape(out, (m, out_h, out_w, conv.out_channels))


def _rows_of(xp, dout, conv: ConvShape):
    """A function of a batch slice giving that piece of dout (N, O, ...) as the products want it: (m, G, Og, P)
    for NCHW, (G, m*P, Og) for NHWC."""
    n, (out_h, out_w), groups = dout.shape[0], conv.geometry.out_size, conv.groups
    group_out = conv.out_channels // groups
    if not conv.channels_last:
        rows = xp.reshape(dout, (n, groups, group_out, out_h * out_w))
        return lambda part: rows[part, ...]

    def nhwc_rows(part):
        piece = dout[part, ...]
        m = piece.shape[0]
        if groups == 1:
            return xp.reshape(piece, (1, m * out_h * out_w, group_out))
        return xp.permute_dims(xp.reshape(piece, (m * out_h * out_w, groups, group_out)), (1, 0, 2))

    return nhwc_rows


def _weight_product(xp, dout, cols, conv: ConvShape, algorithm: WeightGradientAlgorithm):
    """One piece's ``sum_n dout[n, g] @ cols[n, g]^T`` as (G, Og, Cg*K) (NHWC: (G, Og, K*Cg)).

    NCHW, per sample: ``cols[n, g] @ dout[n, g]^T`` (Cg*K x Og), summed over the piece and transposed (a view):
    the taller operand first, which OpenBLAS multiplies about twice as fast here as the thin ``dout[n, g] @
    cols[n, g]^T`` (benchmarks/README.md); batch-folded: one product at the price of a transposed copy of cols (per
    sample the products would write, and the sum read, P / Og times more than that copy). NHWC: one product, the
    batch already in the columns' rows.
    """
    if conv.channels_last:
        return xp.matmul(xp.matrix_transpose(dout), cols)
    if algorithm == WeightGradientAlgorithm.PER_SAMPLE:
        return xp.matrix_transpose(xp.sum(xp.matmul(cols, xp.matrix_transpose(dout)), axis=0))
    m, groups, group_out, positions = dout.shape
    dout = xp.reshape(xp.permute_dims(dout, (1, 2, 0, 3)), (groups, group_out, m * positions))
    cols = xp.reshape(xp.permute_dims(cols, (1, 0, 3, 2)), (groups, m * positions, cols.shape[2]))
    return xp.matmul(dout, cols)


def _weight_from_matrix(xp, dweight, shape, conv: ConvShape):
    """(G, Og, Cg*K) (NHWC: (G, Og, K*Cg)) back to the weight's (O, Cg, kh, kw)."""
    if not conv.channels_last:
        return xp.reshape(dweight, shape)
    out_channels, group_channels, kh, kw = shape
    return xp.permute_dims(xp.reshape(dweight, (out_channels, kh, kw, group_channels)), (0, 3, 1, 2))


def _weight_matrix(xp, weight, conv: ConvShape):
    """weight (O, Cg, kh, kw) as (G, Og, Cg*kh*kw); NHWC: (G, Og, kh*kw*Cg), the columns' order."""
    if conv.channels_last:
        weight = xp.permute_dims(weight, (0, 2, 3, 1))
    return xp.reshape(weight, (conv.groups, weight.shape[0] // conv.groups, -1))


def _col2im(xp, w_mat, dout, conv: ConvShape, m: int, wide_rows: bool, device):
    """dx of one piece from its dout rows (:func:`_rows_of`): ``dcols[n, g] = weight[g]^T @ dout[n, g]``, each
    kernel offset's part of dcols added back where it was gathered.

    With ``wide_rows`` (NCHW, stride 1 without overhang, weights known finite) dout's rows are first extended with
    zeros to the padded width, so that dcols' rows are too and each offset adds one contiguous run
    (:func:`xpcnn._windows.scatter_wide_rows`) instead of a row at a time (NumPy pays per row; figures in
    benchmarks/README.md). The zeros stay zeros through the product only with finite weights.
    """
    geometry, channels = conv.geometry, conv.channels
    num_offsets, (out_h, out_w) = len(geometry.offsets()), geometry.out_size
    like = dict(dtype=dout.dtype, device=device)
    w_mat_t = xp.matrix_transpose(w_mat)
    if conv.channels_last:
        dcols = xp.matmul(dout, xp.matrix_transpose(w_mat_t))  # (G, m*P, K*Cg)
        if conv.groups > 1:
            dcols = xp.reshape(dcols, (conv.groups, m * out_h * out_w, num_offsets, channels // conv.groups))
            dcols = xp.permute_dims(dcols, (1, 2, 0, 3))
        dcols = xp.reshape(dcols, (m, out_h, out_w, num_offsets, channels))
        parts = (dcols[:, :, :, k, :] for k in range(num_offsets))
        return scatter_windows(xp, parts, geometry, (m,), trailing_shape=(channels,), **like)
    _, groups, group_out, _ = dout.shape
    if wide_rows:
        extra = geometry.padded_size[1] - out_w
        rows = xp.reshape(dout, (m, groups, group_out, out_h, out_w))
        rows = xp.concat([rows, xp.zeros((m, groups, group_out, out_h, extra), **like)], axis=-1)
        dcols = xp.matmul(w_mat_t, xp.reshape(rows, (m, groups, group_out, out_h * (out_w + extra))))
        dcols = xp.reshape(dcols, (m, channels, num_offsets, out_h * (out_w + extra)))
        return scatter_wide_rows(xp, (dcols[:, :, k, :] for k in range(num_offsets)), geometry, (m, channels), **like)
    dcols = xp.matmul(w_mat_t, dout)
    # Two reshapes, each only splitting or merging axes (Dask cannot do both in one); views elsewhere.
    dcols = xp.reshape(dcols, (m, groups, channels // groups, num_offsets, out_h, out_w))
    dcols = xp.reshape(dcols, (m, channels, num_offsets, out_h, out_w))
    return scatter_windows(xp, (dcols[:, :, k, ...] for k in range(num_offsets)), geometry, (m, channels), **like)


def _windows_reach_the_far_edge(geometry: WindowGeometry) -> bool:
    """Stride 1, and the last window ends on the padded input's last row and column: what col2im's wide rows
    need (a transposed convolution's output_padding leaves rows and columns that no window reaches)."""
    spans = tuple(o + d * (k - 1) for o, d, k in zip(geometry.out_size, geometry.dilation, geometry.kernel))
    return geometry.stride == (1, 1) and spans == geometry.padded_size


def _transposed_geometry(geometry: WindowGeometry, in_channels: int, out_channels: int, ratio: float):
    """The geometry of dx as a correlation of dout (stride 1, padding ``d(k-1) - p`` before, and after whatever
    gives back the input's size: ``d(k-1) - p`` too, plus a transposed convolution's output_padding) when that
    path applies and is the cheaper one (``O * H * W <= ratio * C * out_h * out_w``, the cost model's
    ``transposed_dx_ratio``); None for col2im."""
    (height, width), (out_h, out_w) = geometry.in_size, geometry.out_size
    if geometry.stride != (1, 1) or out_channels * height * width > ratio * in_channels * out_h * out_w:
        return None
    pads = tuple(
        (d * (k - 1) - before, size - out + before)
        for k, d, (before, _), size, out in zip(
            geometry.kernel, geometry.dilation, geometry.padding, geometry.in_size, geometry.out_size
        )
    )
    if min(min(p) for p in pads) < 0:
        return None
    return window_geometry(geometry.out_size, geometry.kernel, (1, 1), geometry.dilation, pads)


def _flipped_transpose(xp, weight, groups: int):
    """(O, Cg, kh, kw) -> (C, Og, kh, kw): in and out channels swapped within each group, the kernel flipped."""
    out_channels, group_channels, kh, kw = weight.shape
    w = xp.reshape(weight, (groups, out_channels // groups, group_channels, kh, kw))
    w = xp.permute_dims(w, (0, 2, 1, 3, 4))
    w = xp.reshape(w, (groups * group_channels, out_channels // groups, kh, kw))
    return xp.flip(w, axis=(2, 3))


def _batch_piece(xp, conv: ConvShape, dtype, limit: int) -> int:
    """Samples per piece: as many as keep one piece's column buffer (and padded input) within the workspace
    limit, at least one. The columns are gathered from (im2col) or added back into (col2im) the array with
    ``conv.channels`` channels."""
    geometry = conv.geometry
    padded_h, padded_w = geometry.padded_size
    positions = geometry.out_size[0] * geometry.out_size[1]
    per_sample = conv.channels * (len(geometry.offsets()) * positions + padded_h * padded_w)
    return samples_per_piece(per_sample * _itemsize(xp, dtype), limit)


def _itemsize(xp, dtype) -> int:
    return xp.finfo(dtype).bits // 8


def _per_channel(xp, bias, data_format: str):
    """bias (O,) shaped to broadcast over the output's channel axis."""
    return xp.reshape(bias, (1, -1, 1, 1) if data_format == NCHW else (1, 1, 1, -1))


def _non_channel_axes(data_format: str) -> tuple[int, int, int]:
    return (0, 2, 3) if data_format == NCHW else (0, 1, 2)


def _out_shape(n: int, channels: int, conv: ConvShape) -> tuple[int, int, int, int]:
    shape = (n, channels, *conv.geometry.out_size)
    return shape if conv.data_format == NCHW else _to_nhwc(shape)


def _to_nhwc(shape):
    n, c, h, w = shape
    return (n, h, w, c)

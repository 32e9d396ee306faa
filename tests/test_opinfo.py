"""PyTorch's own OpInfo samples, run through xpcnn's functional ops: values and gradients equal to PyTorch's.

For every OpInfo below, each ``op.sample_inputs("cpu", float64, requires_grad=True)`` sample is mapped onto the
xpcnn call (``NAME_forward(x, ...)`` / ``NAME_backward(dout, cache)``); samples that xpcnn does not cover (1-D and
3-D spatial variants, modes such as bicubic, in-place flags...) are skipped and counted, with the reason. The
forward output (and max pooling's indices, batch norm's updated running statistics) is compared with PyTorch's, and
the backward pass with ``torch.autograd.grad`` for a random upstream gradient. A sample that applies and disagrees
fails the op's test, every failing sample listed with its arguments; known disagreements sit in ``EXPECTED_FAILURES``
with their reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cmi = pytest.importorskip("torch.testing._internal.common_methods_invocations")

import xpcnn.functional as F  # noqa: E402

pytestmark = pytest.mark.torch_reference

RTOL, ATOL = 1e-10, 1e-12
MAX_LISTED = 40  # failing samples spelled out in one assertion message

_EPS_NEGATIVE = ("xpcnn forward raised ValueError: eps must be >= 0, got -0.5",
                 "xpcnn refuses a negative eps on purpose (tests/nn/test_normalization.py); PyTorch takes it")

#: (op, variant) -> {sample description -> (the exact problem seen, why)}: samples that apply but are known to
#: disagree with PyTorch. Any other problem on such a sample, or none, still fails the test.
EXPECTED_FAILURES: dict[tuple[str, str], dict[str, tuple[str, str]]] = {
    ("nn.functional.batch_norm", ""): {
        f"T(0,), T(0,), T(0,), None, None, training={training}": (
            "xpcnn forward raised ValueError: x must be at least 2-D (N, C, *), got shape (0,)",
            "an empty 1-D x: xpcnn requires (N, C, *), as PyTorch does for any non-empty x")
        for training in (True, False)},
    ("nn.functional.layer_norm", ""): {"T(2, 2, 3), (2, 3), T(2, 3), T(2, 3), eps=-0.5": _EPS_NEGATIVE},
    ("nn.functional.group_norm", ""): {"T(2, 6, 3), 2, weight=T(6,), bias=T(6,), eps=-0.5": _EPS_NEGATIVE},
}


class Skip(Exception):
    """The sample exercises something outside xpcnn's ops (its message says what)."""


def np_(t):
    """A torch tensor as a NumPy array (a copy: PyTorch may update its inputs in place); other values as given."""
    return t.detach().numpy().copy() if isinstance(t, torch.Tensor) else t


def describe(value) -> str:
    """A short, stable text for a sample's argument: tensors as their shape (and dtype when not float64)."""
    if isinstance(value, torch.Tensor):
        dtype = "" if value.dtype == torch.float64 else f" {str(value.dtype).removeprefix('torch.')}"
        return f"T{tuple(value.shape)}{dtype}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(describe(v) for v in value)
        if isinstance(value, list):
            return f"[{inner}]"
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def describe_sample(sample) -> str:
    parts = [describe(sample.input), *(describe(a) for a in sample.args)]
    parts += [f"{k}={describe(v)}" for k, v in sample.kwargs.items()]
    return ", ".join(parts)


@dataclass
class Case:
    """One sample mapped onto xpcnn: its forward outputs and a backward giving gradients by torch argument name."""

    outputs: dict  # name -> xpcnn array, compared with the same name on the torch side
    backward: object  # dout -> {torch argument name: gradient}
    extra: dict = field(default_factory=dict)  # name -> (xpcnn array, torch tensor read after the torch call)


def bind(sample, params: list[str]) -> dict:
    """The sample's arguments by the torch function's parameter names."""
    args = [sample.input, *sample.args]
    if len(args) > len(params):
        raise AssertionError(f"more positional arguments than {params}")
    bound = dict(zip(params, args))
    bound.update(sample.kwargs)
    return bound


def given(bound, *names) -> dict:
    """Keyword arguments for xpcnn: those among ``names`` that the sample gives (xpcnn spells them as PyTorch)."""
    return {n: np_(bound[n]) for n in names if n in bound}


def no_inplace(bound):
    if bound.get("inplace"):
        raise Skip("inplace=True")


# --- one adapter per op: torch sample -> Case ------------------------------------------------------------------------

def conv2d(bound):
    x, w, b = np_(bound["input"]), np_(bound["weight"]), np_(bound.get("bias"))
    out, cache = F.conv2d_forward(x, w, b, **given(bound, "stride", "padding", "dilation", "groups"))

    def backward(dout):
        dx, dw, db = F.conv2d_backward(dout, cache)
        return {"input": dx, "weight": dw, "bias": db}
    return Case({"out": out}, backward)


def conv_transpose2d(bound):
    x, w, b = np_(bound["input"]), np_(bound["weight"]), np_(bound.get("bias"))
    out, cache = F.conv_transpose2d_forward(
        x, w, b, **given(bound, "stride", "padding", "output_padding", "groups", "dilation"))

    def backward(dout):
        dx, dw, db = F.conv_transpose2d_backward(dout, cache)
        return {"input": dx, "weight": dw, "bias": db}
    return Case({"out": out}, backward)


def max_pool2d(bound):
    x = np_(bound["input"])
    out, cache = F.max_pool2d_forward(x, bound["kernel_size"], **given(bound, "stride", "padding", "dilation",
                                                                       "ceil_mode"))
    outputs = {"out": out}
    if bound.get("return_indices"):
        outputs["indices"] = cache.indices
    return Case(outputs, lambda dout: {"input": F.max_pool2d_backward(dout, cache)})


def avg_pool2d(bound):
    x = np_(bound["input"])
    kwargs = given(bound, "padding", "ceil_mode", "count_include_pad", "divisor_override")
    stride = bound.get("stride")
    kwargs["stride"] = None if stride is None or stride == () else stride  # PyTorch reads () as "the kernel size"
    out, cache = F.avg_pool2d_forward(x, bound["kernel_size"], **kwargs)
    return Case({"out": out}, lambda dout: {"input": F.avg_pool2d_backward(dout, cache)})


def adaptive_avg_pool2d(bound):
    out, cache = F.adaptive_avg_pool2d_forward(np_(bound["input"]), bound["output_size"])
    return Case({"out": out}, lambda dout: {"input": F.adaptive_avg_pool2d_backward(dout, cache)})


def adaptive_max_pool2d(bound):
    out, cache = F.adaptive_max_pool2d_forward(np_(bound["input"]), bound["output_size"])
    outputs = {"out": out}
    if bound.get("return_indices"):
        outputs["indices"] = cache.indices
    return Case(outputs, lambda dout: {"input": F.adaptive_max_pool2d_backward(dout, cache)})


def interpolate(bound):
    x = np_(bound["input"])
    if x.ndim != 4:  # a 3-D x is (N, C, L) for PyTorch (a 1-D resize), 5-D a volume
        raise Skip(f"{x.ndim - 2}-D resize")
    mode = bound.get("mode", "nearest")
    if mode not in ("nearest", "nearest-exact", "bilinear"):
        raise Skip(f"mode={mode!r}")
    if bound.get("antialias"):
        raise Skip("antialias=True")
    size, scale = bound.get("size"), bound.get("scale_factor")
    if scale is not None and bound.get("recompute_scale_factor"):
        # PyTorch computes the output size, then resamples from that size alone: the same as passing the size
        scales = scale if isinstance(scale, (tuple, list)) else (scale, scale)
        size, scale = tuple(math.floor(n * s) for n, s in zip(x.shape[-2:], scales)), None
    out, cache = F.interpolate_forward(x, size=size, scale_factor=scale, mode=mode,
                                       align_corners=bound.get("align_corners"))
    return Case({"out": out}, lambda dout: {"input": F.interpolate_backward(dout, cache)})


def batch_norm(bound):
    x = np_(bound["input"])
    kwargs = given(bound, "running_mean", "running_var", "momentum", "eps")
    kwargs["training"] = bound.get("training", False)  # PyTorch's functional default
    out, cache = F.batch_norm_forward(x, np_(bound.get("weight")), np_(bound.get("bias")), **kwargs)
    extra = {name: (getattr(cache, name), bound[name]) for name in ("running_mean", "running_var")
             if bound.get(name) is not None}

    def backward(dout):
        dx, dw, db = F.batch_norm_backward(dout, cache)
        return {"input": dx, "weight": dw, "bias": db}
    return Case({"out": out}, backward, extra)


def layer_norm(bound):
    out, cache = F.layer_norm_forward(np_(bound["input"]), bound["normalized_shape"],
                                      **given(bound, "weight", "bias", "eps"))

    def backward(dout):
        dx, dw, db = F.layer_norm_backward(dout, cache)
        return {"input": dx, "weight": dw, "bias": db}
    return Case({"out": out}, backward)


def group_norm(bound):
    out, cache = F.group_norm_forward(np_(bound["input"]), bound["num_groups"],
                                      **given(bound, "weight", "bias", "eps"))

    def backward(dout):
        dx, dw, db = F.group_norm_backward(dout, cache)
        return {"input": dx, "weight": dw, "bias": db}
    return Case({"out": out}, backward)


def activation(name, **params):
    forward, backward = getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")

    def adapt(bound):
        no_inplace(bound)
        out, cache = forward(np_(bound["input"]), **{p: bound[p] for p in params if p in bound})
        return Case({"out": out}, lambda dout: {"input": backward(dout, cache)})
    return adapt


def linear(bound):
    out, cache = F.linear_forward(np_(bound["input"]), np_(bound["weight"]), np_(bound.get("bias")))

    def backward(dout):
        dx, dw, db = F.linear_backward(dout, cache)
        return {"input": dx, "weight": dw, "bias": db}
    return Case({"out": out}, backward)


def legacy_reduction(bound):
    if bound.get("size_average") is not None or bound.get("reduce") is not None:
        raise Skip("size_average/reduce (deprecated)")


def cross_entropy(bound):
    legacy_reduction(bound)
    loss, cache = F.softmax_cross_entropy_forward(
        np_(bound["input"]), np_(bound["target"]),
        **given(bound, "weight", "ignore_index", "reduction", "label_smoothing"))
    target = bound["target"]
    if not target.dtype.is_floating_point:  # class indices: no gradient
        return Case({"out": loss}, lambda dout: {"input": F.softmax_cross_entropy_backward(dout, cache)})

    def backward(dout):
        dlogits, dtarget = F.softmax_cross_entropy_backward(dout, cache, target_grad=True)
        return {"input": dlogits, "target": dtarget}
    return Case({"out": loss}, backward)


def mse_loss(bound):
    legacy_reduction(bound)
    loss, cache = F.mse_loss_forward(np_(bound["input"]), np_(bound["target"]), **given(bound, "reduction"))

    def backward(dout):
        dpred, dtarget = F.mse_loss_backward(dout, cache, target_grad=True)
        return {"input": dpred, "target": dtarget}
    return Case({"out": loss}, backward)


# (OpInfo name, variant) -> (torch parameter names in order, adapter)
OPS = {
    ("nn.functional.conv2d", ""): (["input", "weight", "bias", "stride", "padding", "dilation", "groups"], conv2d),
    ("nn.functional.conv_transpose2d", ""): (
        ["input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"], conv_transpose2d),
    ("nn.functional.max_pool2d", ""): (
        ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"], max_pool2d),
    ("nn.functional.avg_pool2d", ""): (
        ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"],
        avg_pool2d),
    ("nn.functional.adaptive_avg_pool2d", ""): (["input", "output_size"], adaptive_avg_pool2d),
    ("nn.functional.adaptive_max_pool2d", ""): (["input", "output_size", "return_indices"], adaptive_max_pool2d),
    **{("nn.functional.interpolate", mode): (
        ["input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias"],
        interpolate) for mode in ("nearest", "nearest-exact", "bilinear")},
    ("nn.functional.batch_norm", ""): (
        ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"], batch_norm),
    ("nn.functional.layer_norm", ""): (["input", "normalized_shape", "weight", "bias", "eps"], layer_norm),
    ("nn.functional.group_norm", ""): (["input", "num_groups", "weight", "bias", "eps"], group_norm),
    ("nn.functional.relu", ""): (["input", "inplace"], activation("relu")),
    ("nn.functional.leaky_relu", ""): (["input", "negative_slope", "inplace"],
                                       activation("leaky_relu", negative_slope=None)),
    ("nn.functional.elu", ""): (["input", "alpha", "inplace"], activation("elu", alpha=None)),
    ("nn.functional.gelu", ""): (["input", "approximate"], activation("gelu", approximate=None)),
    ("nn.functional.silu", ""): (["input", "inplace"], activation("silu")),
    ("nn.functional.linear", ""): (["input", "weight", "bias"], linear),
    ("nn.functional.cross_entropy", ""): (
        ["input", "target", "weight", "size_average", "ignore_index", "reduce", "reduction", "label_smoothing"],
        cross_entropy),
    ("nn.functional.mse_loss", ""): (["input", "target", "size_average", "reduce", "reduction"], mse_loss),
}


def _opinfo(name, variant):
    for op in cmi.op_db:
        if op.name == name and op.variant_test_name == variant:
            return op
    pytest.skip(f"this PyTorch has no OpInfo {name!r} variant {variant!r}")


def _close(ours, theirs, what) -> str | None:
    """None when xpcnn's array equals PyTorch's, else a one-line reason."""
    theirs = np_(theirs)
    if ours is None:
        return f"{what}: xpcnn gives None, PyTorch {describe(torch.as_tensor(theirs))}"
    ours = np.asarray(ours)
    if ours.shape != theirs.shape:
        return f"{what}: shape {ours.shape} != PyTorch's {theirs.shape}"
    if ours.dtype != theirs.dtype:
        return f"{what}: dtype {ours.dtype} != PyTorch's {theirs.dtype}"
    if theirs.dtype.kind in "iub":
        return None if np.array_equal(ours, theirs) else f"{what}: differs"
    try:
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL, equal_nan=True)
    except AssertionError:
        err = np.max(np.abs(ours - theirs)) if ours.size else 0.0
        return f"{what}: max abs error {err:.3g}"
    return None


def run_sample(op, sample, params, adapt, rng) -> str | None:
    bound = bind(sample, params)
    try:
        case = adapt(bound)
    except Skip:
        raise
    except Exception as exc:  # noqa: BLE001 - an error where PyTorch computes is a mismatch
        return f"xpcnn forward raised {type(exc).__name__}: {exc}"
    result = op(sample.input, *sample.args, **sample.kwargs)
    torch_out = {"out": result[0], "indices": result[1]} if isinstance(result, tuple) else {"out": result}
    problems = [_close(ours, torch_out[name], name) for name, ours in case.outputs.items()]
    problems += [_close(ours, theirs, name) for name, (ours, theirs) in case.extra.items()]
    differentiable = {name: t for name, t in bound.items()
                      if isinstance(t, torch.Tensor) and t.requires_grad}
    if differentiable and torch_out["out"].requires_grad:
        dout = rng.standard_normal(tuple(torch_out["out"].shape))
        try:
            ours = case.backward(dout.copy())
        except Exception as exc:  # noqa: BLE001
            problems.append(f"xpcnn backward raised {type(exc).__name__}: {exc}")
        else:
            names = [n for n in differentiable if n in ours]
            missing = sorted(set(differentiable) - set(ours))
            if missing:
                problems.append(f"no xpcnn gradient for {missing}")
            grads = torch.autograd.grad(torch_out["out"], [differentiable[n] for n in names],
                                        torch.from_numpy(dout), allow_unused=True)
            for name, theirs in zip(names, grads):
                theirs = torch.zeros_like(differentiable[name]) if theirs is None else theirs
                problems.append(_close(ours[name], theirs, f"d{name}"))
    problems = [p for p in problems if p]
    return "; ".join(problems) or None


@pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")  # PyTorch's note on its own speed
@pytest.mark.parametrize("key", list(OPS), ids=lambda key: "-".join(filter(None, key)).removeprefix("nn.functional."))
def test_opinfo_samples_match_pytorch(key):
    params, adapt = OPS[key]
    op = _opinfo(*key)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    expected = EXPECTED_FAILURES.get(key, {})
    ran, skipped, matched, xfailed, failures = 0, {}, 0, 0, []
    for sample in op.sample_inputs("cpu", torch.float64, requires_grad=True):
        text = describe_sample(sample)
        try:
            problem = run_sample(op, sample, params, adapt, rng)
        except Skip as why:
            skipped[str(why)] = skipped.get(str(why), 0) + 1
            continue
        ran += 1
        known = expected.get(text, (None, None))[0]
        if problem == known:
            matched += problem is None
            xfailed += problem is not None
        elif known is not None and problem is None:
            failures.append(f"  ({text}): matches now, remove it from EXPECTED_FAILURES")
        else:
            failures.append(f"  ({text}): {problem}")
    summary = (f"{key[0]}{'/' + key[1] if key[1] else ''}: {ran} run, {matched} matched, {xfailed} expected "
               f"failures, skipped {sum(skipped.values())} {skipped}")
    print(summary)
    shown = failures[:MAX_LISTED]
    if len(failures) > MAX_LISTED:
        shown.append(f"  ... and {len(failures) - MAX_LISTED} more")
    assert not failures, f"{summary}\n{len(failures)} samples disagree with PyTorch:\n" + "\n".join(shown)
    assert ran, f"no sample of {key} applies to xpcnn: {summary}"

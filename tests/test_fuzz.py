"""The fuzzing campaign, as the project's own tests.

1. Bad arguments: for every public function and layer constructor, hypothesis replaces one argument of a valid
   call by a value of the wrong kind (None, a string for a number or a bool, a float for an int, NaN, a negative
   size, a tuple of the wrong length, an array of the wrong dtype or rank...). The call must raise a ValueError or
   TypeError whose message names that argument — never another exception from deep inside, never silence.
2. Valid inputs against PyTorch: random configurations of every op in float16, float32 and float64 (NumPy) and
   bfloat16 (PyTorch tensors), with NaN and infinities mixed in; outputs and every gradient must equal PyTorch's
   run in the same dtype: NaN and infinities at exactly the same places, finite values to the dtype's precision.

CI runs a small derandomised budget; ``XPCNN_FUZZ_EXAMPLES=2000`` runs a deep, randomised campaign.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xpcnn
import xpcnn.functional as F
from xpcnn import nn, optim

DEEP = "XPCNN_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("XPCNN_FUZZ_EXAMPLES", 60))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not DEEP,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# -- 1. bad arguments -------------------------------------------------------------------------------------------

X4 = np.zeros((2, 3, 6, 6))


class _Weird:
    def __repr__(self):
        return "<weird>"


BAD = {
    # Values that are never a valid value of the kind.
    "int": [None, "3", 1.5, True, float("nan"), [1], _Weird(), np.float64(2.0), -1],
    "axis": [None, "1", 1.5, True, [1], _Weird()],
    "pair": [None, "3", 1.5, True, (1, 2, 3), (1,) * 3, (1, "a"), [], (1.5, 1), _Weird(), -1, (0, -1)],
    "float": ["0.5", None, float("nan"), [0.1], (0.1,), True, _Weird()],
    "bool": ["no", "False", 1, 0, None, 0.0, [True], _Weird()],
    "array": [None, [[1.0]], "x", 3.0, _Weird()],
    "floating_array": [None, [[1.0]], "x", 3.0, np.zeros((2, 3, 6, 6), np.int64), np.zeros((2, 3, 6, 6), bool)],
    "reduction": ["avg", None, 1, "Mean"],
    "choice": ["bogus", None, 1, "None", ""],
    "size": ["3", 1.5, True, (1, 2, 3), (1.5, 2), -1, (2, -1), _Weird(), [[1]]],
    "shape": [None, "3", 1.5, True, (1.5,), (1, "a"), _Weird(), (-1,)],
    "seed": [None, "1", 1.5, True, _Weird()],
}


@dataclass
class Target:
    """A public callable, a valid call of it, and the kind of each argument that may be spoilt."""

    name: str
    call: object
    valid: object  # () -> dict of keyword arguments that make a valid call
    kinds: dict = field(default_factory=dict)
    bad: dict = field(default_factory=dict)  # extra never-valid values per argument
    optional: tuple = ()  # arguments for which None is valid

    def values(self, arg):
        values = BAD[self.kinds[arg]] + self.bad.get(arg, [])
        return [v for v in values if not (v is None and arg in self.optional)]


def _model():
    return nn.Sequential(nn.Linear(4, 2, seed=0))


def _fit_call(**overrides):
    model = _model()
    arguments = dict(model=model, loss_fn=nn.MSELoss(), optimizer=optim.SGD(model.parameters(), lr=0.1),
                     x=np.zeros((3, 4), np.float32), y=np.zeros((3, 2), np.float32), epochs=1, batch_size=2,
                     progress=False)
    return {**arguments, **overrides}


def _fit(model, loss_fn, optimizer, x, y, **options):
    return xpcnn.fit(model, loss_fn, optimizer, x, y, **options)


def _evaluate(model, loss_fn, x, y, **options):
    return xpcnn.evaluate(model, loss_fn, x, y, **options)


def _predict(model, x, **options):
    return xpcnn.predict(model, x, **options)


def _params():
    return _model().parameters()


def _sgd():
    return optim.SGD(_params(), lr=0.1, momentum=0.9)


POOL = dict(stride="pair", padding="pair", dilation="pair", ceil_mode="bool", kernel_size="pair")
TARGETS = [
    Target("conv2d_forward", F.conv2d_forward,
           lambda: dict(x=X4, weight=np.zeros((4, 3, 3, 3)), bias=np.zeros(4), stride=1, padding=1, dilation=1,
                        groups=1, workspace_limit=2**20),
           dict(x="floating_array", weight="floating_array", bias="array", stride="pair", dilation="pair",
                groups="int", workspace_limit="int", padding="pair"),
           bad=dict(padding=["full", "SAME"], groups=[0, 2]), optional=("bias", "workspace_limit")),
    Target("conv_transpose2d_forward", F.conv_transpose2d_forward,
           lambda: dict(x=X4, weight=np.zeros((3, 2, 3, 3)), bias=np.zeros(2), stride=2, padding=1, output_padding=1,
                        dilation=1, groups=1, workspace_limit=2**20),
           dict(x="floating_array", weight="floating_array", bias="array", stride="pair", padding="pair",
                output_padding="pair", dilation="pair", groups="int", workspace_limit="int"),
           bad=dict(padding=["same", 7], output_padding=[2, (0, 2)], groups=[0, 2]),
           optional=("bias", "workspace_limit")),
    Target("max_pool2d_forward", F.max_pool2d_forward,
           lambda: dict(x=X4, kernel_size=2, stride=None, padding=0, dilation=1, ceil_mode=False),
           dict(x="floating_array", **POOL), bad=dict(padding=[2, (0, 2)], kernel_size=[0, 7]), optional=("stride",)),
    Target("avg_pool2d_forward", F.avg_pool2d_forward,
           lambda: dict(x=X4, kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False,
                        divisor_override=None),
           dict(x="floating_array", kernel_size="pair", stride="pair", padding="pair", ceil_mode="bool",
                count_include_pad="bool", divisor_override="int"),
           bad=dict(divisor_override=[0, "2"]), optional=("stride", "divisor_override")),
    Target("linear_forward", F.linear_forward,
           lambda: dict(x=np.zeros((2, 4)), weight=np.zeros((3, 4)), bias=np.zeros(3)),
           dict(x="floating_array", weight="floating_array", bias="array"), optional=("bias",)),
    Target("flatten_forward", F.flatten_forward, lambda: dict(x=X4, start_dim=1, end_dim=-1),
           dict(x="floating_array", start_dim="axis", end_dim="axis"), bad=dict(start_dim=[4, -5], end_dim=[4])),
    Target("dropout_forward", F.dropout_forward, lambda: dict(x=X4, p=0.5, seed=0, stream=0),
           dict(x="floating_array", p="float", seed="seed", stream="seed"), bad=dict(p=[1.5, -0.1])),
    Target("softmax_cross_entropy_forward", F.softmax_cross_entropy_forward,
           lambda: dict(logits=np.zeros((3, 4)), target=np.array([0, 1, 2]), reduction="mean", check_targets=True),
           dict(logits="floating_array", target="array", reduction="reduction", check_targets="bool"),
           bad=dict(target=[np.array([0.0, 1.0, 2.0]), np.array([0, 1]), np.array([0, 1, 4]), np.array(1)])),
    Target("mse_loss_forward", F.mse_loss_forward,
           lambda: dict(pred=np.zeros((3, 4)), target=np.zeros((3, 4)), reduction="sum"),
           dict(pred="floating_array", target="floating_array", reduction="reduction"),
           bad=dict(target=[np.zeros((4, 3)), np.zeros((3, 4), np.float32)])),
    *[Target(f"{name}_forward", getattr(F, f"{name}_forward"), lambda: dict(x=X4), dict(x="floating_array"))
      for name in ("relu", "sigmoid", "tanh", "arctan")],
    Target("leaky_relu_forward", F.leaky_relu_forward, lambda: dict(x=X4, negative_slope=0.1),
           dict(x="floating_array", negative_slope="float")),
    Target("batch_norm2d_forward", F.batch_norm2d_forward,
           lambda: dict(x=X4, weight=np.ones(3), bias=np.zeros(3), running_mean=np.zeros(3), running_var=np.ones(3),
                        training=True, eps=1e-5),
           dict(x="floating_array", weight="array", bias="array", running_mean="array", running_var="array",
                training="bool", eps="float"),
           bad=dict(weight=[np.ones(4)], eps=[-1.0]), optional=("weight", "bias", "running_mean", "running_var")),
    Target("batch_norm_forward", F.batch_norm_forward,
           lambda: dict(x=np.zeros((4, 3)), weight=np.ones(3), bias=np.zeros(3), running_mean=np.zeros(3),
                        running_var=np.ones(3), training=True, momentum=0.1, eps=1e-5),
           dict(x="floating_array", weight="array", bias="array", running_mean="array", running_var="array",
                training="bool", momentum="float", eps="float"),
           bad=dict(eps=[-1.0]), optional=("weight", "bias", "running_mean", "running_var", "momentum")),
    Target("layer_norm_forward", F.layer_norm_forward,
           lambda: dict(x=X4, normalized_shape=(6, 6), weight=np.ones((6, 6)), bias=np.zeros((6, 6)), eps=1e-5),
           dict(x="floating_array", normalized_shape="shape", weight="array", bias="array", eps="float"),
           bad=dict(normalized_shape=[(5, 6), (2, 3, 6, 6, 1)], weight=[np.ones(6)]), optional=("weight", "bias")),
    Target("group_norm_forward", F.group_norm_forward,
           lambda: dict(x=X4, num_groups=3, weight=np.ones(3), bias=np.zeros(3), eps=1e-5),
           dict(x="floating_array", num_groups="int", weight="array", bias="array", eps="float"),
           bad=dict(num_groups=[0, 2]), optional=("weight", "bias")),
    Target("BatchNorm1d", nn.BatchNorm1d, lambda: dict(num_features=3, eps=1e-5, momentum=0.1, affine=True,
                                                      track_running_stats=True),
           dict(num_features="int", eps="float", momentum="float", affine="bool", track_running_stats="bool"),
           bad=dict(num_features=[0]), optional=("momentum",)),
    Target("LayerNorm", nn.LayerNorm, lambda: dict(normalized_shape=(4, 5), eps=1e-5, elementwise_affine=True),
           dict(normalized_shape="shape", eps="float", elementwise_affine="bool")),
    Target("GroupNorm", nn.GroupNorm, lambda: dict(num_groups=2, num_channels=4, eps=1e-5, affine=True),
           dict(num_groups="int", num_channels="int", eps="float", affine="bool"), bad=dict(num_groups=[3, 0])),
    Target("Residual", nn.Residual, lambda: dict(body=nn.ReLU(), shortcut=nn.Tanh()),
           dict(body="array", shortcut="array"), optional=("shortcut",)),
    Target("Concat", lambda dim: nn.Concat(nn.ReLU(), dim=dim), lambda: dict(dim=1), dict(dim="axis")),
    *[Target(f"adaptive_{kind}_pool2d_forward", getattr(F, f"adaptive_{kind}_pool2d_forward"),
             lambda: dict(x=X4, output_size=(3, None)), dict(x="floating_array", output_size="size"))
      for kind in ("avg", "max")],
    Target("interpolate_forward", F.interpolate_forward,
           lambda: dict(x=X4, size=None, scale_factor=1.5, mode="bilinear", align_corners=False),
           dict(x="floating_array", size="size", scale_factor="float", mode="choice", align_corners="bool"),
           bad=dict(scale_factor=[0.0, -2.0]), optional=("size", "align_corners")),
    Target("AdaptiveAvgPool2d", nn.AdaptiveAvgPool2d, lambda: dict(output_size=1), dict(output_size="size")),
    Target("AdaptiveMaxPool2d", nn.AdaptiveMaxPool2d, lambda: dict(output_size=(2, 3)), dict(output_size="size")),
    Target("Upsample", nn.Upsample, lambda: dict(size=(4, 5), scale_factor=None, mode="nearest", align_corners=None),
           dict(size="size", scale_factor="float", mode="choice", align_corners="bool"),
           bad=dict(align_corners=[True]), optional=("size", "scale_factor", "align_corners")),
    Target("LeakyReLU", nn.LeakyReLU, lambda: dict(negative_slope=0.2, inplace=False),
           dict(negative_slope="float", inplace="bool")),
    Target("gelu_forward", F.gelu_forward, lambda: dict(x=X4, approximate="tanh"),
           dict(x="floating_array", approximate="choice")),
    Target("silu_forward", F.silu_forward, lambda: dict(x=X4), dict(x="floating_array")),
    Target("elu_forward", F.elu_forward, lambda: dict(x=X4, alpha=0.5), dict(x="floating_array", alpha="float")),
    Target("ReLU", nn.ReLU, lambda: dict(inplace=False), dict(inplace="bool")),
    Target("SiLU", nn.SiLU, lambda: dict(inplace=False), dict(inplace="bool")),
    Target("ELU", nn.ELU, lambda: dict(alpha=1.0, inplace=False), dict(alpha="float", inplace="bool")),
    Target("GELU", nn.GELU, lambda: dict(approximate="none"), dict(approximate="choice")),
    Target("BatchNorm2d", nn.BatchNorm2d, lambda: dict(num_features=3, eps=1e-5, momentum=0.1, affine=True),
           dict(num_features="int", eps="float", momentum="float", affine="bool"), bad=dict(num_features=[0]),
           optional=("momentum",)),
    Target("Conv2d", nn.Conv2d,
           lambda: dict(in_channels=3, out_channels=4, kernel_size=3, stride=1, padding=1, dilation=1, groups=1,
                        bias=True, seed=0, workspace_limit=None),
           dict(in_channels="int", out_channels="int", kernel_size="pair", stride="pair", padding="pair",
                dilation="pair", groups="int", bias="bool", seed="seed", workspace_limit="int"),
           bad=dict(in_channels=[0], groups=[2], padding=["full"], kernel_size=[0]), optional=("seed", "workspace_limit")),
    Target("ConvTranspose2d", nn.ConvTranspose2d,
           lambda: dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1, groups=2,
                        bias=True, dilation=1, seed=0, workspace_limit=None),
           dict(in_channels="int", out_channels="int", kernel_size="pair", stride="pair", padding="pair",
                output_padding="pair", groups="int", bias="bool", dilation="pair", seed="seed",
                workspace_limit="int"),
           bad=dict(in_channels=[0, 3], groups=[3], padding=["same"], output_padding=[2], kernel_size=[0]),
           optional=("seed", "workspace_limit")),
    Target("Linear", nn.Linear, lambda: dict(in_features=3, out_features=2, bias=False, seed=1),
           dict(in_features="int", out_features="int", bias="bool", seed="seed"), bad=dict(in_features=[0]),
           optional=("seed",)),
    Target("MaxPool2d", nn.MaxPool2d,
           lambda: dict(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False),
           dict(POOL), bad=dict(padding=[2], kernel_size=[0]), optional=("stride",)),
    Target("AvgPool2d", nn.AvgPool2d,
           lambda: dict(kernel_size=3, stride=2, padding=1, ceil_mode=False, count_include_pad=True,
                        divisor_override=None),
           dict(kernel_size="pair", stride="pair", padding="pair", ceil_mode="bool", count_include_pad="bool",
                divisor_override="int"), bad=dict(divisor_override=[0]), optional=("stride", "divisor_override")),
    Target("Dropout", nn.Dropout, lambda: dict(p=0.2, seed=0), dict(p="float", seed="seed"), bad=dict(p=[2.0]),
           optional=("seed",)),
    Target("Flatten", nn.Flatten, lambda: dict(start_dim=1, end_dim=-1), dict(start_dim="axis", end_dim="axis")),
    Target("CrossEntropyLoss", nn.CrossEntropyLoss, lambda: dict(reduction="sum", check_targets=False),
           dict(reduction="reduction", check_targets="bool")),
    Target("SGD", optim.SGD,
           lambda: dict(params=_params(), lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True),
           dict(params="array", lr="float", momentum="float", dampening="float", weight_decay="float",
                nesterov="bool"),
           bad=dict(params=[[], [np.zeros(2)], _model()], lr=[-1.0, float("inf")], momentum=[-0.5])),
    Target("Adam", optim.Adam, lambda: dict(params=_params(), lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0),
           dict(params="array", lr="float", betas="float", eps="float", weight_decay="float"),
           bad=dict(betas=[(0.9,), (0.9, 1.0), (0.9, "0.9"), (0.9, float("nan"))], eps=[-1.0])),
    Target("AdamW", optim.AdamW, lambda: dict(params=_params(), lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1),
           dict(params="array", lr="float", betas="float", eps="float", weight_decay="float")),
    Target("StepLR", lambda **kw: optim.lr_scheduler.StepLR(_sgd(), **kw), lambda: dict(step_size=3, gamma=0.5),
           dict(step_size="int", gamma="float"), bad=dict(step_size=[0])),
    Target("CosineAnnealingLR", lambda **kw: optim.lr_scheduler.CosineAnnealingLR(_sgd(), **kw),
           lambda: dict(T_max=10, eta_min=0.0), dict(T_max="int", eta_min="float")),
    Target("OneCycleLR", lambda **kw: optim.lr_scheduler.OneCycleLR(_sgd(), **kw),
           lambda: dict(max_lr=0.1, total_steps=20, pct_start=0.3, anneal_strategy="cos", three_phase=False),
           dict(max_lr="float", total_steps="int", pct_start="float", anneal_strategy="choice", three_phase="bool"),
           bad=dict(pct_start=[1.5]), optional=()),
    Target("clip_grad_norm_", optim.clip_grad_norm_,
           lambda: dict(parameters=_params(), max_norm=1.0, norm_type=2.0, error_if_nonfinite=False),
           dict(max_norm="float", norm_type="float", error_if_nonfinite="bool")),
    Target("clip_grad_value_", optim.clip_grad_value_, lambda: dict(parameters=_params(), clip_value=0.5),
           dict(clip_value="float")),
    Target("fit", _fit, _fit_call,
           dict(model="array", loss_fn="array", optimizer="array", x="floating_array", y="floating_array",
                epochs="int", batch_size="int", seed="seed", shuffle="bool", progress="bool",
                validation_data="array"),
           bad=dict(batch_size=[0], x=[np.zeros((), np.float32), np.zeros((2, 4), np.float32)],
                    y=[np.zeros((2, 2), np.float32)],
                    validation_data=[(np.zeros((3, 4), np.float32),), (np.zeros((3, 5), np.float32),
                                                                        np.zeros((3, 2), np.float32)),
                                     (np.zeros((3, 4), np.float32), np.zeros((3, 3), np.float32))],
                    loss_fn=[nn.MSELoss("none")]), optional=("validation_data", "seed")),
    Target("evaluate", _evaluate,
           lambda: {k: v for k, v in _fit_call().items() if k in ("model", "loss_fn", "x", "y", "batch_size")},
           dict(model="array", loss_fn="array", x="floating_array", y="floating_array", batch_size="int"),
           bad=dict(batch_size=[0])),
    Target("predict", _predict, lambda: dict(model=_model(), x=np.zeros((3, 4), np.float32), batch_size=2),
           dict(model="array", x="floating_array", batch_size="int"), bad=dict(batch_size=[0])),
]


@st.composite
def spoilt_calls(draw):
    target = draw(st.sampled_from(TARGETS))
    arg = draw(st.sampled_from(sorted(target.kinds)))
    value = draw(st.sampled_from(target.values(arg)))
    return target, arg, value


def test_every_public_function_and_layer_is_fuzzed():
    fuzzed = {t.name for t in TARGETS}
    assert {name for name in F.__all__ if name.endswith("_forward")} <= fuzzed
    layers = {name for name in nn.__all__ if isinstance(getattr(nn, name), type)
              and issubclass(getattr(nn, name), nn.Module) and name not in ("Module", "Sequential")}
    takes_arguments = {name for name in layers if getattr(nn, name).__init__.__code__.co_argcount > 1}
    assert takes_arguments <= fuzzed
    compared = {name for name in CASES} | {"dropout", "flatten", "batch_norm"}  # batch_norm: as batch_norm2d
    assert compared >= {n[: -len("_forward")] for n in F.__all__ if n.endswith("_forward")}


@FUZZ
@given(case=spoilt_calls())
def test_bad_argument_is_refused_by_name(case):
    target, arg, value = case
    arguments = target.valid()
    target.call(**arguments)  # the valid call works
    arguments = target.valid()
    arguments[arg] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((ValueError, TypeError)) as info:
            target.call(**arguments)
    message = str(info.value)
    names = {arg, *_aliases(arg)}
    assert any(re.search(rf"\b{re.escape(name)}\b", message) for name in names), (
        f"{target.name}({arg}={value!r}): {message!r} does not name the argument"
    )


def _aliases(arg):
    """Other names a message may give the argument by (the op's own name for a layer's argument)."""
    return {"params": ["Parameter", "params"], "validation_data": ["validation_data"], "optimizer": ["optimizer"],
            "betas": ["betas[0]", "betas[1]"]}.get(arg, [])


def test_backward_refuses_another_ops_cache():
    _, conv_cache = F.conv2d_forward(X4, np.zeros((4, 3, 3, 3)))
    _, pool_cache = F.max_pool2d_forward(X4, 2)
    for backward in (F.conv2d_backward, F.conv_transpose2d_backward, F.avg_pool2d_backward, F.linear_backward, F.flatten_backward,
                     F.dropout_backward, F.mse_loss_backward, F.softmax_cross_entropy_backward):
        cache = conv_cache if backward is not F.conv2d_backward else pool_cache
        with pytest.raises(TypeError, match="cache must be the cache that"):
            backward(np.zeros((2, 4, 6, 6)), cache)


# -- 2. valid inputs against PyTorch, in every dtype, with non-finite values ----------------------------------------

torch = pytest.importorskip("torch")
TF = torch.nn.functional

DTYPES = {"float16": 2e-2, "float32": 1e-4, "float64": 1e-9, "bfloat16": 6e-2}  # relative to the largest value


def _sprinkle(draw, a, rate):
    """NaN, +inf and -inf at a few random positions of a (a float64 NumPy array)."""
    if a.size == 0 or not draw(st.booleans()):
        return a
    a = a.copy()
    count = draw(st.integers(1, max(1, int(a.size * rate))))
    for _ in range(count):
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return a


@st.composite
def torch_cases(draw):
    op = draw(st.sampled_from(sorted(CASES)))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    seed = draw(st.integers(0, 2**32 - 1))
    return op, dtype, CASES[op](draw, np.random.default_rng(seed))


def _conv(draw, rng):
    groups = draw(st.sampled_from([1, 1, 2]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride, dilation = draw(st.sampled_from([1, 2, (1, 2)])), draw(st.sampled_from([1, 2]))
    padding = draw(st.sampled_from([0, 1, 2, (1, 0)]))
    size = (draw(st.integers(5, 8)), draw(st.integers(5, 8)))
    x = _sprinkle(draw, rng.standard_normal((draw(st.integers(1, 3)), cin, *size)), 0.05)
    w = _sprinkle(draw, rng.standard_normal((cout, cin // groups, *k)), 0.05)
    b = rng.standard_normal(cout) if draw(st.booleans()) else None
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (dict(x=x, weight=w, bias=b), lambda x, weight, bias: TF.conv2d(x, weight, bias, **options),
            lambda x, weight, bias: F.conv2d_forward(x, weight, bias, **options), F.conv2d_backward)


def _conv_transpose(draw, rng):
    groups = draw(st.sampled_from([1, 1, 2]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride, dilation = draw(st.sampled_from([1, 2, (1, 2)])), draw(st.sampled_from([1, 2]))
    padding = draw(st.sampled_from([0, 1, (1, 0)]))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1))
                           for s, d in zip(stride if isinstance(stride, tuple) else (stride,) * 2, (dilation,) * 2))
    size = (draw(st.integers(3, 6)), draw(st.integers(3, 6)))
    x = _sprinkle(draw, rng.standard_normal((draw(st.integers(1, 3)), cin, *size)), 0.05)
    w = _sprinkle(draw, rng.standard_normal((cin, cout // groups, *k)), 0.05)
    b = rng.standard_normal(cout) if draw(st.booleans()) else None
    options = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    return (dict(x=x, weight=w, bias=b), lambda x, weight, bias: TF.conv_transpose2d(x, weight, bias, **options),
            lambda x, weight, bias: F.conv_transpose2d_forward(x, weight, bias, **options),
            F.conv_transpose2d_backward)


def _pool(kind):
    def case(draw, rng):
        k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        stride = draw(st.sampled_from([None, 1, 2]))
        padding = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
        ceil_mode = draw(st.booleans())
        x = _sprinkle(draw, rng.standard_normal((draw(st.integers(1, 2)), 2, 6, 7)) * 3, 0.1)
        if kind == "max":
            x = np.where(rng.random(x.shape) < 0.3, np.round(x), x)  # ties
            options = dict(stride=stride, padding=padding, ceil_mode=ceil_mode, dilation=draw(st.sampled_from([1, 2])))
            return (dict(x=x), lambda x: TF.max_pool2d(x, k, **options),
                    lambda x: F.max_pool2d_forward(x, k, **options), F.max_pool2d_backward)
        options = dict(stride=stride, padding=padding, ceil_mode=ceil_mode, count_include_pad=draw(st.booleans()))
        return (dict(x=x), lambda x: TF.avg_pool2d(x, k, **options),
                lambda x: F.avg_pool2d_forward(x, k, **options), F.avg_pool2d_backward)

    return case


def _linear(draw, rng):
    x = _sprinkle(draw, rng.standard_normal((draw(st.integers(1, 4)), 5)), 0.1)
    w = _sprinkle(draw, rng.standard_normal((3, 5)), 0.1)
    b = rng.standard_normal(3)
    return (dict(x=x, weight=w, bias=b), TF.linear, F.linear_forward, F.linear_backward)


def _elementwise(name, torch_fn, **options):
    def case(draw, rng):
        x = _sprinkle(draw, rng.standard_normal((2, 3, 4)) * draw(st.sampled_from([1.0, 30.0, 1e3])), 0.2)
        forward = getattr(F, f"{name}_forward")
        return (dict(x=x), lambda x: torch_fn(x, **options), lambda x: forward(x, **options),
                getattr(F, f"{name}_backward"))

    return case


def _cross_entropy(draw, rng):
    classes = draw(st.integers(1, 300))
    logits = _sprinkle(draw, rng.standard_normal((3, classes)) * draw(st.sampled_from([1.0, 50.0])), 0.05)
    target_dtype = draw(st.sampled_from([np.int64, np.int32, np.uint8, np.int8, np.int16]))  # fewer than the classes
    target = rng.integers(0, min(classes, np.iinfo(target_dtype).max + 1), 3).astype(target_dtype)
    reduction = draw(st.sampled_from(["mean", "sum"]))
    return (dict(logits=logits, target=target),
            lambda logits, target: TF.cross_entropy(logits, target.long(), reduction=reduction),
            lambda logits, target: F.softmax_cross_entropy_forward(logits, target, reduction=reduction),
            F.softmax_cross_entropy_backward)


def _mse(draw, rng):
    scale = draw(st.sampled_from([1.0, 1e3, 1e30]))
    pred = _sprinkle(draw, rng.standard_normal((3, 4)) * scale, 0.1)
    target = rng.standard_normal((3, 4)) * scale
    reduction = draw(st.sampled_from(["mean", "sum"]))
    return (dict(pred=pred, target=target), lambda pred, target: TF.mse_loss(pred, target, reduction=reduction),
            lambda pred, target: F.mse_loss_forward(pred, target, reduction=reduction), F.mse_loss_backward)


def _batch_norm(draw, rng):
    scale = draw(st.sampled_from([1.0, 300.0]))
    x = rng.standard_normal((draw(st.integers(2, 4)), 3, 4, 5)) * scale
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    return (dict(x=x, weight=w, bias=b),
            lambda x, weight, bias: TF.batch_norm(x, None, None, weight, bias, training=True),
            lambda x, weight, bias: F.batch_norm2d_forward(x, weight, bias), F.batch_norm2d_backward)


def _layer_norm(draw, rng):
    x = _sprinkle(draw, rng.standard_normal((draw(st.integers(1, 3)), 3, 4, 5)) * draw(st.sampled_from([1.0, 300.0])),
                  0.02)
    shape = draw(st.sampled_from([(5,), (4, 5), (3, 4, 5)]))
    w, b = rng.standard_normal(shape), rng.standard_normal(shape)
    return (dict(x=x, weight=w, bias=b), lambda x, weight, bias: TF.layer_norm(x, shape, weight, bias),
            lambda x, weight, bias: F.layer_norm_forward(x, shape, weight, bias), F.layer_norm_backward)


def _group_norm(draw, rng):
    groups = draw(st.sampled_from([1, 2, 4]))
    x = _sprinkle(draw, rng.standard_normal((draw(st.integers(1, 3)), 4, 3, 5)) * draw(st.sampled_from([1.0, 300.0])),
                  0.02)
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    return (dict(x=x, weight=w, bias=b), lambda x, weight, bias: TF.group_norm(x, groups, weight, bias),
            lambda x, weight, bias: F.group_norm_forward(x, groups, weight, bias), F.group_norm_backward)


def _adaptive(kind):
    def case(draw, rng):
        x = _sprinkle(draw, rng.standard_normal((draw(st.integers(1, 2)), 2, draw(st.integers(1, 9)),
                                                 draw(st.integers(1, 9)))), 0.1)
        if kind == "max":
            x = np.where(rng.random(x.shape) < 0.3, np.round(x), x)  # ties
        size = (draw(st.integers(1, 12)), draw(st.sampled_from([None, 1, 2, 3, 5, 11])))
        forward = getattr(F, f"adaptive_{kind}_pool2d_forward")
        torch_fn = getattr(TF, f"adaptive_{kind}_pool2d")
        return (dict(x=x), lambda x: torch_fn(x, size), lambda x: forward(x, size),
                getattr(F, f"adaptive_{kind}_pool2d_backward"))

    return case


def _interpolate(draw, rng):
    x = _sprinkle(draw, rng.standard_normal((draw(st.integers(1, 2)), 2, draw(st.integers(1, 7)),
                                             draw(st.integers(1, 7)))), 0.05)
    mode = draw(st.sampled_from(["nearest", "nearest-exact", "bilinear"]))
    options = dict(mode=mode, align_corners=draw(st.booleans()) if mode == "bilinear" else None)
    if draw(st.booleans()):
        options["size"] = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    else:
        options["scale_factor"] = draw(st.sampled_from([2, 0.5, 1.7, (1.5, 3)]))
    return (dict(x=x), lambda x: TF.interpolate(x, **options), lambda x: F.interpolate_forward(x, **options),
            F.interpolate_backward)


CASES = {
    "adaptive_avg_pool2d": _adaptive("avg"), "adaptive_max_pool2d": _adaptive("max"), "interpolate": _interpolate,
    "layer_norm": _layer_norm, "group_norm": _group_norm, "conv_transpose2d": _conv_transpose,
    "conv2d": _conv, "max_pool2d": _pool("max"), "avg_pool2d": _pool("avg"), "linear": _linear,
    "relu": _elementwise("relu", TF.relu), "leaky_relu": _elementwise("leaky_relu", TF.leaky_relu, negative_slope=0.1),
    "sigmoid": _elementwise("sigmoid", torch.sigmoid), "tanh": _elementwise("tanh", torch.tanh),
    "arctan": _elementwise("arctan", torch.atan),
    "gelu": _elementwise("gelu", TF.gelu), "silu": _elementwise("silu", TF.silu),
    # PyTorch's vectorised CPU loop gives ELU's gradient at NaN as NaN, its scalar loop (and CUDA) as dout, which
    # xpcnn follows (docs/semantics.md): the reference runs one element at a time.
    "elu": _elementwise("elu", lambda x, alpha: torch.stack([TF.elu(e, alpha) for e in x.reshape(-1)]).reshape(x.shape),
                        alpha=0.7), "softmax_cross_entropy": _cross_entropy, "mse_loss": _mse,
    "batch_norm2d": _batch_norm,
}


FLOAT32_REFERENCE = {"interpolate"}
"""Ops whose float32 and 16-bit reference is PyTorch's float32 kernel: interpolate computes its source positions and
weights in the input's precision (float32 for float32 and 16-bit input, as PyTorch), so whether a weight is exactly
0 (and 0 * inf NaN) depends on that precision."""


def _torch_run(op, fn, inputs, dtype, douts):
    """PyTorch's output and gradients for inputs in ``dtype``: its float64 kernels on the inputs rounded to
    ``dtype``, the results rounded once to ``dtype``. That is the exact result within the dtype's precision, which
    xpcnn's float32 and float64 ops give and its 16-bit ops approach by computing in float32 (docs/semantics.md,
    `float16`). PyTorch's float64 kernels are its reference: its float32 (oneDNN) and float16 kernels skip the
    padding's products in some configurations (dilated or batched convolutions, padded 1x1 ones), so that a NaN
    weight leaves some border outputs finite there but not in float64."""
    tensors = {k: None if v is None else torch.tensor(v).to(dtype if v.dtype.kind == "f" else torch.int64)
               for k, v in inputs.items()}
    compute = torch.float32 if op in FLOAT32_REFERENCE and dtype != torch.float64 else torch.float64
    tensors = {k: t if t is None or not t.is_floating_point() else t.to(compute).requires_grad_(True)
               for k, t in tensors.items()}
    out = fn(**tensors)
    out.backward(douts(out).to(compute))
    grads = {k: (None if t is None or t.grad is None else t.grad.to(dtype)) for k, t in tensors.items()}
    return out.detach().to(dtype), grads


def _as_float64(t):
    return t.detach().to(torch.float64).numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float64)


def _assert_same(name, mine, theirs, tol):
    mine, theirs = _as_float64(mine), _as_float64(theirs)
    assert mine.shape == theirs.shape, (name, mine.shape, theirs.shape)
    for what, mask in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        np.testing.assert_array_equal(mask(mine), mask(theirs), err_msg=f"{name}: {what} at other places")
    finite = np.isfinite(theirs)
    scale = np.max(np.abs(theirs[finite]), initial=1.0)
    np.testing.assert_allclose(mine[finite], theirs[finite], rtol=tol, atol=tol * scale, err_msg=name)


@FUZZ
@given(case=torch_cases())
def test_matches_torch_in_every_dtype_with_nonfinite_values(case):
    op, dtype, (inputs, torch_fn, forward, backward) = case
    torch_dtype = getattr(torch, dtype)
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ref_out, ref_grads = _torch_run(op, torch_fn, inputs, torch_dtype,
                                            lambda out: _dout(out, rng, torch_dtype))
        except RuntimeError:  # a configuration PyTorch refuses: xpcnn must refuse it too, clearly
            with pytest.raises(ValueError):
                forward(**{k: v if v is None or v.dtype.kind != "f" else v.astype(np.float64) for k, v in inputs.items()})
            return
        dout = _dout(ref_out, np.random.default_rng(0), torch_dtype)
        if dtype == "bfloat16":  # NumPy has no bfloat16: PyTorch tensors through the array API
            arrays = {k: None if v is None else (torch.tensor(v).to(torch_dtype) if v.dtype.kind == "f"
                                                 else torch.tensor(v)) for k, v in inputs.items()}
            dout_arg = dout
        else:
            arrays = {k: None if v is None else (v.astype(dtype) if v.dtype.kind == "f" else v)
                      for k, v in inputs.items()}
            dout_arg = dout.to(torch.float64).numpy().astype(dtype) if dout.ndim else 1.0
        out, cache = forward(**arrays)
        grads = backward(dout_arg if dout.ndim else 1.0, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    tol = DTYPES[dtype]
    _assert_same(f"{op} {dtype} out", out, ref_out, tol)
    floating = [k for k, v in inputs.items() if v is not None and v.dtype.kind == "f"]
    for name, grad in zip(floating, grads, strict=False):
        if ref_grads[name] is not None:
            _assert_same(f"{op} {dtype} d{name}", grad, ref_grads[name], tol)


def _dout(out, rng, dtype):
    """The upstream gradient: 1 for a reduced loss, else random (from a fresh generator: the same for both)."""
    if out.ndim == 0:
        return torch.tensor(1.0, dtype=dtype)
    return torch.tensor(rng.standard_normal(tuple(out.shape))).to(dtype)


# -- 3. every op against PyTorch in float32/float64: layouts, options, memory forms (tests/differential.py) -------

from tests import differential  # noqa: E402  (needs torch, imported above)

DIFFERENTIAL_CONFIGS = max(40, EXAMPLES if DEEP else 0)  # per op; ~5 s for all ops at 40


@pytest.mark.parametrize("op", sorted(differential.GENS))
def test_differential_against_torch(op):
    """Random configurations of ``op`` (NCHW and NHWC, unbatched 3-D input, odd sizes, groups, dilation, ceil_mode,
    count_include_pad, divisor_override, every interpolate mode, training and evaluation batch norm with and
    without affine or running statistics, every loss option...) in float32 and float64, with read-only and
    non-contiguous inputs: outputs, every gradient, max-pool indices and running statistics equal PyTorch's, and
    PyTorch and xpcnn refuse the same configurations (xpcnn with a ValueError or TypeError)."""
    import random

    seed = np.random.SeedSequence().entropy if DEEP else 0
    failures = []
    for i in range(DIFFERENTIAL_CONFIGS):
        r = random.Random(f"{seed}-{op}-{i}")
        dtype = r.choice([np.float64, np.float64, np.float32])
        case = differential.GENS[op](r)
        try:
            differential.run_case(case, dtype, r)
        except differential.Mismatch as error:
            failures.append(f"[seed {seed}, config {i}, {np.dtype(dtype).name}] {error} -- {case.meta}")
    assert not failures, "\n".join(failures[:5])


@pytest.mark.parametrize("block", range(4))
def test_layers_and_containers_against_torch_nn(block):
    """Random xpcnn.nn layers and containers (tests/differential_nn.py) with the weights and buffers of their
    torch.nn twins: outputs, input and parameter gradients and buffers after one or two steps are PyTorch's."""
    import random

    from tests import differential_nn

    seed = np.random.SeedSequence().entropy if DEEP else 0
    failures = []
    for i in range(block * 50, block * 50 + max(50, EXAMPLES // 4 if DEEP else 0)):
        r = random.Random(f"nn-{seed}-{i}")
        try:
            differential_nn.run(r, "NHWC" if r.random() < 0.3 else "NCHW")
        except differential.Mismatch as error:
            failures.append(f"[seed {seed}, config {i}] {error} -- {dict(differential_nn.META)}")
    assert not failures, "\n".join(failures[:5])

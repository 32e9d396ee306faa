"""BatchNorm1d, BatchNorm2d, LayerNorm, GroupNorm: PyTorch's modules over several training steps (outputs,
gradients, running statistics, num_batches_tracked, momentum=None, empty batches, 16-bit floats), state dict
names, reprs, old state dicts, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import nn
from tests.helpers import assert_close

LOW = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


def _common(xp, dtype):
    return dict(xp=xp.namespace, device=xp.device, dtype=dtype)


def _torch_module(torch, layer_name, args, kwargs):
    return getattr(torch.nn, layer_name)(*args, **kwargs).double()


def _copy_parameters(xp, dtype, layer, module, rng):
    """Random weights and biases (so that the affine part matters), the same in both."""
    import torch

    for name, p in module.named_parameters():
        value = rng.standard_normal(tuple(p.shape))
        with torch.no_grad():
            p.copy_(torch.tensor(value))
        getattr(layer, name).data = xp.asarray(value, dtype)


BATCH_NORMS = [
    ("BatchNorm1d", (4, 3), {}),
    ("BatchNorm1d", (5, 3, 4), dict(momentum=0.3)),
    ("BatchNorm1d", (4, 3), dict(momentum=None)),
    ("BatchNorm2d", (3, 3, 4, 2), {}),
    ("BatchNorm2d", (3, 3, 2, 2), dict(momentum=None, eps=1e-3)),
    ("BatchNorm2d", (2, 3, 3, 3), dict(affine=False)),
    ("BatchNorm2d", (2, 3, 3, 3), dict(bias=False)),
    ("BatchNorm1d", (6, 3, 2), dict(track_running_stats=False)),
    ("BatchNorm2d", (2, 3, 2, 3), dict(momentum=None, affine=False, track_running_stats=False)),
]


@pytest.mark.torch_reference
@pytest.mark.parametrize("layer_name, shape, kwargs", BATCH_NORMS, ids=[f"{n}-{s}-{k}" for n, s, k in BATCH_NORMS])
def test_batch_norm_layers_match_torch_over_steps(xp, torch, layer_name, shape, kwargs):
    """Three training steps then evaluation: outputs, input and parameter gradients (accumulated), the running
    statistics and num_batches_tracked equal PyTorch's after every step."""
    dtype, np_dtype = xp.float_dtypes()[-1]
    rng = np.random.default_rng(0)
    layer = getattr(nn, layer_name)(3, **kwargs, **_common(xp, dtype))
    ref = _torch_module(torch, layer_name, (3,), kwargs)
    _copy_parameters(xp, dtype, layer, ref, rng)
    for step, mode in enumerate(["train", "train", "train", "eval"]):
        getattr(layer, mode)(), getattr(ref, mode)()
        x = rng.standard_normal(shape) * (step + 1) + step
        dout = rng.standard_normal(shape)
        xt = torch.tensor(x, requires_grad=True)
        out_ref = ref(xt)
        out_ref.backward(torch.tensor(dout))
        assert_close(xp, layer(xp.asarray(x, dtype)), out_ref.detach().numpy(), np_dtype)
        assert_close(xp, layer.backward(xp.asarray(dout, dtype)), xt.grad.numpy(), np_dtype)
        grads = layer.named_gradients()
        assert grads.keys() == {name for name, _ in ref.named_parameters()}
        for name, p in ref.named_parameters():
            assert_close(xp, grads[name], p.grad.numpy(), np_dtype)
        state, ref_state = layer.state_dict(), ref.state_dict()
        assert list(state) == list(ref_state)
        for name, value in ref_state.items():
            if name == "num_batches_tracked":
                xp.assert_on_backend(state[name], xp.int64)
                assert int(xp.to_numpy(state[name])) == int(value) == min(step + 1, 3)
            else:
                assert_close(xp, state[name], value.numpy(), np_dtype)


NORMS = [
    ("LayerNorm", ((4, 5),), {}, (3, 2, 4, 5)),
    ("LayerNorm", (5,), dict(bias=False, eps=1e-3), (3, 5)),
    ("LayerNorm", ([2, 5],), dict(elementwise_affine=False), (2, 5)),
    ("GroupNorm", (2, 4), {}, (3, 4, 2, 3)),
    ("GroupNorm", (4, 4), dict(affine=False), (2, 4, 5)),
    ("GroupNorm", (1, 6), dict(bias=False), (2, 6)),
]


@pytest.mark.torch_reference
@pytest.mark.parametrize("layer_name, args, kwargs, shape", NORMS, ids=[f"{n}-{a}-{k}" for n, a, k, _ in NORMS])
def test_layer_and_group_norm_layers_match_torch(xp, torch, layer_name, args, kwargs, shape):
    dtype, np_dtype = xp.float_dtypes()[-1]
    rng = np.random.default_rng(1)
    layer = getattr(nn, layer_name)(*args, **kwargs, **_common(xp, dtype))
    ref = _torch_module(torch, layer_name, args, kwargs)
    assert list(layer.state_dict()) == list(ref.state_dict())
    _copy_parameters(xp, dtype, layer, ref, rng)
    for _ in range(2):
        x, dout = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape)
        xt = torch.tensor(x, requires_grad=True)
        out_ref = ref(xt)
        out_ref.backward(torch.tensor(dout))
        assert_close(xp, layer(xp.asarray(x, dtype)), out_ref.detach().numpy(), np_dtype)
        assert_close(xp, layer.backward(xp.asarray(dout, dtype)), xt.grad.numpy(), np_dtype)
        grads = layer.named_gradients()
        assert grads.keys() == {name for name, _ in ref.named_parameters()}
        for name, p in ref.named_parameters():
            assert_close(xp, grads[name], p.grad.numpy(), np_dtype)


CONSTRUCTORS = [
    ("BatchNorm1d", (3,), {}), ("BatchNorm1d", (3,), dict(affine=False)), ("BatchNorm1d", (3,), dict(bias=False)),
    ("BatchNorm2d", (4,), dict(track_running_stats=False)), ("BatchNorm2d", (4,), dict(momentum=None, eps=1e-3)),
    ("BatchNorm2d", (4,), dict(affine=False, track_running_stats=False)),
    ("LayerNorm", (4,), {}), ("LayerNorm", ((2, 3),), dict(bias=False)), ("LayerNorm", ([3],), dict(elementwise_affine=False)),
    ("GroupNorm", (2, 4), {}), ("GroupNorm", (2, 4), dict(affine=False)), ("GroupNorm", (1, 3), dict(bias=False)),
]


@pytest.mark.torch_reference
@pytest.mark.parametrize("layer_name, args, kwargs", CONSTRUCTORS, ids=[f"{n}-{a}-{k}" for n, a, k in CONSTRUCTORS])
def test_state_dict_defaults_and_repr_equal_torch(torch, layer_name, args, kwargs):
    """The same state dict names in the same order, PyTorch's default values (weight ones, bias zeros, running
    mean 0, running variance 1, num_batches_tracked 0 as int64) and the same repr."""
    layer = getattr(nn, layer_name)(*args, **kwargs, dtype=np.float64)
    ref = getattr(torch.nn, layer_name)(*args, **kwargs).double()
    assert list(layer.state_dict()) == list(ref.state_dict())
    for name, value in ref.state_dict().items():
        got = layer.state_dict()[name]
        assert str(got.dtype) == str(value.dtype).removeprefix("torch.")
        np.testing.assert_array_equal(got, value.numpy())
    assert repr(layer) == repr(ref)


@pytest.mark.torch_reference
def test_empty_batches_are_counted_as_torch(xp, torch):
    """An empty training batch: an empty output, the running statistics untouched, num_batches_tracked counted;
    with momentum=None the next batch's weight is then 1/2, as PyTorch."""
    dtype, np_dtype = xp.float_dtypes()[-1]
    rng = np.random.default_rng(2)
    for layer_name, shape in (("BatchNorm2d", (3, 2, 2)), ("BatchNorm1d", (3,))):
        layer = getattr(nn, layer_name)(3, momentum=None, **_common(xp, dtype))
        ref = getattr(torch.nn, layer_name)(3, momentum=None).double()
        for batch in (0, 4):
            x = rng.standard_normal((batch, *shape)) + 1
            out = layer(xp.asarray(x, dtype))
            out_ref = ref(torch.tensor(x))
            assert tuple(out.shape) == tuple(out_ref.shape)
            assert_close(xp, out, out_ref.detach().numpy(), np_dtype)
            dx = layer.backward(xp.ones(tuple(out.shape), dtype=dtype, device=xp.device))
            assert tuple(dx.shape) == x.shape
            for name, value in ref.state_dict().items():
                got = xp.to_numpy(layer.state_dict()[name])
                np.testing.assert_allclose(got, value.numpy(), rtol=1e-5, err_msg=name)
        assert int(xp.to_numpy(layer.num_batches_tracked)) == 2


@pytest.mark.torch_reference
@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_16_bit_batch_norm_layer_matches_torch(xp, torch, low):
    """A 16-bit BatchNorm1d on large-variance batches: the running variance (~1e4) is blended in float32 and
    rounded once, finite and equal to PyTorch's (.half() / .bfloat16() module) within one rounding."""
    if xp.name.startswith("array_api_strict") or getattr(xp.namespace, low, None) is None:
        pytest.skip(f"{xp.name} has no {low}")
    dtype = getattr(xp.namespace, low)
    rng = np.random.default_rng(3)
    layer = nn.BatchNorm1d(3, **_common(xp, dtype))
    ref = torch.nn.BatchNorm1d(3).to(getattr(torch, low))
    for _ in range(3):
        xt = torch.tensor(rng.standard_normal((8, 3, 4)) * 350 + 20).to(getattr(torch, low))
        x = xp.astype(xp.asarray(xt.float().numpy(), xp.float32), dtype)
        out, out_ref = layer(x), ref(xt)
        xp.assert_on_backend(out, dtype)
        for got, want in ((out, out_ref), (layer.running_mean, ref.running_mean), (layer.running_var, ref.running_var)):
            got = xp.to_numpy(xp.astype(got, xp.float32))
            want = want.detach().float().numpy()
            assert np.isfinite(got).all()
            np.testing.assert_allclose(got, want, rtol=2 * LOW[low], atol=LOW[low] * np.abs(want).max())
    assert float(xp.to_numpy(xp.astype(layer.running_var, xp.float32)).min()) > 1000


def test_state_dicts_without_num_batches_tracked_still_load(tmp_path):
    """A state dict saved before num_batches_tracked existed loads (the counter keeps its value, as PyTorch);
    any other missing name is still an error."""
    def model():
        nn.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2), nn.BatchNorm1d(2))

    source = model()
    source(np.random.default_rng(4).standard_normal((3, 1, 4, 4)).astype(np.float32))
    old = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    target = model()
    target.load_state_dict(old)
    for name, value in old.items():
        np.testing.assert_array_equal(target.state_dict()[name], value)
    assert target.state_dict()["1.num_batches_tracked"] == 0 and source.state_dict()["1.num_batches_tracked"] == 1
    np.savez(tmp_path / "old.npz", **old)
    xpcnn.load(model(), tmp_path / "old.npz")
    with pytest.raises(ValueError, match="missing '1.running_mean'"):
        model().load_state_dict({k: v for k, v in old.items() if k != "1.running_mean"})
    complete = model()
    complete.load_state_dict(source.state_dict())
    assert complete.state_dict()["1.num_batches_tracked"] == 1


@pytest.mark.parametrize("layer_name, args", [("BatchNorm1d", (3,)), ("LayerNorm", (3,)), ("GroupNorm", (1, 3))])
def test_backward_without_input_gradient(xp, layer_name, args):
    dtype = xp.float_dtypes()[-1][0]
    rng = np.random.default_rng(5)
    x, dout = (xp.asarray(rng.standard_normal((4, 3)), dtype) for _ in range(2))
    layer = getattr(nn, layer_name)(*args, **_common(xp, dtype))
    layer(x)
    assert layer.backward(dout) is not None
    expected = {k: xp.to_numpy(v) for k, v in layer.named_gradients().items()}
    layer.zero_grad()
    layer(x)
    assert layer.backward(dout, input_grad=False) is None
    for name, grad in layer.named_gradients().items():
        np.testing.assert_array_equal(xp.to_numpy(grad), expected[name])


@pytest.mark.torch_reference
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_network_with_every_norm_matches_torch(xp, torch, mode):
    """Conv -> GroupNorm -> ReLU -> Flatten -> Linear -> BatchNorm1d -> LayerNorm -> Linear, with cross-entropy:
    the loss, the input gradient and every parameter gradient equal PyTorch's."""
    dtype, np_dtype = xp.float_dtypes()[-1]
    nn.manual_seed(6)
    common = _common(xp, dtype)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, **common), nn.GroupNorm(2, 4, **common), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 3 * 3, 6, **common), nn.BatchNorm1d(6, **common),
                          nn.LayerNorm(6, **common), nn.Linear(6, 3, **common))
    tnn = torch.nn
    net = tnn.Sequential(tnn.Conv2d(2, 4, 3, padding=1), tnn.GroupNorm(2, 4), tnn.ReLU(), tnn.Flatten(),
                         tnn.Linear(36, 6), tnn.BatchNorm1d(6), tnn.LayerNorm(6), tnn.Linear(6, 3)).double()
    from xpcnn._host import to_numpy

    net.load_state_dict({k: torch.tensor(to_numpy(v).astype(np.float64)) for k, v in model.state_dict().items()})
    getattr(model, mode)(), getattr(net, mode)()
    rng = np.random.default_rng(7)
    x, target = rng.standard_normal((5, 2, 3, 3)), rng.integers(0, 3, 5)
    xt = torch.tensor(x, requires_grad=True)
    loss_ref = torch.nn.functional.cross_entropy(net(xt), torch.tensor(target))
    loss_ref.backward()
    criterion = nn.CrossEntropyLoss()
    loss = criterion(model(xp.asarray(x, dtype)), xp.asarray(target, xp.int64))
    assert_close(xp, loss, loss_ref.detach().numpy(), np_dtype)
    assert_close(xp, model.backward(criterion.backward()), xt.grad.numpy(), np_dtype)
    grads = model.named_gradients()
    for name, p in net.named_parameters():
        assert_close(xp, grads[name], p.grad.numpy(), np_dtype)
    for name in ("5.running_mean", "5.running_var"):
        assert_close(xp, model.state_dict()[name], net.state_dict()[name].numpy(), np_dtype)


LAYOUT_PAIRS = [
    ("BatchNorm2d", (3,), {}, (4, 3, 5, 2)),
    ("BatchNorm2d", (3,), dict(momentum=None, affine=False), (2, 3, 3, 3)),
    ("BatchNorm1d", (3,), dict(momentum=0.3), (5, 3, 4)),
    ("GroupNorm", (2, 4), {}, (3, 4, 2, 3)),
    ("GroupNorm", (4, 4), dict(bias=False), (2, 4, 5)),
]


@pytest.mark.parametrize("layer_name, args, kwargs, shape", LAYOUT_PAIRS,
                         ids=[f"{n}-{a}-{k}" for n, a, k, _ in LAYOUT_PAIRS])
def test_nhwc_layers_equal_nchw_layers_on_the_transposed_input(xp, layer_name, args, kwargs, shape):
    """A layer built with data_format="NHWC", fed x moved to (N, *, C), gives the NCHW layer's output and input
    gradient moved likewise, and the same parameter gradients and running statistics, over training steps and
    in evaluation; the two layers' state dicts are interchangeable."""
    dtype, np_dtype = xp.float_dtypes()[-1]
    rng = np.random.default_rng(1)
    first = getattr(nn, layer_name)(*args, **kwargs, **_common(xp, dtype))
    last = getattr(nn, layer_name)(*args, **kwargs, data_format="NHWC", **_common(xp, dtype))
    for name, p in first.named_parameters():
        value = rng.standard_normal(tuple(p.data.shape))
        p.data = xp.asarray(value, dtype)
        getattr(last, name).data = xp.asarray(value, dtype)
    move = lambda a: np.moveaxis(a, 1, -1)  # noqa: E731
    for mode in ("train", "train", "eval"):
        getattr(first, mode)(), getattr(last, mode)()
        x = rng.standard_normal(shape) * 2 + 1
        dout = rng.standard_normal(shape)
        out = xp.to_numpy(first(xp.asarray(x, dtype)))
        assert_close(xp, last(xp.asarray(move(x), dtype)), move(out), np_dtype)
        dx = xp.to_numpy(first.backward(xp.asarray(dout, dtype)))
        assert_close(xp, last.backward(xp.asarray(move(dout), dtype)), move(dx), np_dtype)
        grads = last.named_gradients()
        for name, g in first.named_gradients().items():
            assert_close(xp, grads[name], xp.to_numpy(g), np_dtype)
        state = last.state_dict()
        for name, value in first.state_dict().items():
            assert_close(xp, state[name], xp.to_numpy(value), np_dtype, dtype=value.dtype)
    last.load_state_dict(first.state_dict())
    assert "data_format='NHWC'" in repr(last) and "data_format" not in repr(first)


def test_nhwc_by_accident_names_data_format():
    with pytest.raises(ValueError, match=r"x looks NHWC: construct the layer with data_format='NHWC'"):
        nn.BatchNorm2d(3)(np.zeros((2, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\) with C = 3.*looks NCHW"):
        nn.BatchNorm2d(3, data_format="NHWC")(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"x looks NHWC"):
        nn.GroupNorm(2, 4)(np.zeros((2, 5, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"data_format must be 'NCHW' or 'NHWC', got 'channels_last'"):
        nn.GroupNorm(2, 4, data_format="channels_last")


@pytest.mark.parametrize(
    "make, error, word",
    [
        (lambda: nn.BatchNorm1d(0), ValueError, "num_features must be >= 1"),
        (lambda: nn.BatchNorm2d(2.0), TypeError, "num_features must be an int"),
        (lambda: nn.BatchNorm2d(2, eps=float("nan")), ValueError, "eps must be a finite number"),
        (lambda: nn.BatchNorm2d(2, eps="1e-5"), TypeError, "eps must be a real number"),
        (lambda: nn.BatchNorm2d(2, eps=-1e-5), ValueError, "eps must be >= 0"),
        (lambda: nn.BatchNorm2d(2, momentum="0.1"), TypeError, "momentum must be a real number"),
        (lambda: nn.BatchNorm1d(2, momentum=float("nan")), ValueError, "momentum must be a finite number"),
        (lambda: nn.BatchNorm1d(2, affine="yes"), TypeError, "affine must be True or False"),
        (lambda: nn.BatchNorm1d(2, track_running_stats=1), TypeError, "track_running_stats must be True or False"),
        (lambda: nn.BatchNorm1d(2, bias=None), TypeError, "bias must be True or False"),
        (lambda: nn.LayerNorm(()), ValueError, "at least one axis"),
        (lambda: nn.LayerNorm(4.0), TypeError, "normalized_shape must be an int or a tuple of ints"),
        (lambda: nn.LayerNorm(4, elementwise_affine=1), TypeError, "elementwise_affine must be True or False"),
        (lambda: nn.LayerNorm(4, eps=None), TypeError, "eps must be a real number"),
        (lambda: nn.GroupNorm(3, 4), ValueError, "num_groups=3 must divide num_channels=4"),
        (lambda: nn.GroupNorm(0, 4), ValueError, "num_groups must be >= 1"),
        (lambda: nn.GroupNorm(2, 4, affine="no"), TypeError, "affine must be True or False"),
    ],
)
def test_bad_constructor_arguments(make, error, word):
    with pytest.raises(error, match=word):
        make()


@pytest.mark.parametrize(
    "layer, x, error, word",
    [
        (nn.BatchNorm1d(3), np.zeros((2, 3, 4, 5), np.float32), ValueError,
         r"BatchNorm1d takes x of shape \(N, C\) or \(N, C, L\) with C = 3, got shape \(2, 3, 4, 5\)"),
        (nn.BatchNorm1d(3), np.zeros((2, 4), np.float32), ValueError, "with C = 3, got shape"),
        (nn.BatchNorm2d(3), np.zeros((2, 3, 4), np.float32), ValueError, r"\(N, C, H, W\) with C = 3"),
        (nn.BatchNorm2d(3, affine=False, track_running_stats=False), np.zeros((2, 4, 2, 2), np.float32),
         ValueError, "with C = 3"),
        (nn.BatchNorm2d(3), [[1.0]], TypeError, "x must be an array"),
        (nn.GroupNorm(2, 4, affine=False), np.zeros((2, 6, 3), np.float32), ValueError, r"\(N, C, \*\) with C = 4"),
        (nn.LayerNorm(3), np.zeros((2, 4), np.float32), ValueError, r"x must have shape \(\*, 3\)"),
        (nn.BatchNorm1d(3), np.zeros((2, 3)), TypeError, "weight has dtype float32 but x has dtype float64"),
        (nn.BatchNorm1d(3), np.zeros((1, 3), np.float32), ValueError, "more than one value per channel"),
        (nn.BatchNorm1d(3, eps=0.0), np.ones((2, 3), np.float32), ValueError, "eps must be > 0"),
    ],
)
def test_bad_layer_input(layer, x, error, word):
    before = {k: np.array(v) for k, v in layer.state_dict().items()}
    with pytest.raises(error, match=word):
        layer(x)
    for name, value in layer.state_dict().items():  # a refused batch is not counted
        np.testing.assert_array_equal(value, before[name])

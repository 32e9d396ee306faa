"""Layer objects: gradients equal their functional ops, a whole CNN equals PyTorch (same weights) and finite
differences, BatchNorm2d/Dropout train and eval behaviour, initialisation, moves between backends."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xpcnn import functional as F
from xpcnn import nn
from tests.helpers import assert_close, numerical_gradient

RNG = np.random.default_rng(0)


def _cnn(xp=None, device=None, dtype=None):
    nn.manual_seed(3)
    common = dict(xp=xp, device=device, dtype=dtype)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, **common),
        nn.BatchNorm2d(4, **common),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, (2, 3), stride=(1, 2), groups=2, **common),
        nn.LeakyReLU(0.1),
        nn.AvgPool2d(2, stride=1, padding=1),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(6 * 3 * 2, 5, **common),
        nn.Tanh(),
        nn.Linear(5, 3, **common),
    )


def _torch_cnn(torch, model):
    tnn = torch.nn
    net = tnn.Sequential(
        tnn.Conv2d(2, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(4, 6, (2, 3), stride=(1, 2), groups=2), tnn.LeakyReLU(0.1), tnn.AvgPool2d(2, stride=1, padding=1),
        tnn.Dropout(0.5), tnn.Flatten(), tnn.Linear(36, 5), tnn.Tanh(), tnn.Linear(5, 3),
    ).double()
    state = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in _numpy_state(model).items()}
    net.load_state_dict(state, strict=False)
    return net


def _numpy_state(model):
    from xpcnn._host import to_numpy

    return {k: to_numpy(v) for k, v in model.state_dict().items()}


@pytest.mark.torch_reference
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cnn_matches_torch(xp, torch, mode):
    """Loss, input gradient, every parameter gradient and BatchNorm's running statistics equal PyTorch's
    (dropout in eval mode; in train mode without it, since the masks differ)."""
    dtype, np_dtype = xp.float_dtypes()[-1]
    model = _cnn(xp.namespace, xp.device, dtype)
    net = _torch_cnn(torch, model)
    getattr(model, mode)()
    getattr(net, mode)()
    if mode == "train":
        model.layers[7].p = 0.0
        net[7].p = 0.0
    x = RNG.standard_normal((4, 2, 6, 8))
    target = RNG.integers(0, 3, 4)

    xt = torch.tensor(x, requires_grad=True)
    loss_ref = torch.nn.functional.cross_entropy(net(xt), torch.tensor(target))
    loss_ref.backward()

    criterion = nn.CrossEntropyLoss()
    loss = criterion(model(xp.asarray(x, dtype)), xp.asarray(target, xp.int64))
    dx = model.backward(criterion.backward())
    assert_close(xp, loss, loss_ref.detach().numpy(), np_dtype)
    assert_close(xp, dx, xt.grad.numpy(), np_dtype)
    grads = model.named_gradients()
    for name, p in net.named_parameters():
        assert_close(xp, grads[name], p.grad.numpy(), np_dtype)
    for name in ("1.running_mean", "1.running_var"):
        assert_close(xp, model.state_dict()[name], net.state_dict()[name].numpy(), np_dtype)


def test_cnn_matches_finite_differences():
    model = _cnn(dtype=np.float64).eval()
    x = RNG.standard_normal((2, 2, 6, 8))
    target = RNG.integers(0, 3, 2)
    criterion = nn.CrossEntropyLoss()

    def loss_of(v):
        return criterion(model(v), target)

    loss_of(x)
    dx = model.backward(criterion.backward())
    np.testing.assert_allclose(dx, numerical_gradient(loss_of, x, 1.0), rtol=1e-5, atol=1e-8)
    grads = model.named_gradients()
    for name, p in model.named_parameters():
        original = p.data

        def loss_with(v):
            p.data = v
            return loss_of(x)

        numeric = numerical_gradient(loss_with, original.copy(), 1.0)
        p.data = original
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-8, err_msg=name)


LAYERS = [
    (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=np.float64), F.conv2d_forward, F.conv2d_backward),
    (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1, dtype=np.float64),
     F.conv_transpose2d_forward, F.conv_transpose2d_backward),
    (lambda: nn.Linear(3 * 5 * 5, 4, dtype=np.float64), None, None),
    (lambda: nn.MaxPool2d(3, stride=1, padding=1), F.max_pool2d_forward, F.max_pool2d_backward),
    (lambda: nn.AvgPool2d(2, ceil_mode=True), F.avg_pool2d_forward, F.avg_pool2d_backward),
    (lambda: nn.ReLU(), F.relu_forward, F.relu_backward),
    (lambda: nn.Sigmoid(), F.sigmoid_forward, F.sigmoid_backward),
    (lambda: nn.Arctan(), F.arctan_forward, F.arctan_backward),
    (lambda: nn.Flatten(), F.flatten_forward, F.flatten_backward),
    (lambda: nn.AdaptiveAvgPool2d((3, None)), F.adaptive_avg_pool2d_forward, F.adaptive_avg_pool2d_backward),
    (lambda: nn.AdaptiveMaxPool2d(2), F.adaptive_max_pool2d_forward, F.adaptive_max_pool2d_backward),
    (lambda: nn.Upsample(scale_factor=1.5, mode="bilinear", align_corners=True), F.interpolate_forward,
     F.interpolate_backward),
]


@pytest.mark.parametrize("make, forward, backward", LAYERS, ids=lambda v: getattr(v, "__name__", ""))
def test_layer_equals_its_functional_op(make, forward, backward):
    layer = make()
    x = RNG.standard_normal((2, 3, 5, 5))
    if isinstance(layer, nn.Linear):
        x = x.reshape(2, -1)
    out = layer(x)
    dout = RNG.standard_normal(out.shape)
    dx = layer.backward(dout)
    params = [p.data for p in layer.parameters()]
    if isinstance(layer, nn.Linear):
        ref_out, cache = F.linear_forward(x, *params)
        ref_dx, *ref_grads = F.linear_backward(dout, cache)
    else:
        kwargs = getattr(layer, "options", {})
        ref_out, cache = forward(x, *params, **kwargs)
        ref = backward(dout, cache)
        ref_dx, *ref_grads = ref if isinstance(ref, tuple) else (ref,)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(dx, ref_dx)
    for p, g in zip(layer.parameters(), ref_grads):
        np.testing.assert_array_equal(p.grad, g)
    layer(x)
    layer.backward(dout)  # gradients accumulate over backward passes
    for p, g in zip(layer.parameters(), ref_grads):
        np.testing.assert_allclose(p.grad, 2 * g)


def test_backward_without_input_gradient(xp):
    """``backward(dout, input_grad=False)`` gives every parameter the same gradient and returns None; in a
    Sequential the layers before the first with parameters only release their caches (a flatten, say)."""
    dtype, np_dtype = xp.float_dtypes()[-1]
    x = xp.asarray(RNG.standard_normal((3, 2, 6, 8)), dtype)
    target = xp.asarray(RNG.integers(0, 3, 3), xp.int64)
    criterion = nn.CrossEntropyLoss()
    for model in (_cnn(xp.namespace, xp.device, dtype).eval(),
                  nn.Sequential(nn.Flatten(), nn.Linear(96, 3, xp=xp.namespace, device=xp.device, dtype=dtype))):
        criterion(model(x), target)
        assert model.backward(criterion.backward()) is not None
        expected = {name: xp.to_numpy(grad) for name, grad in model.named_gradients().items()}
        model.zero_grad()
        criterion(model(x), target)
        assert model.backward(criterion.backward(), input_grad=False) is None
        grads = model.named_gradients()
        assert grads.keys() == expected.keys()
        for name, grad in grads.items():
            assert_close(xp, grad, expected[name], np_dtype)
        with pytest.raises(RuntimeError, match="without a forward pass"):
            model.layers[0].backward(x)


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(3, 2, 3, dtype=np.float64),
                                  lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, dtype=np.float64),
                                  lambda: nn.Linear(5, 2, dtype=np.float64)],
                         ids=["conv2d", "conv_transpose2d", "linear"])
def test_parameter_layer_without_input_gradient(make):
    layer = make()
    x = RNG.standard_normal((4, 5) if isinstance(layer, nn.Linear) else (2, 3, 5, 5))
    dout = RNG.standard_normal(layer(x).shape)
    layer.backward(dout)
    expected = [p.grad for p in layer.parameters()]
    layer.zero_grad()
    layer(x)
    assert layer.backward(dout, input_grad=False) is None
    for p, g in zip(layer.parameters(), expected):
        np.testing.assert_array_equal(p.grad, g)


def test_backward_without_forward_raises():
    layer = nn.ReLU()
    with pytest.raises(RuntimeError, match="without a forward pass"):
        layer.backward(np.ones(3))


@pytest.mark.torch_reference
def test_batchnorm_train_then_eval_matches_torch(torch):
    bn, ref = nn.BatchNorm2d(3, momentum=0.2, dtype=np.float64), torch.nn.BatchNorm2d(3, momentum=0.2).double()
    for _ in range(3):
        x = RNG.standard_normal((4, 3, 5, 5)) * 2 + 1
        np.testing.assert_allclose(bn(x), ref(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, ref.running_var.numpy(), rtol=1e-12)
    bn.eval(), ref.eval()
    x = RNG.standard_normal((2, 3, 5, 5))
    xt = torch.tensor(x, requires_grad=True)
    out_ref = ref(xt)
    dout = RNG.standard_normal(x.shape)
    out_ref.backward(torch.tensor(dout))
    np.testing.assert_allclose(bn(x), out_ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.backward(dout), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.weight.grad, ref.weight.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_dropout_train_and_eval(xp):
    x = xp.asarray(np.ones((50, 40), dtype=np.float32))
    drop = nn.Dropout(0.3, seed=7)
    out = drop(x)
    xp.assert_on_backend(out, xp.float32)
    values = xp.to_numpy(out)
    assert set(np.unique(values)) <= {0.0, np.float32(1 / 0.7)}
    assert 0.25 < np.mean(values == 0) < 0.35
    np.testing.assert_array_equal(xp.to_numpy(drop.backward(x)), values)  # the same mask
    second = xp.to_numpy(drop(x))
    assert not np.array_equal(second, values)  # a new mask each step...
    again = nn.Dropout(0.3, seed=7)
    np.testing.assert_array_equal(xp.to_numpy(again(x)), values)  # ...and the same sequence for the same seed
    drop.eval()
    assert drop(x) is x
    assert drop.backward(x) is x


def test_initialisation_follows_torch_bounds():
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, as PyTorch's defaults."""
    conv = nn.Conv2d(6, 8, (3, 5), groups=2, seed=1)
    bound = 1 / math.sqrt(3 * 3 * 5)
    assert 0.95 * bound < np.abs(conv.weight.data).max() <= bound
    assert np.abs(conv.bias.data).max() <= bound
    assert conv.weight.data.dtype == np.float32
    lin = nn.Linear(100, 20, seed=1)
    assert np.abs(lin.weight.data).max() <= 0.1
    assert abs(float(np.std(lin.weight.data)) - 0.1 / math.sqrt(3)) < 0.005  # uniform's std
    nn.manual_seed(5)
    a = nn.Linear(4, 4).weight.data
    nn.manual_seed(5)
    np.testing.assert_array_equal(a, nn.Linear(4, 4).weight.data)


def test_conv_transpose_initialisation_follows_torch(torch):
    """PyTorch's fan_in for the transposed layout, weight.shape[1] * kh * kw = out_channels / groups * kh * kw,
    bounds the weights and the bias; the bias has out_channels entries."""
    layer = nn.ConvTranspose2d(6, 8, (3, 5), groups=2, seed=1)
    reference = torch.nn.ConvTranspose2d(6, 8, (3, 5), groups=2)
    assert layer.weight.data.shape == tuple(reference.weight.shape) == (6, 4, 3, 5)
    assert layer.bias.data.shape == tuple(reference.bias.shape) == (8,)
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(reference.weight)
    bound = 1 / math.sqrt(fan_in)
    assert fan_in == 4 * 3 * 5
    assert 0.95 * bound < np.abs(layer.weight.data).max() <= bound
    assert 0.5 * bound < np.abs(layer.bias.data).max() <= bound
    assert layer.weight.data.dtype == np.float32
    assert nn.ConvTranspose2d(2, 3, 2, bias=False).bias is None


def test_conv_transpose_repr():
    assert repr(nn.ConvTranspose2d(4, 6, 3)) == (
        "ConvTranspose2d(4, 6, kernel_size=(3, 3), stride=1, padding=0, output_padding=0, groups=1, dilation=1, "
        "bias=True)"
    )
    layer = nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=1, output_padding=(1, 0), groups=2, bias=False,
                               dilation=2)
    assert repr(layer) == (
        "ConvTranspose2d(4, 6, kernel_size=(3, 2), stride=(2, 1), padding=1, output_padding=(1, 0), groups=2, "
        "dilation=2, bias=False)"
    )


@pytest.mark.torch_reference
def test_conv_transpose_layer_matches_torch(xp, torch):
    """Same weights (loaded by parameter name): output, input gradient and parameter gradients equal
    torch.nn.ConvTranspose2d's; input_grad=False gives the same parameter gradients and no input gradient."""
    dtype, np_dtype = xp.float_dtypes()[-1]
    layer = nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=1, output_padding=(1, 0), groups=2, dilation=(1, 2),
                               xp=xp.namespace, device=xp.device, dtype=dtype, seed=4)
    reference = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=1, output_padding=(1, 0), groups=2,
                                         dilation=(1, 2)).double()
    reference.load_state_dict({k: torch.tensor(v.astype(np.float64)) for k, v in _numpy_state(layer).items()})
    x = RNG.standard_normal((3, 4, 5, 6))
    xt = torch.tensor(x, requires_grad=True)
    out_ref = reference(xt)
    dout = RNG.standard_normal(tuple(out_ref.shape))
    out_ref.backward(torch.tensor(dout))
    assert_close(xp, layer(xp.asarray(x, dtype)), out_ref.detach().numpy(), np_dtype)
    assert_close(xp, layer.backward(xp.asarray(dout, dtype)), xt.grad.numpy(), np_dtype)
    grads = layer.named_gradients()
    for name, p in reference.named_parameters():
        assert_close(xp, grads[name], p.grad.numpy(), np_dtype)
    layer.zero_grad()
    layer(xp.asarray(x, dtype))
    assert layer.backward(xp.asarray(dout, dtype), input_grad=False) is None
    for name, p in reference.named_parameters():
        assert_close(xp, layer.named_gradients()[name], p.grad.numpy(), np_dtype)


def test_parameters_are_made_on_the_chosen_backend(xp):
    dtype = xp.float32
    model = _cnn(xp.namespace, xp.device, dtype)
    for name, value in model.state_dict().items():
        xp.assert_on_backend(value, xp.int64 if name.endswith("num_batches_tracked") else dtype)


def test_model_moves_between_backends_explicitly():
    strict = pytest.importorskip("array_api_strict")
    model = _cnn()
    before = _numpy_state(model)
    model.to(strict, device=strict.Device("device1"))
    assert all(v.device == strict.Device("device1") for v in model.state_dict().values())
    x = strict.asarray(RNG.standard_normal((2, 2, 6, 8)).astype(np.float32), device=strict.Device("device1"))
    model.eval()(x)
    with pytest.raises(ValueError, match="x is on device"):
        model(strict.asarray(np.zeros((2, 2, 6, 8), dtype=np.float32)))
    with pytest.raises(ValueError, match="numpy array"):
        model(np.zeros((2, 2, 6, 8), dtype=np.float32))
    model.to(np)
    for name, value in _numpy_state(model).items():
        np.testing.assert_array_equal(value, before[name])


@pytest.mark.parametrize(
    "make, error, word",
    [
        (lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, "groups"),
        (lambda: nn.Conv2d(0, 4, 3), ValueError, "in_channels"),
        (lambda: nn.Conv2d(3, 4, 0), ValueError, "kernel_size"),
        (lambda: nn.ConvTranspose2d(3, 4, 3, groups=2), ValueError, "groups=2 must divide in_channels=3"),
        (lambda: nn.ConvTranspose2d(3, 0, 3), ValueError, "out_channels must be >= 1"),
        (lambda: nn.ConvTranspose2d(3, 4, (3, 0)), ValueError, "kernel_size"),
        (lambda: nn.ConvTranspose2d(3, 4, 3, bias="yes"), TypeError, "bias must be True or False"),
        (lambda: nn.Linear(3, -1), ValueError, "out_features"),
        (lambda: nn.Linear(3.5, 2), TypeError, "in_features"),
        (lambda: nn.Dropout(1.5), ValueError, "probability"),
        (lambda: nn.BatchNorm2d(0), ValueError, "num_features"),
        (lambda: nn.Sequential(nn.ReLU(), "relu"), TypeError, "Module"),
    ],
)
def test_bad_constructor_arguments(make, error, word):
    with pytest.raises(error, match=word):
        make()


def _resizing_model(xp=None, device=None, dtype=None):
    nn.manual_seed(4)
    common = dict(xp=xp, device=device, dtype=dtype)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, **common),
        nn.Upsample(scale_factor=1.5, mode="bilinear"),
        nn.AdaptiveMaxPool2d((5, 4)),
        nn.Upsample(size=(7, 6)),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(27, 4, **common),
    )


@pytest.mark.torch_reference
def test_resizing_layers_match_torch(xp, torch):
    """Upsampling, adaptive max and average pooling between a convolution and a linear layer: loss, input gradient
    and parameter gradients equal PyTorch's."""
    dtype, np_dtype = xp.float_dtypes()[-1]
    model = _resizing_model(xp.namespace, xp.device, dtype)
    tnn = torch.nn
    net = tnn.Sequential(
        tnn.Conv2d(2, 3, 3, padding=1), tnn.Upsample(scale_factor=1.5, mode="bilinear"), tnn.AdaptiveMaxPool2d((5, 4)),
        tnn.Upsample(size=(7, 6)), tnn.AdaptiveAvgPool2d(3), tnn.Flatten(), tnn.Linear(27, 4),
    ).double()
    net.load_state_dict({k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in _numpy_state(model).items()})
    x = RNG.standard_normal((3, 2, 5, 7))
    target = RNG.integers(0, 4, 3)
    xt = torch.tensor(x, requires_grad=True)
    loss_ref = torch.nn.functional.cross_entropy(net(xt), torch.tensor(target))
    loss_ref.backward()
    criterion = nn.CrossEntropyLoss()
    loss = criterion(model(xp.asarray(x, dtype)), xp.asarray(target, xp.int64))
    dx = model.backward(criterion.backward())
    assert_close(xp, loss, loss_ref.detach().numpy(), np_dtype)
    assert_close(xp, dx, xt.grad.numpy(), np_dtype)
    grads = model.named_gradients()
    for name, p in net.named_parameters():
        assert_close(xp, grads[name], p.grad.numpy(), np_dtype)


@pytest.mark.torch_reference
def test_resizing_layer_reprs_match_torch(torch):
    pairs = [
        (nn.AdaptiveAvgPool2d(5), torch.nn.AdaptiveAvgPool2d(5)),
        (nn.AdaptiveAvgPool2d((5, None)), torch.nn.AdaptiveAvgPool2d((5, None))),
        (nn.AdaptiveMaxPool2d((3, 4)), torch.nn.AdaptiveMaxPool2d((3, 4))),
        (nn.Upsample(scale_factor=2), torch.nn.Upsample(scale_factor=2)),
        (nn.Upsample(size=(3, 4), mode="bilinear"), torch.nn.Upsample(size=(3, 4), mode="bilinear")),
        (nn.Upsample(size=5, mode="nearest-exact"), torch.nn.Upsample(size=5, mode="nearest-exact")),
    ]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)
    assert repr(nn.Upsample(scale_factor=(2, 1.5), mode="bilinear", align_corners=True)) == (
        "Upsample(scale_factor=(2.0, 1.5), mode='bilinear', align_corners=True)"
    )


@pytest.mark.parametrize(
    "make, error, word",
    [
        (lambda: nn.Upsample(), ValueError, "either size or scale_factor"),
        (lambda: nn.Upsample(size=4, scale_factor=2), ValueError, "only one of size or scale_factor"),
        (lambda: nn.Upsample(scale_factor=2, mode="trilinear"), ValueError, "mode must be one of"),
        (lambda: nn.Upsample(scale_factor=2, align_corners=True), ValueError, "align_corners option"),
        (lambda: nn.Upsample(scale_factor="2"), TypeError, "scale_factor must be a real number"),
        (lambda: nn.Upsample(size=0), ValueError, "size must be >= 1"),
    ],
)
def test_bad_upsample_arguments(make, error, word):
    with pytest.raises(error, match=word):
        make()


def test_adaptive_pooling_layers_check_output_size():
    with pytest.raises(ValueError, match="output_size must be >= 0"):
        nn.AdaptiveAvgPool2d(-1)
    with pytest.raises(TypeError, match="output_size must be an int"):
        nn.AdaptiveMaxPool2d((2, 2.5))
    with pytest.raises(ValueError, match="pair"):
        nn.AdaptiveMaxPool2d((1, 2, 3))

"""Activation layers: equal their functional ops and torch.nn's modules (values, input gradients, reprs), check
their arguments at construction, and Identity passes everything through."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import functional as F
from xpcnn import nn

RNG = np.random.default_rng(0)

# (xpcnn layer, its functional pair and options, the torch.nn module's constructor call as text)
LAYERS = [
    (lambda: nn.ReLU(), F.relu_forward, F.relu_backward, {}, "ReLU()"),
    (lambda: nn.ReLU(inplace=True), F.relu_forward, F.relu_backward, {}, "ReLU(inplace=True)"),
    (lambda: nn.LeakyReLU(), F.leaky_relu_forward, F.leaky_relu_backward, dict(negative_slope=0.01), "LeakyReLU()"),
    (lambda: nn.LeakyReLU(0.2, True), F.leaky_relu_forward, F.leaky_relu_backward, dict(negative_slope=0.2),
     "LeakyReLU(0.2, True)"),
    (lambda: nn.Sigmoid(), F.sigmoid_forward, F.sigmoid_backward, {}, "Sigmoid()"),
    (lambda: nn.Tanh(), F.tanh_forward, F.tanh_backward, {}, "Tanh()"),
    (lambda: nn.GELU(), F.gelu_forward, F.gelu_backward, dict(approximate="none"), "GELU()"),
    (lambda: nn.GELU("tanh"), F.gelu_forward, F.gelu_backward, dict(approximate="tanh"), "GELU('tanh')"),
    (lambda: nn.SiLU(), F.silu_forward, F.silu_backward, {}, "SiLU()"),
    (lambda: nn.SiLU(inplace=True), F.silu_forward, F.silu_backward, {}, "SiLU(inplace=True)"),
    (lambda: nn.ELU(), F.elu_forward, F.elu_backward, dict(alpha=1.0), "ELU()"),
    (lambda: nn.ELU(alpha=0.5, inplace=True), F.elu_forward, F.elu_backward, dict(alpha=0.5),
     "ELU(alpha=0.5, inplace=True)"),
]
IDS = [spec[-1] for spec in LAYERS]


@pytest.mark.parametrize("make, forward, backward, options, torch_call", LAYERS, ids=IDS)
def test_layer_equals_its_functional_op(xp, make, forward, backward, options, torch_call):
    layer = make()
    dtype = xp.float_dtypes()[-1][0]
    x = xp.asarray(RNG.standard_normal((2, 3, 4)) * 3, dtype)
    dout = xp.asarray(RNG.standard_normal((2, 3, 4)), dtype)
    out = layer(x)
    dx = layer.backward(dout)
    ref_out, cache = forward(x, **options)
    np.testing.assert_array_equal(xp.to_numpy(out), xp.to_numpy(ref_out))
    np.testing.assert_array_equal(xp.to_numpy(dx), xp.to_numpy(backward(dout, cache)))
    layer(x)
    assert layer.backward(dout, input_grad=False) is None
    with pytest.raises(RuntimeError, match="without a forward pass"):
        layer.backward(dout)


@pytest.mark.torch_reference
@pytest.mark.parametrize("make, forward, backward, options, torch_call", LAYERS, ids=IDS)
def test_layer_matches_torch_module(torch, make, forward, backward, options, torch_call):
    """Values, input gradients and repr equal those of the torch.nn module built with the same arguments."""
    layer, module = make(), eval(torch_call, {}, vars(torch.nn))
    assert repr(layer) == repr(module)
    x = RNG.standard_normal((3, 5)) * 3
    dout = RNG.standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    out_ref = module(xt * 1.0)  # a non-leaf copy, which PyTorch's inplace modules may overwrite
    out_ref.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer(x), out_ref.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(x, xt.detach().numpy())  # xpcnn never writes into its input, inplace or not


@pytest.mark.torch_reference
def test_reprs_equal_torchs(torch):
    for call in ("GELU(approximate='tanh')", "ELU(alpha=2.5)", "LeakyReLU(negative_slope=0.1)", "Identity()",
                 "Arctan()" if hasattr(torch.nn, "Arctan") else "Sigmoid()"):
        assert repr(eval(call, {}, vars(nn))) == repr(eval(call, {}, vars(torch.nn)))
    assert repr(nn.Arctan()) == "Arctan()"


def test_identity_passes_everything_through(xp):
    """Identity takes (and ignores) any arguments, as torch.nn.Identity; forward returns x itself and backward
    dout itself (None without the input gradient)."""
    layer = nn.Identity(54, unused_argument=0.1)
    x = xp.asarray(RNG.standard_normal((2, 3)), xp.float32)
    assert layer(x) is x
    assert layer.backward(x) is x
    layer(x)
    assert layer.backward(x, input_grad=False) is None
    with pytest.raises(RuntimeError, match="Identity.backward called without a forward pass"):
        layer.backward(x)
    model = nn.Sequential(nn.Identity(), nn.GELU(), nn.Identity())
    out = model(x)
    np.testing.assert_array_equal(xp.to_numpy(out), xp.to_numpy(F.gelu_forward(x)[0]))
    assert model.parameters() == []


@pytest.mark.parametrize(
    "make, call",
    [
        (lambda: nn.LeakyReLU("0.1"), lambda x: F.leaky_relu_forward(x, "0.1")),
        (lambda: nn.LeakyReLU(float("nan")), lambda x: F.leaky_relu_forward(x, float("nan"))),
        (lambda: nn.LeakyReLU(None), lambda x: F.leaky_relu_forward(x, None)),
        (lambda: nn.ELU("1"), lambda x: F.elu_forward(x, "1")),
        (lambda: nn.ELU(True), lambda x: F.elu_forward(x, True)),
        (lambda: nn.ELU(float("nan")), lambda x: F.elu_forward(x, float("nan"))),
        (lambda: nn.GELU("exact"), lambda x: F.gelu_forward(x, "exact")),
        (lambda: nn.GELU(None), lambda x: F.gelu_forward(x, None)),
    ],
)
def test_constructor_checks_like_the_functional_op(make, call):
    """A bad slope, alpha or approximation is refused when the layer is built, with the functional op's error."""
    with pytest.raises((TypeError, ValueError)) as at_construction:
        make()
    with pytest.raises(type(at_construction.value)) as in_the_op:
        call(np.zeros(3))
    assert str(at_construction.value) == str(in_the_op.value)


@pytest.mark.parametrize("make", [lambda: nn.ReLU(inplace="yes"), lambda: nn.SiLU(inplace=1),
                                  lambda: nn.ELU(1.0, None), lambda: nn.LeakyReLU(0.1, "False")])
def test_inplace_must_be_a_bool(make):
    with pytest.raises(TypeError, match="inplace must be True or False"):
        make()


def test_infinite_slope_and_alpha_are_accepted():
    """PyTorch accepts infinite slopes and alphas; only NaN is refused."""
    assert repr(nn.LeakyReLU(float("inf"))) == "LeakyReLU(negative_slope=inf)"
    assert repr(nn.ELU(float("-inf"))) == "ELU(alpha=-inf)"

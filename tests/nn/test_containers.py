"""Residual and Concat: equal to the same PyTorch modules with the same weights (loss, input gradient, every
parameter gradient) on every backend; nesting, input_grad=False, modes, moves, state dicts, reprs and errors."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import nn
from tests.helpers import assert_close

RNG = np.random.default_rng(0)


def _skip_dask(xp):
    if xp.name == "dask":
        pytest.skip("a whole network on Dask builds one graph of thousands of tasks; Dask is for the ops")


def _basic_block(cin, cout, stride, common):
    """ResNet's basic block: two 3x3 convolutions with batch norm, a strided 1x1 projection where the shape
    changes."""
    body = nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, **common), nn.BatchNorm2d(cout, **common),
        nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1, bias=False, **common), nn.BatchNorm2d(cout, **common),
    )
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False, **common),
                                 nn.BatchNorm2d(cout, **common))
    return nn.Sequential(nn.Residual(body, shortcut), nn.ReLU())


def _model(xp=None, device=None, dtype=None):
    nn.manual_seed(5)
    common = dict(xp=xp, device=device, dtype=dtype)
    return nn.Sequential(
        _basic_block(2, 4, 2, common),
        _basic_block(4, 4, 1, common),
        nn.Concat(nn.Conv2d(4, 3, 1, **common), nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                                               nn.Conv2d(4, 2, 1, **common))),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(5 * 2 * 2, 3, **common),
    )


def _torch_model(torch, model):
    tnn = torch.nn

    class Residual(tnn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    class Concat(tnn.Module):
        def __init__(self, *branches):
            super().__init__()
            self.branches = tnn.ModuleList(branches)

        def forward(self, x):
            return torch.cat([b(x) for b in self.branches], dim=1)

        def _load_from_state_dict(self, state, prefix, *args):  # xpcnn names the branches "0", "1"
            for key in [k for k in state if k.startswith(prefix) and not k.startswith(prefix + "branches.")]:
                state[prefix + "branches." + key[len(prefix):]] = state.pop(key)
            super()._load_from_state_dict(state, prefix, *args)

    def block(cin, cout, stride):
        body = tnn.Sequential(tnn.Conv2d(cin, cout, 3, stride, 1, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU(),
                              tnn.Conv2d(cout, cout, 3, 1, 1, bias=False), tnn.BatchNorm2d(cout))
        shortcut = None
        if stride != 1 or cin != cout:
            shortcut = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))
        return tnn.Sequential(Residual(body, shortcut), tnn.ReLU())

    net = tnn.Sequential(
        block(2, 4, 2), block(4, 4, 1),
        Concat(tnn.Conv2d(4, 3, 1), tnn.Sequential(tnn.MaxPool2d(3, 1, 1), tnn.Conv2d(4, 2, 1))),
        tnn.AvgPool2d(2), tnn.Flatten(), tnn.Linear(20, 3),
    ).double()
    from xpcnn._host import to_numpy

    state = {k: torch.tensor(np.asarray(to_numpy(v), dtype=np.float64)) for k, v in model.state_dict().items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return net


def _torch_name(name):
    """xpcnn's state-dict name -> the test's PyTorch module's (Concat keeps its branches in a ModuleList)."""
    parts = name.split(".")
    return ".".join(parts[:1] + ["branches"] + parts[1:]) if parts[0] == "2" else name


@pytest.mark.torch_reference
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resnet_blocks_and_concat_match_torch(xp, torch, mode):
    _skip_dask(xp)
    dtype, np_dtype = xp.float_dtypes()[-1]
    model = _model(xp.namespace, xp.device, dtype)
    net = _torch_model(torch, model)
    getattr(model, mode)()
    getattr(net, mode)()
    x, target = RNG.standard_normal((3, 2, 8, 8)), RNG.integers(0, 3, 3)
    xt = torch.tensor(x, requires_grad=True)
    loss_ref = torch.nn.functional.cross_entropy(net(xt), torch.tensor(target))
    loss_ref.backward()

    criterion = nn.CrossEntropyLoss()
    loss = criterion(model(xp.asarray(x, dtype)), xp.asarray(target, xp.int64))
    dx = model.backward(criterion.backward())
    assert_close(xp, loss, loss_ref.detach().numpy(), np_dtype)
    assert_close(xp, dx, xt.grad.numpy(), np_dtype)
    params = dict(net.named_parameters())
    grads = model.named_gradients()
    assert len(grads) == len(params)
    for name, grad in grads.items():
        assert_close(xp, grad, params[_torch_name(name)].grad.numpy(), np_dtype)
    buffers = dict(net.named_buffers())
    for name, value in model.state_dict().items():
        if "running" in name:
            assert_close(xp, value, buffers[_torch_name(name)].numpy(), np_dtype)


def test_input_grad_false_gives_the_same_parameter_gradients(xp):
    _skip_dask(xp)
    dtype = xp.float_dtypes()[-1][0]
    x = xp.asarray(RNG.standard_normal((2, 2, 8, 8)), dtype)
    grads = []
    for input_grad in (True, False):
        model = _model(xp.namespace, xp.device, dtype)
        out = model(x)
        dx = model.backward(xp.asarray(np.ones(tuple(out.shape)), dtype), input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append({k: xp.to_numpy(v) for k, v in model.named_gradients().items()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        np.testing.assert_array_equal(grads[0][name], grads[1][name])


def test_modes_moves_state_and_files(tmp_path):
    model = _model()
    model.eval()
    assert all(not m.training for m in model.modules())
    model.train()
    x = RNG.standard_normal((2, 2, 8, 8)).astype(np.float32)
    out = model(x)
    model.backward(np.ones_like(out))
    xpcnn.save(model, tmp_path / "m.npz")
    other = _model()
    nn.manual_seed(99)
    for p in other.parameters():
        p.data = p.data * 0
    xpcnn.load(other, tmp_path / "m.npz")
    model.eval(), other.eval()
    np.testing.assert_array_equal(model(x), other(x))
    model.to(np, dtype=np.float64)
    assert all(v.dtype == np.float64 for v in model.state_dict().values() if v.dtype.kind == "f")
    assert model(x.astype(np.float64)).dtype == np.float64


def test_repr_follows_pytorch_for_containers_and_user_modules():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.act = nn.ReLU()

    text = repr(nn.Sequential(nn.Residual(nn.ReLU()), Block(), nn.Concat(nn.ReLU(), nn.Tanh(), dim=-1)))
    assert text == (
        "Sequential(\n"
        "  (0): Residual(\n"
        "    (body): ReLU()\n"
        "  )\n"
        "  (1): Block(\n"
        "    (conv): Conv2d(1, 2, kernel_size=(3, 3), stride=1, padding=0, dilation=1, groups=1, bias=True)\n"
        "    (act): ReLU()\n"
        "  )\n"
        "  (2): Concat(\n"
        "    dim=-1\n"
        "    (0): ReLU()\n"
        "    (1): Tanh()\n"
        "  )\n"
        ")"
    )


def test_errors_name_the_branch():
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"body's output has shape \(1, 3, 4, 4\) but the shortcut's has \(1, 2, 4, 4\)"):
        nn.Residual(nn.Conv2d(2, 3, 1))(x)
    with pytest.raises(ValueError, match=r"branch 1, Conv2d\(3, 1.*x has 2 channels"):
        nn.Concat(nn.ReLU(), nn.Conv2d(3, 1, 1))(x)
    with pytest.raises(ValueError, match="must agree on every axis but 1"):
        nn.Concat(nn.ReLU(), nn.MaxPool2d(2))(x)
    with pytest.raises(TypeError, match="Residual takes Module instances: body is a str"):
        nn.Residual("relu")
    with pytest.raises(ValueError, match="Concat needs at least one branch"):
        nn.Concat()
    block = nn.Concat(nn.ReLU(), nn.ReLU())
    block(x)
    with pytest.raises(ValueError, match=r"dout must have shape \(1, 4, 4, 4\)"):
        block.backward(np.zeros((1, 3, 4, 4), np.float32))


def _unet_level(common):
    """A U-Net level from the containers: the level's input joined with its way down and back up."""
    down = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1, **common), nn.ReLU())
    inner = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, **common), nn.GroupNorm(2, 6, **common), nn.GELU())
    up = nn.Sequential(nn.ConvTranspose2d(6, 3, 4, stride=2, padding=1, **common), nn.ReLU())
    return nn.Sequential(nn.Concat(nn.Identity(), nn.Sequential(down, inner, up)),
                         nn.Conv2d(6, 2, 3, padding=1, **common))


def _torch_unet_level(torch, model):
    tnn = torch.nn

    class Level(tnn.Module):
        def __init__(self):
            super().__init__()
            self.path = tnn.Sequential(
                tnn.Sequential(tnn.Conv2d(3, 6, 3, 2, 1), tnn.ReLU()),
                tnn.Sequential(tnn.Conv2d(6, 6, 3, 1, 1), tnn.GroupNorm(2, 6), tnn.GELU()),
                tnn.Sequential(tnn.ConvTranspose2d(6, 3, 4, 2, 1), tnn.ReLU()))
            self.merge = tnn.Conv2d(6, 2, 3, 1, 1)

        def forward(self, x):
            return self.merge(torch.cat([x, self.path(x)], dim=1))

    net = Level().double()
    from xpcnn._host import to_numpy

    names = {"0.1.": "path.", "1.": "merge."}
    state = {}
    for key, value in model.state_dict().items():
        prefix = next(p for p in names if key.startswith(p))
        state[names[prefix] + key[len(prefix):]] = torch.tensor(np.asarray(to_numpy(value), dtype=np.float64))
    net.load_state_dict(state)
    return net


@pytest.mark.torch_reference
def test_unet_level_matches_torch(xp, torch):
    _skip_dask(xp)
    dtype, np_dtype = xp.float_dtypes()[-1]
    nn.manual_seed(7)
    model = _unet_level(dict(xp=xp.namespace, device=xp.device, dtype=dtype))
    net = _torch_unet_level(torch, model)
    x, target = RNG.standard_normal((2, 3, 8, 6)), RNG.standard_normal((2, 2, 8, 6))
    xt = torch.tensor(x, requires_grad=True)
    loss_ref = torch.nn.functional.mse_loss(net(xt), torch.tensor(target))
    loss_ref.backward()
    criterion = nn.MSELoss()
    loss = criterion(model(xp.asarray(x, dtype)), xp.asarray(target, dtype))
    dx = model.backward(criterion.backward())
    assert_close(xp, loss, loss_ref.detach().numpy(), np_dtype)
    assert_close(xp, dx, xt.grad.numpy(), np_dtype)
    params = dict(net.named_parameters())
    grads = model.named_gradients()
    assert len(grads) == len(params)
    for name, grad in grads.items():
        torch_name = name.replace("0.1.", "path.", 1) if name.startswith("0.1.") else "merge." + name[2:]
        assert_close(xp, grad, params[torch_name].grad.numpy(), np_dtype)

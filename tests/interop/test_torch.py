"""xpcnn.interop.torch: xpcnn's passes as PyTorch autograd rules (gradcheck, training inside a torch model)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import xpcnn.functional as F  # noqa: E402
from xpcnn import nn  # noqa: E402
from xpcnn.interop.torch import function, module  # noqa: E402

f64 = dict(dtype=torch.float64)


def _randn(*shape, requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed + len(shape) * 7 + sum(shape))
    return torch.randn(*shape, generator=g, **f64).requires_grad_(requires_grad)


def test_gradcheck_conv2d():
    conv2d = function(F.conv2d_forward, F.conv2d_backward)
    x, w, b = _randn(2, 3, 6, 5), _randn(4, 3, 3, 3), _randn(4)
    assert torch.autograd.gradcheck(lambda x, w, b: conv2d(x, w, b, stride=2, padding=1), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: conv2d(x, w, None), (x, w))


def test_gradcheck_max_pool2d():
    max_pool2d = function(F.max_pool2d_forward, F.max_pool2d_backward)
    x = _randn(2, 3, 7, 6)
    assert torch.autograd.gradcheck(lambda x: max_pool2d(x, 3, stride=2, padding=1), (x,))


def test_gradcheck_linear():
    linear = function(F.linear_forward, F.linear_backward)
    x, w, b = _randn(5, 4), _randn(3, 4), _randn(3)
    assert torch.autograd.gradcheck(linear, (x, w, b))
    x.grad = None
    linear(x.detach(), w, b).sum().backward()  # an input that needs no gradient gets none
    assert x.grad is None and w.grad is not None


def test_gradcheck_sequential_module():
    seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, **f64, xp=torch, seed=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(3 * 3 * 3, 4, **f64, xp=torch, seed=2))
    wrapped = module(seq)
    params = list(wrapped.parameters())
    assert [n for n, _ in wrapped.named_parameters()] == ["0.weight", "0.bias", "4.weight", "4.bias"]
    x = _randn(2, 2, 6, 6)
    # gradcheck perturbs the parameters in place: the xpcnn module sees it through the shared memory
    assert torch.autograd.gradcheck(lambda x, *_: wrapped(x), (x, *params))


def test_values_and_gradients_equal_torch_and_xpcnn():
    seq = nn.Sequential(nn.Conv2d(2, 3, 3, **f64, xp=torch, seed=3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 2, **f64, xp=torch, seed=4))
    wrapped = module(seq)
    x = _randn(3, 2, 6, 6)
    wrapped(x).square().sum().backward()
    # xpcnn's own pass on the same weights
    out = seq(x.detach())
    seq.zero_grad()
    dx = seq.backward(2 * out)
    torch.testing.assert_close(x.grad, dx)
    for name, p in wrapped.named_parameters():
        torch.testing.assert_close(p.grad, dict(seq.named_parameters())[name].grad)
    assert all(p.grad is not None for p in seq.parameters())  # the adapter leaves xpcnn's own .grad alone
    # pure PyTorch with the same weights
    ref = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(48, 2)).double()
    ref.load_state_dict({n: p.detach() for n, p in wrapped.named_parameters()})
    x2 = x.detach().requires_grad_(True)
    ref(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    for (_, p), (_, q) in zip(wrapped.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_cross_entropy_integer_targets_get_no_gradient():
    ce = function(F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward)
    logits, y = _randn(6, 4), torch.arange(6) % 4
    loss = ce(logits, y)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, y))
    loss.backward()
    ref = logits.detach().requires_grad_(True)
    torch.nn.functional.cross_entropy(ref, y).backward()
    torch.testing.assert_close(logits.grad, ref.grad)
    assert torch.autograd.gradcheck(lambda z: ce(z, y), (logits.detach().requires_grad_(True),))


def test_trains_inside_a_torch_model_like_pure_torch():
    torch.manual_seed(0)
    conv = module(nn.Conv2d(1, 4, 3, padding=1, xp=torch, seed=5))
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 4 * 4, 3))
    ref = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))
    ref.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 3
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, ref)]
    for _ in range(4):
        losses = []
        for m, opt in zip((model, ref), opts):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    # the optimiser's in-place steps are the xpcnn module's weights too
    assert conv.xpcnn_module.weight.data.data_ptr() == conv.get_parameter("weight").data_ptr()
    torch.testing.assert_close(conv.xpcnn_module.weight.data, conv.get_parameter("weight").detach())


def test_train_eval_reach_the_xpcnn_module():
    wrapped = module(nn.Sequential(nn.Dropout(0.5), nn.Linear(3, 2, xp=torch)))
    wrapped.eval()
    assert not any(m.training for m in wrapped.xpcnn_module.modules())
    wrapped.train()
    assert wrapped.xpcnn_module.training


def test_called_twice_before_backward_shared_weights():
    lin = nn.Linear(3, 3, xp=torch, dtype=torch.float64, seed=6)
    wrapped = module(lin)
    x = _randn(4, 3)
    wrapped(wrapped(x)).sum().backward()
    ref = torch.nn.Linear(3, 3).double()
    ref.load_state_dict({n: p.detach() for n, p in wrapped.named_parameters()})
    x2 = x.detach().requires_grad_(True)
    ref(ref(x2)).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    for (_, p), (_, q) in zip(wrapped.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_rejects_non_torch_modules():
    with pytest.raises(TypeError, match="xp=torch"):
        module(nn.Linear(3, 2))
    with pytest.raises(TypeError, match="xpcnn.nn.Module"):
        module(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="n_grads"):
        function(F.relu_forward, F.relu_backward, n_grads=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_stay_on_the_device():
    conv2d = function(F.conv2d_forward, F.conv2d_backward)
    x = torch.randn(2, 3, 9, 9, device="cuda", **f64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device="cuda", **f64, requires_grad=True)
    out = conv2d(x, w, None, stride=2)
    assert out.device.type == "cuda"
    assert torch.autograd.gradcheck(lambda x, w: conv2d(x, w, None, stride=2), (x, w))
    wrapped = module(nn.Sequential(nn.Conv2d(3, 4, 3, xp=torch, device=torch.device("cuda"), **f64, seed=7),
                                   nn.ReLU(), nn.MaxPool2d(2)))
    assert all(p.device.type == "cuda" for p in wrapped.parameters())
    assert torch.autograd.gradcheck(lambda x, *_: wrapped(x), (x, *wrapped.parameters()))


@pytest.mark.parametrize("name", ["layer_norm", "group_norm"])
def test_an_option_before_the_weights_takes_no_gradient_slot(name):
    """layer_norm(x, normalized_shape, weight, bias) returns (dx, dweight, dbias): the shape between x and the
    weights takes no place in that tuple (xpcnn.interop.gradient_slots)."""
    f = function(getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward"))
    reference = getattr(torch.nn.functional, name)
    option = (3, 4) if name == "layer_norm" else 3
    shape = (3, 4) if name == "layer_norm" else (6,)
    x, w, b = _randn(2, 6, 3, 4), _randn(*shape, seed=1), _randn(*shape, seed=2)
    assert torch.autograd.gradcheck(lambda x, w, b: f(x, option, w, b), (x, w, b))
    f(x, option, w, b).square().sum().backward()
    refs = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
    reference(refs[0], option, refs[1], refs[2]).square().sum().backward()
    for got, want in zip((x, w, b), refs):
        torch.testing.assert_close(got.grad, want.grad)
    x.grad = None
    f(x, option, None, b).sum().backward()  # no weight: its slot is None, the bias keeps its own
    assert x.grad is not None and b.grad is not None


def test_a_wrapped_block_with_batch_norm_trains_like_pure_torch():
    """An xpcnn Conv2d-BatchNorm2d-ReLU block inside a torch model, trained with Adam: losses, parameters and the
    running statistics (kept by the xpcnn module) follow the pure PyTorch model's."""
    block = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False, xp=torch, dtype=torch.float64, seed=8),
                          nn.BatchNorm2d(4, xp=torch, dtype=torch.float64), nn.ReLU())
    torch.manual_seed(1)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3)).double()
    model = torch.nn.Sequential(module(block), head)
    ref = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1, bias=False),
                                                  torch.nn.BatchNorm2d(4), torch.nn.ReLU()),
                              torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))).double()
    ref.load_state_dict(model.state_dict(), strict=True)  # the wrapper's state dict holds the xpcnn buffers
    x, y = torch.randn(6, 2, 5, 5, dtype=torch.float64), torch.arange(6) % 3
    opts = [torch.optim.Adam(m.parameters(), lr=0.05) for m in (model, ref)]
    for _ in range(3):
        for m, opt in zip((model, ref), opts):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=name)
    bn = block[1]
    torch.testing.assert_close(bn.running_mean, ref[0][1].running_mean)
    torch.testing.assert_close(bn.running_var, ref[0][1].running_var)
    assert int(bn.num_batches_tracked) == int(ref[0][1].num_batches_tracked) == 3
    model.eval()
    ref.eval()
    torch.testing.assert_close(model(x), ref(x))
    # a checkpoint of the torch model holding the xpcnn block is the pure model's, both ways
    state = model.state_dict()
    assert list(state) == list(ref.state_dict()) or sorted(state) == sorted(ref.state_dict())
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(state[key], value, msg=key)
    fresh = torch.nn.Sequential(module(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False, xp=torch,
                                                               dtype=torch.float64, seed=9),
                                                     nn.BatchNorm2d(4, xp=torch, dtype=torch.float64), nn.ReLU())),
                                torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3)).double())
    result = fresh.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert int(fresh[0].xpcnn_module[1].num_batches_tracked) == 3
    fresh.eval()
    torch.testing.assert_close(fresh(x), ref(x))
    bad = dict(ref.state_dict())
    bad["0.1.running_var"] = torch.ones(5, dtype=torch.float64)
    del bad["0.1.running_mean"]
    with pytest.raises(RuntimeError, match=r"(?s)Missing key\(s\).*0\.1\.running_mean.*size mismatch for 0\.1\.running_var"):
        fresh.load_state_dict(bad)

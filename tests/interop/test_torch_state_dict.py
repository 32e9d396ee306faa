"""Weights exchanged with PyTorch by name: a ResNet basic block with a projection shortcut and a small U-Net, built
the same way in both libraries, load each other's state dicts (in process, and as safetensors files) and give the
same outputs; mismatches are listed name by name."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import xpcnn  # noqa: E402
from xpcnn import nn  # noqa: E402
from xpcnn._host import to_numpy  # noqa: E402
from xpcnn.interop.torch import export_torch_state_dict, load_torch_state_dict  # noqa: E402

tnn = torch.nn
RNG = np.random.default_rng(0)


# -- the same two models in both libraries ----------------------------------------------------------------------------


class TorchResidual(tnn.Module):
    """xpcnn.nn.Residual in PyTorch: ``body`` and ``shortcut`` (None: identity)."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class TorchConcat(tnn.ModuleList):
    """xpcnn.nn.Concat in PyTorch: the branches at positions "0", "1"..., outputs joined along ``dim``."""

    def __init__(self, *branches, dim=1):
        super().__init__(branches)
        self.dim = dim

    def forward(self, x):
        return torch.cat([branch(x) for branch in self], dim=self.dim)


def resnet(lib, **common):
    """A stem and two basic blocks (the second with a strided 1x1 projection shortcut), then the classifier."""
    torch_lib = lib is tnn
    Residual = TorchResidual if torch_lib else nn.Residual
    kw = {} if torch_lib else common

    def block(cin, cout, stride):
        body = lib.Sequential(
            lib.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, **kw), lib.BatchNorm2d(cout, **kw),
            lib.ReLU(), lib.Conv2d(cout, cout, 3, padding=1, bias=False, **kw), lib.BatchNorm2d(cout, **kw))
        shortcut = None
        if stride != 1 or cin != cout:
            shortcut = lib.Sequential(lib.Conv2d(cin, cout, 1, stride=stride, bias=False, **kw),
                                      lib.BatchNorm2d(cout, **kw))
        return lib.Sequential(Residual(body, shortcut), lib.ReLU())

    return lib.Sequential(
        lib.Conv2d(2, 4, 3, padding=1, bias=False, **kw), lib.BatchNorm2d(4, **kw), lib.ReLU(),
        block(4, 4, 1), block(4, 8, 2),
        lib.AdaptiveAvgPool2d(1), lib.Flatten(), lib.Linear(8, 3, **kw),
    )


def unet(lib, **common):
    """Two levels: strided convolutions down, transposed convolutions up, skips joined by Concat."""
    torch_lib = lib is tnn
    Concat = TorchConcat if torch_lib else nn.Concat
    kw = {} if torch_lib else common

    def level(c, inner):
        down = lib.Sequential(lib.Conv2d(c, 2 * c, 3, stride=2, padding=1, **kw), lib.BatchNorm2d(2 * c, **kw),
                              lib.ReLU())
        up = lib.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1, **kw)
        merge = lib.Sequential(lib.Conv2d(2 * c, c, 3, padding=1, **kw), lib.ReLU())
        return lib.Sequential(Concat(lib.Identity(), lib.Sequential(down, inner, up)), merge)

    return lib.Sequential(lib.Conv2d(1, 4, 3, padding=1, **kw), lib.ReLU(),
                          level(4, level(8, lib.Identity())), lib.Conv2d(4, 1, 1, **kw))


MODELS = {"resnet": (resnet, (5, 2, 8, 8)), "unet": (unet, (3, 1, 8, 8))}


def _torch_model(name, dtype=torch.float32, seed=0):
    """The PyTorch model, with non-trivial affine parameters and running statistics (three training batches)."""
    build, shape = MODELS[name]
    torch.manual_seed(seed)
    model = build(tnn).to(dtype)
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for name, p in model.named_parameters():
            if name.endswith(("weight", "bias")) and p.ndim == 1:
                p.add_(0.3 * torch.randn(p.shape, dtype=dtype))
        model.train()
        for _ in range(3):
            model(torch.randn(4, *shape[1:], dtype=dtype))
    return model


def _xpcnn_model(name, **common):
    nn.manual_seed(7)
    return MODELS[name][0](nn, **common)


def _outputs(torch_model, model, x, mode):
    getattr(torch_model, mode)()
    getattr(model, mode)()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    return to_numpy(model(x)), expected


TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


# -- PyTorch -> xpcnn -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("source", ["dict", "safetensors", "module"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_pytorch_state_dict_loads_and_gives_the_same_outputs(name, source, mode, tmp_path):
    build, shape = MODELS[name]
    ref = _torch_model(name)
    state = ref.state_dict()
    if source == "safetensors":
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file(state, tmp_path / "ref.safetensors")
        state = tmp_path / "ref.safetensors"
    elif source == "module":
        state = ref
    model = load_torch_state_dict(_xpcnn_model(name), state)
    for key, value in ref.state_dict().items():  # every tensor, num_batches_tracked included
        np.testing.assert_array_equal(to_numpy(model.state_dict()[key]), value.numpy(), err_msg=key)
    x = RNG.standard_normal(shape).astype(np.float32)
    got, expected = _outputs(ref, model, x, mode)
    np.testing.assert_allclose(got, expected, **TOL[np.float32])
    if mode == "train":  # the running statistics moved the same way, and the batch was counted
        for key, value in ref.state_dict().items():
            np.testing.assert_allclose(to_numpy(model.state_dict()[key]), value.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=key)


@pytest.mark.parametrize("name", MODELS)
def test_pytorch_state_dict_into_every_backend(name, xp):
    if xp.name == "dask":
        pytest.skip("a whole network on Dask builds one graph of thousands of tasks; Dask is for the ops")
    build, shape = MODELS[name]
    dtype, np_dtype = xp.float_dtypes()[-1]
    ref = _torch_model(name, dtype=torch.float64 if np_dtype == np.float64 else torch.float32)
    model = load_torch_state_dict(_xpcnn_model(name, xp=xp.namespace, device=xp.device, dtype=dtype), ref)
    for value in model.state_dict().values():
        assert array_api_compat.device(value) == xp.device
    x = RNG.standard_normal(shape).astype(np_dtype)
    ref.eval()
    model.eval()
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    out = model(xp.asarray(x))
    xp.assert_on_backend(out, dtype)
    np.testing.assert_allclose(xp.to_numpy(out), expected, **TOL[np_dtype])


def test_loaded_tensors_are_copies():
    ref = _torch_model("resnet")
    model = load_torch_state_dict(_xpcnn_model("resnet", xp=torch), ref.state_dict())
    weight = model[0].weight.data
    assert weight.data_ptr() != ref[0].weight.data_ptr()
    with torch.no_grad():
        ref[0].weight.add_(1.0)
    assert not torch.equal(weight, ref[0].weight)


def test_a_state_dict_without_num_batches_tracked_keeps_the_count():
    ref = _torch_model("resnet")
    model = _xpcnn_model("resnet")
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_torch_state_dict(model, state)
    assert int(model[1].num_batches_tracked) == 0
    np.testing.assert_array_equal(model[1].running_var, ref[1].running_var.numpy())


# -- xpcnn -> PyTorch -------------------------------------------------------------------------------------------------


def _trained_xpcnn(name, dtype=np.float32):
    """An xpcnn model after two training-mode passes (running statistics and counts moved) and SGD steps."""
    shape = MODELS[name][1]
    model = _xpcnn_model(name, dtype=dtype)
    model.train()
    for _ in range(2):
        out = model(RNG.standard_normal(shape).astype(dtype))
        model.zero_grad()
        model.backward(np.ones_like(out) / out.size)
        for p in model.parameters():
            p.data = p.data - 0.5 * p.grad
    return model


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("via", ["dict", "safetensors"])
def test_pytorch_loads_the_export_strictly_and_gives_the_same_outputs(name, dtype, via, tmp_path):
    build, shape = MODELS[name]
    model = _trained_xpcnn(name, dtype)
    ref = build(tnn).to(getattr(torch, np.dtype(dtype).name))
    if via == "dict":
        state = export_torch_state_dict(model)
        assert list(state) == list(ref.state_dict())  # PyTorch's order, name for name
        assert all(isinstance(t, torch.Tensor) for t in state.values())
    else:
        safetensors_torch = pytest.importorskip("safetensors.torch")
        xpcnn.save(model, tmp_path / "model.safetensors")  # no torch needed to write it
        state = safetensors_torch.load_file(tmp_path / "model.safetensors")
    result = ref.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    counts = [int(v) for k, v in ref.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counts and all(count == 2 for count in counts)
    x = RNG.standard_normal(shape).astype(dtype)
    for mode in ("eval", "train"):
        got, expected = _outputs(ref, model, x, mode)
        np.testing.assert_allclose(got, expected, **TOL[dtype])


def test_export_is_a_copy_on_the_models_device():
    model = _xpcnn_model("resnet", xp=torch)
    state = export_torch_state_dict(model)
    assert state["0.weight"].data_ptr() != model[0].weight.data.data_ptr()
    assert state["1.num_batches_tracked"].dtype == torch.int64 and state["1.num_batches_tracked"].shape == ()
    numpy_state = export_torch_state_dict(_xpcnn_model("resnet"))
    numpy_state["0.weight"].add_(1.0)  # writable, and not the NumPy model's memory
    assert export_torch_state_dict(_xpcnn_model("resnet"), device="meta")["0.weight"].device.type == "meta"


def test_round_trip_both_ways_is_exact():
    model = _trained_xpcnn("unet", np.float64)
    ref = unet(tnn).double()
    ref.load_state_dict(export_torch_state_dict(model))
    back = load_torch_state_dict(_xpcnn_model("unet", dtype=np.float64), ref.state_dict())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(to_numpy(back.state_dict()[key]), to_numpy(value), err_msg=key)


# -- mismatches -------------------------------------------------------------------------------------------------------


def test_mismatches_list_every_name_and_shape_and_leave_the_model_unchanged():
    ref = _torch_model("resnet")
    state = dict(ref.state_dict())
    state.pop("4.0.shortcut.0.weight")                      # missing
    state["4.0.shortcut.2.weight"] = torch.zeros(8)         # unexpected
    state["0.weight"] = torch.zeros(4, 1, 3, 3)             # wrong shape
    state["7.bias"] = torch.zeros(3, dtype=torch.float64)   # wrong dtype
    model = _xpcnn_model("resnet")
    before = {k: to_numpy(v).copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_torch_state_dict(model, state)
    message = str(info.value)
    for part in ("missing '4.0.shortcut.0.weight'", "unexpected '4.0.shortcut.2.weight'",
                 "'0.weight' has shape (4, 1, 3, 3), the model expects (4, 2, 3, 3)",
                 "'7.bias' has dtype float64, the model expects float32"):
        assert part in message
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(to_numpy(value), before[key])


def test_a_differently_built_model_is_refused_name_by_name():
    with pytest.raises(ValueError, match=r"missing '2\.0\.1\.0\.0\.weight'.*unexpected"):
        load_torch_state_dict(_xpcnn_model("unet"), _torch_model("resnet").state_dict())


def test_bad_sources(tmp_path):
    model = _xpcnn_model("resnet")
    with pytest.raises(TypeError, match="not tensors: '0.weight' \\(ndarray\\)"):
        load_torch_state_dict(model, {"0.weight": np.zeros((4, 2, 3, 3), np.float32)})
    with pytest.raises(TypeError, match="must be a dict of tensors"):
        load_torch_state_dict(model, [1, 2])
    with pytest.raises(TypeError, match="model must be an xpcnn.nn.Module"):
        load_torch_state_dict(resnet(tnn), {})
    with pytest.raises(TypeError, match="model must be an xpcnn.nn.Module"):
        export_torch_state_dict(resnet(tnn))
    torch.save(_torch_model("resnet").state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        load_torch_state_dict(model, tmp_path / "model.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="is not a safetensors weights file"):
        load_torch_state_dict(model, tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        load_torch_state_dict(model, tmp_path / "missing.safetensors")

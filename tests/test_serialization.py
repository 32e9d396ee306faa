"""save/load: round trips across backends, atomic writes, and clear errors that leave the model unchanged."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

import xpcnn
from xpcnn import nn


def _model(seed=0, **kwargs):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, **kwargs), nn.BatchNorm2d(3, **kwargs), nn.Flatten(), nn.Linear(12, 2, **kwargs))


def _state(model):
    from xpcnn._host import to_numpy

    return {k: to_numpy(v).copy() for k, v in model.state_dict().items()}


def test_round_trip_into_another_backend(tmp_path):
    strict = pytest.importorskip("array_api_strict")
    source = _model(seed=1)
    source.layers[1].running_mean = source.layers[1].running_mean + 0.5
    path = tmp_path / "model.npz"
    xpcnn.save(source, path)
    target = _model(seed=2, xp=strict, device=strict.Device("device1"))
    xpcnn.load(target, path)
    for name, value in target.state_dict().items():
        assert value.device == strict.Device("device1")
    loaded, expected = _state(target), _state(source)
    assert loaded.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(loaded[name], expected[name])
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(expected)


def _write(path, arrays):
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "corrupt, word",
    [
        (lambda s: s.pop("3.bias"), "missing '3.bias'"),
        (lambda s: s.update(extra=np.zeros(2, dtype=np.float32)), "unexpected 'extra'"),
        (lambda s: s.update({"0.weight": np.zeros((3, 1, 2, 2), dtype=np.float32)}), "'0.weight' has shape"),
        (lambda s: s.update({"3.weight": s["3.weight"].astype(np.float64)}), "'3.weight' has dtype float64"),
    ],
)
def test_mismatches_are_named_and_leave_the_model_unchanged(tmp_path, corrupt, word):
    state = _state(_model(seed=1))
    corrupt(state)
    path = tmp_path / "bad.npz"
    _write(path, state)
    model = _model(seed=2)
    before = _state(model)
    with pytest.raises(ValueError, match=word):
        xpcnn.load(model, path)
    for name, value in _state(model).items():
        np.testing.assert_array_equal(value, before[name])


def test_truncated_file(tmp_path):
    path = tmp_path / "model.npz"
    xpcnn.save(_model(), path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        path.write_bytes(data[:cut])
        model = _model(seed=5)
        before = _state(model)
        with pytest.raises(ValueError, match="is not an xpcnn weights file"):
            xpcnn.load(model, path)
        for name, value in _state(model).items():
            np.testing.assert_array_equal(value, before[name])


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, **{"0.weight": np.array([object()], dtype=object)})
    with pytest.raises(ValueError, match=r"holds Python objects \(pickled\), which xpcnn never loads"):
        xpcnn.load(_model(), path)


def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    xpcnn.save(_model(seed=1), path)
    good = path.read_bytes()

    def crash(file, **arrays):
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(xpcnn.serialization.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        xpcnn.save(_model(seed=2), path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind
    assert zipfile.is_zipfile(path)


def test_a_npy_file_is_refused_in_its_own_words(tmp_path):
    np.save(tmp_path / "weights.npy", np.zeros(3))
    with pytest.raises(ValueError, match="holds a single ndarray, not named arrays"):
        xpcnn.load(nn.Sequential(nn.Linear(2, 2)), tmp_path / "weights.npy")


def test_saved_files_get_the_umask_permissions_and_missing_folders_are_named(tmp_path):
    import os

    path = tmp_path / "m.npz"
    xpcnn.save(nn.Sequential(nn.Linear(2, 2)), path)
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        xpcnn.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "no-such-folder" / "m.npz")


# -- safetensors ------------------------------------------------------------------------------------------------------


def test_safetensors_round_trip_into_another_backend(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    strict = pytest.importorskip("array_api_strict")
    source = _model(seed=1)
    source.layers[1].running_mean = source.layers[1].running_mean + 0.5
    path = tmp_path / "model.safetensors"
    xpcnn.save(source, path)  # the format from the suffix
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(path)
    raw = safetensors_numpy.load_file(path)  # an ordinary safetensors file
    expected = _state(source)
    assert raw.keys() == expected.keys()
    assert raw["1.num_batches_tracked"].shape == () and raw["1.num_batches_tracked"].dtype == np.int64
    target = _model(seed=2, xp=strict, device=strict.Device("device1"))
    xpcnn.load(target, path)
    for name, value in target.state_dict().items():
        assert value.device == strict.Device("device1")
        np.testing.assert_array_equal(_state(target)[name], expected[name])


def test_format_argument_and_content_sniffing(tmp_path):
    pytest.importorskip("safetensors")
    source, target = _model(seed=1), _model(seed=2)
    xpcnn.save(source, tmp_path / "weights.bin", format="safetensors")
    xpcnn.save(source, tmp_path / "weights.dat")  # another suffix: .npz content
    assert zipfile.is_zipfile(tmp_path / "weights.dat") and not zipfile.is_zipfile(tmp_path / "weights.bin")
    for name in ("weights.bin", "weights.dat"):
        xpcnn.load(target, tmp_path / name)  # recognised by its first bytes
        for key, value in _state(target).items():
            np.testing.assert_array_equal(value, _state(source)[key])
    xpcnn.load(target, tmp_path / "weights.bin", format="safetensors")
    with pytest.raises(ValueError, match="is not an xpcnn weights file"):
        xpcnn.load(target, tmp_path / "weights.bin", format="npz")
    with pytest.raises(ValueError, match=r"format must be one of \('npz', 'safetensors'\)"):
        xpcnn.save(source, tmp_path / "m.npz", format="pt")
    with pytest.raises(ValueError, match="format must be one of"):
        xpcnn.load(target, tmp_path / "weights.dat", format="pickle")


def test_a_pytorch_safetensors_file_loads_by_name(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    ref = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                              torch.nn.Linear(12, 2))
    ref.train()(torch.randn(4, 1, 4, 4))  # running statistics and num_batches_tracked move
    safetensors_torch.save_file(ref.state_dict(), tmp_path / "torch.safetensors")
    model = xpcnn.load(_model(seed=3), tmp_path / "torch.safetensors").eval()
    x = np.random.default_rng(0).standard_normal((5, 1, 4, 4)).astype(np.float32)
    with torch.no_grad():
        expected = ref.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-6)
    assert int(model.layers[1].num_batches_tracked) == 1


@pytest.mark.parametrize("cut", [0, 5, 100, -30])
def test_truncated_safetensors_file(tmp_path, cut):
    pytest.importorskip("safetensors")
    path = tmp_path / "model.safetensors"
    xpcnn.save(_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[: cut % len(data)] if cut else b"")
    model = _model(seed=5)
    before = _state(model)
    with pytest.raises(ValueError, match="is not a safetensors weights file"):
        xpcnn.load(model, path)
    for name, value in _state(model).items():
        np.testing.assert_array_equal(value, before[name])


def test_safetensors_mismatches_are_all_named(tmp_path):
    pytest.importorskip("safetensors")
    state = _state(_model(seed=1))
    state.pop("3.bias")
    state["0.weight"] = np.zeros((3, 1, 2, 2), np.float32)
    state["extra"] = np.zeros(1, np.float32)
    xpcnn.save(state, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as info:
        xpcnn.load(_model(), tmp_path / "bad.safetensors")
    for word in ("missing '3.bias'", "unexpected 'extra'", "'0.weight' has shape (3, 1, 2, 2), the model expects "
                 "(3, 1, 3, 3)"):
        assert word in str(info.value)


def test_failed_safetensors_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "model.safetensors"
    xpcnn.save(_model(seed=1), path)
    good = path.read_bytes()

    def crash(arrays, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_numpy, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        xpcnn.save(_model(seed=2), path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_missing_safetensors_package_is_named(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"pip install 'xpcnn\[safetensors\]'"):
        xpcnn.save(_model(), tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []
    xpcnn.save(_model(), tmp_path / "m.npz")  # .npz needs nothing more
    with pytest.raises(ImportError, match="safetensors package"):
        xpcnn.load(_model(), tmp_path / "m.npz", format="safetensors")

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
    with pytest.raises(ValueError, match="holds Python objects \(pickled\), which xpcnn never loads"):
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

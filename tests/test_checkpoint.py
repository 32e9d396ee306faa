"""Checkpoints and the data order: successive fit calls continue one run, and a run interrupted and resumed from a
checkpoint ends bitwise equal to the uninterrupted one (NumPy and array-api-strict device1)."""

from __future__ import annotations

import json
import os
import stat
import zipfile

import numpy as np
import pytest

import xpcnn
from tests.helpers import numpy_backend, strict_backend
from xpcnn import nn, optim


class CountedDropout(nn.Dropout):
    """Dropout whose call counter (which picks its next mask) a checkpoint keeps (until nn.Dropout declares it)."""

    extra_state_names = ("calls",)


def _backends():
    return [pytest.param(numpy_backend, id="numpy"), pytest.param(strict_backend, id="array_api_strict-device1")]


def _data(xp, n=40):
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((n, 1, 6, 6)).astype(np.float32))
    y = xp.asarray(rng.integers(0, 3, n).astype(np.int64))
    return x, y


def _model(xp):
    nn.manual_seed(0)
    kw = dict(xp=xp.namespace, device=xp.device)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, **kw), nn.BatchNorm2d(4, **kw), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        CountedDropout(0.25), nn.Linear(36, 3, **kw),
    )


def _training(xp):
    model = _model(xp)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    return model, opt, optim.StepLR(opt, step_size=2, gamma=0.5)


def _state(xp, model, opt):
    state = {f"model/{k}": xp.to_numpy(v) for k, v in model.state_dict().items()}
    for i, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            state[f"opt/{i}/{key}"] = xp.to_numpy(value) if hasattr(value, "shape") else value
    return state


def _assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key, strict=True)


@pytest.mark.parametrize("make_backend", _backends())
def test_resumed_run_ends_bitwise_equal_to_the_uninterrupted_one(make_backend, tmp_path):
    xp = make_backend()
    x, y = _data(xp)
    val = _data(xp, 12)
    options = dict(batch_size=8, validation_data=val, progress=False)

    model, opt, sched = _training(xp)
    full = xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=4, scheduler=sched, **options)
    expected = _state(xp, model, opt)

    model, opt, sched = _training(xp)
    first = xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=2, scheduler=sched, **options)
    path = tmp_path / "run.ckpt.npz"
    xpcnn.save_checkpoint(path, model, opt, sched, extra={"note": "interrupted", "lrs": [0.5, 0.25]})
    del model, opt, sched  # the process ends

    model, opt, sched = _training(xp)  # a new process builds the same objects...
    checkpoint = xpcnn.load_checkpoint(path, model, opt, sched)  # ...and resumes
    assert checkpoint.epoch == 2 and checkpoint.data_order.epoch == 2
    assert checkpoint.extra == {"note": "interrupted", "lrs": [0.5, 0.25]}
    assert opt.lr == sched.get_last_lr()[0] == 5e-3
    rest = xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=2, scheduler=sched, **options)
    _assert_bitwise_equal(_state(xp, model, opt), expected)
    assert {k: first[k] + rest[k] for k in full} == full
    assert model[5].calls == 4 * 5  # 5 batches an epoch


def test_successive_one_epoch_calls_continue_the_data_order():
    xp = numpy_backend()
    x, y = _data(xp)
    model, opt, _ = _training(xp)
    full = xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=3, batch_size=8, progress=False)
    expected = _state(xp, model, opt)
    model, opt, _ = _training(xp)
    losses = [xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=1, batch_size=8, progress=False)["loss"][0]
              for _ in range(3)]
    assert losses == full["loss"]
    _assert_bitwise_equal(_state(xp, model, opt), expected)
    assert xpcnn.DataOrder.of(model).epoch == 3


def test_data_order_orders_depend_on_seed_and_epoch_only():
    a, b = xpcnn.DataOrder(seed=5), xpcnn.DataOrder(seed=5)
    orders = [a.next_order(np, 10, device="cpu") for _ in range(3)]
    assert all(sorted(o.tolist()) == list(range(10)) for o in orders)
    assert orders[0].tolist() != orders[1].tolist()
    b.load_state_dict({"seed": 5, "epoch": 2})
    assert b.next_order(np, 10, device="cpu").tolist() == orders[2].tolist()
    assert xpcnn.DataOrder(6).next_order(np, 10, device="cpu").tolist() != orders[0].tolist()
    assert xpcnn.DataOrder(1).next_order(np, 4, device="cpu", shuffle=False).tolist() == [0, 1, 2, 3]
    with pytest.raises(TypeError, match="seed must be an int"):
        xpcnn.DataOrder("1")
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        a.load_state_dict({"seed": 1, "epoch": -1})


def test_seed_restarts_the_models_order_and_an_explicit_order_is_advanced():
    xp = numpy_backend()
    x, y = _data(xp)
    model, opt, _ = _training(xp)
    xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=2, progress=False)
    xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=1, seed=7, progress=False)
    assert xpcnn.DataOrder.of(model).state_dict() == {"seed": 7, "epoch": 1}
    order = xpcnn.DataOrder(3)
    xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=2, data_order=order, progress=False)
    assert order.epoch == 2 and xpcnn.DataOrder.of(model).epoch == 1
    with pytest.raises(TypeError, match="seed or data_order"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, seed=1, data_order=order, progress=False)
    with pytest.raises(TypeError, match="data_order must be an xpcnn.DataOrder"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, data_order=3, progress=False)


def test_checkpoint_is_one_npz_without_pickle_with_a_json_manifest(tmp_path):
    xp = numpy_backend()
    model, opt, sched = _training(xp)
    x, y = _data(xp)
    xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=1, progress=False)
    path = tmp_path / "c.npz"
    xpcnn.save_checkpoint(path, model, opt, sched, extra={"mean": np.arange(3.0)})
    assert os.listdir(tmp_path) == ["c.npz"]  # no temporary file left
    mode = stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    with np.load(path, allow_pickle=False) as data:
        manifest = json.loads(data["manifest"].tobytes())
        assert "model/0.weight" in data.files and "optimizer/0/exp_avg" in data.files
    assert manifest["format"] == "xpcnn-checkpoint" and manifest["optimizer"]["class"] == "Adam"
    assert manifest["model"]["extra_state"] == {"5.calls": 2}  # 40 samples in batches of 32
    extra = xpcnn.load_checkpoint(path, _training(xp)[0]).extra
    np.testing.assert_array_equal(extra["mean"], np.arange(3.0))


def test_load_is_all_or_nothing_and_names_the_problem(tmp_path):
    xp = numpy_backend()
    model, opt, sched = _training(xp)
    path = tmp_path / "c.npz"
    xpcnn.save_checkpoint(path, model, opt, sched)
    other, _, _ = _training(xp)
    other_opt = optim.SGD(other.parameters(), lr=0.1)
    before = {k: v for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="it holds a Adam state, the optimizer is a SGD"):
        xpcnn.load_checkpoint(path, other, other_opt)
    small = nn.Sequential(nn.Linear(3, 2, seed=0))
    with pytest.raises(ValueError, match="does not fit.*state does not match the model"):
        xpcnn.load_checkpoint(path, small)
    # a failure after the model was loaded puts the model back
    bad_sched = optim.ExponentialLR(optim.Adam(other.parameters(), lr=1.0), gamma=0.5)
    with pytest.raises(ValueError, match="ExponentialLR"):
        xpcnn.load_checkpoint(path, other, scheduler=bad_sched)
    assert all(other.state_dict()[k] is v for k, v in before.items())
    weights = tmp_path / "w.npz"
    xpcnn.save(model, weights)
    with pytest.raises(ValueError, match="not an xpcnn checkpoint.*no manifest"):
        xpcnn.load_checkpoint(weights, model)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an xpcnn checkpoint"):
        xpcnn.load_checkpoint(tmp_path / "junk.npz", model)
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        xpcnn.save_checkpoint(tmp_path / "no-such-folder" / "c.npz", model, opt)
    with pytest.raises(TypeError, match="extra\\['f'\\] must be a JSON value"):
        xpcnn.save_checkpoint(path, model, opt, extra={"f": object()})
    assert zipfile.is_zipfile(path)


def test_best_checkpoint_and_early_stopping(tmp_path):
    xp = numpy_backend()
    x, y = _data(xp)
    model, opt, _ = _training(xp)
    best = xpcnn.BestCheckpoint(tmp_path / "best.npz", monitor="val_accuracy")
    stop = xpcnn.EarlyStopping(monitor="val_loss", patience=1)
    seen = []
    history = xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=30, batch_size=8, validation_data=_data(xp, 8),
                        callbacks=[best, stop, lambda run: seen.append((run.epoch, dict(run.logs)))], progress=False)
    epochs = len(history["val_loss"])
    assert stop.stopped_epoch == epochs < 30
    assert [e for e, _ in seen] == list(range(1, epochs + 1))
    assert all(logs["time"] >= 0 and "val_accuracy" in logs for _, logs in seen)
    assert best.best == max(history["val_accuracy"])
    assert best.best_epoch == 1 + history["val_accuracy"].index(best.best)
    checkpoint = xpcnn.load_checkpoint(tmp_path / "best.npz", _training(xp)[0])
    assert checkpoint.epoch == best.best_epoch
    assert checkpoint.extra == {"monitor": "val_accuracy", "value": best.best}
    with pytest.raises(ValueError, match="monitors 'val_loss'.*validation_data"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, callbacks=[xpcnn.EarlyStopping()], progress=False)
    with pytest.raises(TypeError, match="callbacks\\[0\\] must be a Callback or a callable"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, callbacks=[3], progress=False)


def test_early_stopping_restores_the_best_weights():
    xp = numpy_backend()
    x, y = _data(xp)
    model, opt, _ = _training(xp)
    kept = {}

    def keep(run):
        kept[run.epoch] = dict(run.model.state_dict())

    stop = xpcnn.EarlyStopping(monitor="loss", patience=0, min_delta=10.0, restore_best_weights=True)
    xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=5, callbacks=[keep, stop], progress=False)
    assert stop.stopped_epoch == 2
    assert all(model.state_dict()[k] is v for k, v in kept[1].items())


def test_scheduler_stepped_per_epoch_or_per_batch():
    xp = numpy_backend()
    x, y = _data(xp)
    model, opt, sched = _training(xp)
    xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=3, scheduler=sched, progress=False)
    assert sched.last_epoch == 3 and opt.lr == pytest.approx(1e-2 * 0.5)
    one_cycle = optim.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=2, batch_size=8, scheduler=one_cycle,
              scheduler_step="batch", progress=False)
    assert one_cycle.last_epoch == 10
    plateau = optim.ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=10.0)
    lr = opt.lr
    xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=2, scheduler=plateau, progress=False)
    assert opt.lr == lr * 0.25
    with pytest.raises(ValueError, match="scheduler must schedule the optimizer passed to fit"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), x, y, scheduler=sched,
                  progress=False)
    with pytest.raises(ValueError, match="scheduler_step must be 'epoch' or 'batch'"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, scheduler=sched, scheduler_step="step", progress=False)


def test_callbacks_state_is_kept_by_checkpoints_and_across_fit_calls(tmp_path):
    xp = numpy_backend()
    x, y = _data(xp)
    options = dict(batch_size=8, validation_data=_data(xp, 12), progress=False)

    def run_objects():
        model, opt, sched = _training(xp)
        return model, opt, sched, [xpcnn.EarlyStopping(monitor="val_accuracy", patience=2, min_delta=0.05),
                                   xpcnn.BestCheckpoint(tmp_path / "best.npz", monitor="val_loss")]

    model, opt, sched, callbacks = run_objects()
    full = xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=12, scheduler=sched, callbacks=callbacks,
                     **options)
    expected, (stop, best) = _state(xp, model, opt), callbacks
    assert stop.stopped_epoch is not None and stop.stopped_epoch == len(full["loss"]) < 12

    model, opt, sched, callbacks = run_objects()
    xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=2, scheduler=sched, callbacks=callbacks, **options)
    xpcnn.save_checkpoint(tmp_path / "c.npz", model, opt, sched, callbacks=callbacks)
    model, opt, sched, callbacks = run_objects()
    xpcnn.load_checkpoint(tmp_path / "c.npz", model, opt, sched, callbacks=callbacks)
    while callbacks[0].stopped_epoch is None:  # one epoch per call continues the run
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=1, scheduler=sched, callbacks=callbacks, **options)
    _assert_bitwise_equal(_state(xp, model, opt), expected)
    assert callbacks[0].state_dict() == stop.state_dict() and callbacks[1].state_dict() == best.state_dict()
    with pytest.raises(ValueError, match="states of callbacks"):
        xpcnn.load_checkpoint(tmp_path / "c.npz", model, callbacks=[callbacks[1]])
    with pytest.raises(TypeError, match="callbacks\\[0\\] must be a Callback"):
        xpcnn.save_checkpoint(tmp_path / "c.npz", model, callbacks=[print])

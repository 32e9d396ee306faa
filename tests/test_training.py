"""fit / evaluate / predict: a short digits run learns, histories and errors are right, on every backend."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

import xpcnn
from xpcnn import nn

pytest.importorskip("sklearn")


def _digits(n_train=600, n_test=200):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    return x[:n_train], y[:n_train], x[-n_test:], y[-n_test:]


def _small_cnn(xp=None, device=None):
    nn.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, xp=xp, device=device), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 16, 10, xp=xp, device=device),
    )


def test_short_digits_run_learns(xp):
    if xp.name == "dask":
        pytest.skip("training on Dask builds one graph over all steps; Dask is for the ops, not for training loops")
    x_train, y_train, x_test, y_test = (xp.asarray(a) for a in _digits())
    model = _small_cnn(xp.namespace, xp.device)
    history = xpcnn.fit(
        model, nn.CrossEntropyLoss(), xpcnn.optim.Adam(model.parameters(), lr=5e-3), x_train, y_train,
        epochs=4, batch_size=32, validation_data=(x_test, y_test), progress=False,
    )
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 4 for v in history.values())
    assert history["loss"][-1] < history["loss"][0] < 2.5
    assert history["val_accuracy"][-1] > 0.6  # chance is 0.1
    loss, accuracy = xpcnn.evaluate(model, nn.CrossEntropyLoss(), x_test, y_test)
    assert accuracy == pytest.approx(history["val_accuracy"][-1])
    outputs = xpcnn.predict(model, x_test, batch_size=64)
    xp.assert_on_backend(outputs, xp.float32)
    assert tuple(outputs.shape) == (200, 10)
    assert tuple(xpcnn.predict(model, x_test[:0, ...]).shape) == (0, 10)


def test_fit_is_reproducible_and_shows_progress(capsys):
    x, y, _, _ = _digits(100, 1)
    runs = []
    for progress in (False, True):
        model = _small_cnn()
        runs.append(xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y,
                              epochs=2, batch_size=16, seed=3, progress=progress))
    assert runs[0] == runs[1]
    assert "epoch 2/2" in capsys.readouterr().err


def test_regression_with_mse():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32)).astype(np.float32)
    model = nn.Sequential(nn.Linear(3, 1, seed=0))
    history = xpcnn.fit(model, nn.MSELoss(), xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=20,
                        batch_size=16, progress=False)
    assert set(history) == {"loss"}
    assert history["loss"][-1] < 1e-3


def test_data_on_another_backend_is_refused(torch):
    model = _small_cnn()
    x, y = torch.zeros((4, 1, 8, 8)), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="torch array but .*numpy array|numpy array but .*torch array"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, progress=False)


def test_bad_data():
    model = _small_cnn()
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="same number of samples"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, np.zeros((4, 1, 8, 8), np.float32), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="batch_size"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int64),
                  batch_size=0)


def test_read_only_data_through_model_fit_evaluate_predict_and_save(tmp_path):
    x, y, _, _ = _digits(64, 1)
    x.flags.writeable = y.flags.writeable = False
    copies = x.copy(), y.copy()
    model = _small_cnn()
    out = model(x)
    dout = np.ones_like(out)
    dout.flags.writeable = False
    model.backward(dout)
    xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=1,
              progress=False)
    xpcnn.evaluate(model, nn.CrossEntropyLoss(), x, y)
    xpcnn.predict(model, x)
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    for v in state.values():
        v.flags.writeable = False
    xpcnn.save(state, tmp_path / "m.npz")
    model.load_state_dict(state)
    np.testing.assert_array_equal(x, copies[0])
    np.testing.assert_array_equal(y, copies[1])
    assert (dout == 1).all()


def test_targets_are_checked_once_not_at_every_step(monkeypatch):
    """fit reads the targets' range once (a GPU sync), then trains with an unchecked loss; bad targets still raise."""
    from xpcnn import training

    calls = []
    real = training.check_class_range
    monkeypatch.setattr(training, "check_class_range", lambda *a: calls.append(1) or real(*a))
    x, y, _, _ = _digits(64, 1)
    model = _small_cnn()
    loss_fn = nn.CrossEntropyLoss()
    xpcnn.fit(model, loss_fn, xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=2, batch_size=8,
              progress=False)
    assert len(calls) == 1 and loss_fn.check_targets
    y_bad = y.copy()
    y_bad[-1] = 10
    with pytest.raises(ValueError, match=r"class indices in \[0, 9\] or ignore_index -100, got values in \[0, 10\]"):
        xpcnn.fit(model, loss_fn, xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y_bad, progress=False)
    with pytest.raises(ValueError, match="class indices"):
        xpcnn.evaluate(model, loss_fn, x, y_bad)


def test_validation_targets_are_checked_too():
    x, y, _, _ = _digits(32, 1)
    model = _small_cnn()
    y_bad = y.copy()
    y_bad[0] = -1
    with pytest.raises(ValueError, match="class indices"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=1,
                  validation_data=(x, y_bad), progress=False)


def test_validation_with_a_batch_norm_without_running_statistics():
    """A batch norm without running statistics normalises with the batch's own in eval mode too: fit's check of
    validation_data runs two samples (one per channel would not define them), and the validation losses come."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU(), nn.Linear(8, 3))
    history = xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=2,
                        batch_size=10, validation_data=(x[:9], y[:9]), progress=False)
    assert len(history["val_loss"]) == 2 and all(np.isfinite(v) for v in history["val_loss"])


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_one_plain_line_per_epoch_off_a_terminal_a_bar_on_one_and_nothing_when_off(capsys):
    x, y, x_val, y_val = _digits(64, 16)
    log = io.StringIO()
    model = _small_cnn()
    xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=2,
              batch_size=16, validation_data=(x_val, y_val), progress=log)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2
    for epoch, line in enumerate(lines, 1):
        assert re.fullmatch(rf"epoch {epoch}/2: loss \d\.\d{{4}}, accuracy \d\.\d{{4}}, val_loss \d\.\d{{4}}, "
                            r"val_accuracy \d\.\d{4}, \d+\.\d s", line), line
    terminal = _Terminal()
    xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=1,
              batch_size=16, progress=terminal)
    assert "\r" in terminal.getvalue() and "epoch 3/3" in terminal.getvalue() and "4/4" in terminal.getvalue()
    capsys.readouterr()
    xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=1,
              progress=False)
    assert capsys.readouterr() == ("", "")
    with pytest.raises(TypeError, match="progress must be True, False or a text stream"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, progress="yes")


def test_predict_probabilities_is_the_softmax_of_the_outputs(xp):
    x, _, _, _ = _digits(20, 1)
    model = _small_cnn(xp.namespace, xp.device)
    x = xp.asarray(x)
    logits = xp.to_numpy(xpcnn.predict(model, x, batch_size=7))
    probs = xpcnn.predict(model, x, batch_size=7, probabilities=True)
    xp.assert_on_backend(probs, xp.float32)
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    expected = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(xp.to_numpy(probs), expected, rtol=1e-5, atol=1e-7)
    assert tuple(xpcnn.predict(model, x[:0, ...], probabilities=True).shape) == (0, 10)
    with pytest.raises(TypeError, match="probabilities must be True or False"):
        xpcnn.predict(model, x, probabilities=1)


def test_weighted_ignoring_and_probability_losses_are_the_whole_datasets_whatever_the_batches():
    import xpcnn.functional as F

    rng = np.random.default_rng(0)
    x = rng.standard_normal((23, 5)).astype(np.float32)
    y = rng.integers(0, 3, 23)
    y[::4] = -100
    weight = np.array([0.5, 1.0, 2.0], np.float32)
    model = nn.Sequential(nn.Linear(5, 3, seed=0))
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)
    loss, accuracy = xpcnn.evaluate(model, loss_fn, x, y, batch_size=4)
    out = xpcnn.predict(model, x)
    expected, _ = F.softmax_cross_entropy_forward(out, y, weight=weight, label_smoothing=0.1)
    assert loss == pytest.approx(float(expected), rel=1e-6)
    kept = y != -100
    assert accuracy == pytest.approx(np.mean(out.argmax(axis=1)[kept] == y[kept]))
    onehot = np.eye(3, dtype=np.float32)[y[kept]]
    loss_p, accuracy_p = xpcnn.evaluate(model, nn.CrossEntropyLoss(), x[kept], onehot, batch_size=5)
    loss_i, accuracy_i = xpcnn.evaluate(model, nn.CrossEntropyLoss(), x[kept], y[kept])
    assert loss_p == pytest.approx(loss_i, rel=1e-6) and accuracy_p == accuracy_i
    history = xpcnn.fit(model, loss_fn, xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=2,
                        batch_size=4, progress=False)
    assert np.isfinite(history["loss"]).all() and 0 <= history["accuracy"][-1] <= 1


def test_segmentation_accuracy_counts_every_position():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 2, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, (6, 4, 4))
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, seed=0))
    loss, accuracy = xpcnn.evaluate(model, nn.CrossEntropyLoss(), x, y, batch_size=4)
    out = xpcnn.predict(model, x)
    assert accuracy == pytest.approx(np.mean(out.argmax(axis=1) == y))
    probs = xpcnn.predict(model, x, probabilities=True)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)

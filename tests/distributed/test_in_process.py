"""Data-parallel fit with W replicas in one process: bitwise the single-process micro-batch accumulation over the
same shards, xpcnn.fit's bits with one replica and within 1e-12 with more (FIT_TOLERANCE; SGD's momentum with
batch norm within MOMENTUM_TOLERANCE), checkpoints, data sources, errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("distributed")

import xpcnn  # noqa: E402
import xpcnn.functional as F  # noqa: E402
from xpcnn import nn  # noqa: E402
from xpcnn._random import uniform  # noqa: E402
import xpcnn.distributed as xd  # noqa: E402
from tests.distributed.common import (  # noqa: E402
    BATCH, bitwise_equal, bn_dropout_model, data, make_optimizer, max_difference,
)


# -- the naive reference: one process, the global batch cut into W micro-batches, gradients accumulated ------------


class OffsetDropout(nn.Dropout):
    """Dropout whose mask is the part at ``row`` of the mask of a batch, stream ``stream`` (set by hand)."""

    def forward(self, x):
        out, self._cache = F.dropout_forward(x, self.p, seed=self.seed, stream=self.stream,
                                             offset=self.row * int(np.prod(x.shape[1:])))
        return out


def dropout_model():
    nn.manual_seed(0)
    f = np.float64
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, dtype=f), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64, 16, dtype=f), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 10, dtype=f),
    )


def micro_batch_reference(model, optimizer, x, y, replicas, epochs, seed):
    drop = model.layers[6]
    drop.__class__ = OffsetDropout
    loss_fn = nn.CrossEntropyLoss("sum")
    n, step = len(x), 0
    for epoch in range(epochs):
        order = np.argsort(np.asarray(uniform(np, (n,), seed=seed, stream=epoch, device="cpu")), stable=True)
        for start in range(0, n, BATCH):
            index = order[start : start + BATCH]
            optimizer.zero_grad()
            lo = 0
            for shard in np.array_split(index, replicas):
                drop.row, drop.stream = lo, step
                lo += len(shard)
                out = model(x[shard])
                loss_fn(out, y[shard])
                model.backward(loss_fn.backward(1.0 / len(index)), input_grad=False)  # grad = grad + shard's
            optimizer.step()
            step += 1


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_bitwise_equal_to_micro_batch_accumulation(replicas, kind):
    x, y = data()
    ref = dropout_model()
    micro_batch_reference(ref, make_optimizer(kind, ref), x, y, replicas, epochs=2, seed=7)
    model = dropout_model()
    xd.fit(xd.InProcess(replicas), model, nn.CrossEntropyLoss(), make_optimizer(kind, model), (x, y), epochs=2,
           batch_size=BATCH, seed=7, progress=False)
    assert bitwise_equal(model.state_dict(), ref.state_dict())


FIT_TOLERANCE = 1e-12
"""W = 1 gives fit's bits (the synchronised batch norm is fit's batch norm, xpcnn/functional/normalization.py's own
helpers, when its shard is the whole batch). W = 2, 3 differ in the order of the sums (partial gradient sums,
merged per-shard moments, the backward pass's two global sums): measured up to 4.9e-13 in the parameters and
running statistics, 4.4e-15 in the history and 7.7e-15 in Adam's state (float64, values of order 1)."""

MOMENTUM_TOLERANCE = 5e-12
"""SGD's momentum buffers at W = 2, 3: measured up to 1.9e-12 (values up to 1.4). The last global batch holds 2
samples, and BatchNorm1d over 2 samples has an ill-conditioned gradient (about 10 in size): in a single process, a
one-ulp change of the parameters changes that step's gradient by 1.6e-13. The ~1e-17 differences the earlier
steps' sums leave are amplified likewise, and momentum 0.9 carries them through the second epoch. Without that
batch the difference is a few ulps (ULPS_TOLERANCE)."""


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_equals_single_process_fit_with_batch_norm_and_dropout(replicas, kind):
    x, y = data()
    xv, yv = data(37, seed=1)
    ref = bn_dropout_model()
    ref_opt = make_optimizer(kind, ref)
    expected = xpcnn.fit(ref, nn.CrossEntropyLoss(), ref_opt, x, y, epochs=2, batch_size=BATCH, seed=3,
                         validation_data=(xv, yv), progress=False)
    model = bn_dropout_model()
    opt = make_optimizer(kind, model)
    history = xd.fit(xd.InProcess(replicas), model, nn.CrossEntropyLoss(), opt, (x, y), epochs=2,
                     batch_size=BATCH, seed=3, validation_data=(xv, yv), progress=False)
    state, ref_state = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert history.keys() == expected.keys()
    if replicas == 1:
        assert bitwise_equal(model.state_dict(), ref.state_dict())
        assert history == expected
        for i in ref_state:
            assert bitwise_equal(state[i], ref_state[i])
    assert max_difference(model.state_dict(), ref.state_dict()) < FIT_TOLERANCE
    for key in history:
        np.testing.assert_allclose(history[key], expected[key], rtol=0, atol=FIT_TOLERANCE)
    for i in ref_state:
        for name, value in ref_state[i].items():
            bound = MOMENTUM_TOLERANCE if name == "momentum_buffer" else FIT_TOLERANCE
            np.testing.assert_allclose(state[i][name], value, rtol=0, atol=bound)
    drop = model.layers[8]
    assert type(drop) is nn.Dropout and drop.calls == ref.layers[8].calls == 6


ULPS_TOLERANCE = 4e-15
"""The same two epochs with a last batch of 20 (no ill-conditioned batch norm): measured within 7.3e-16 of fit in
the parameters, the optimizer state and the history at W = 2, 3 (a few ulps of values of order 1)."""


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("replicas", [2, 3])
def test_a_few_ulps_from_fit_without_an_ill_conditioned_batch(replicas, kind):
    x, y = data(2 * BATCH + 20)
    xv, yv = data(37, seed=1)
    ref, model = bn_dropout_model(), bn_dropout_model()
    ref_opt, opt = make_optimizer(kind, ref), make_optimizer(kind, model)
    expected = xpcnn.fit(ref, nn.CrossEntropyLoss(), ref_opt, x, y, epochs=2, batch_size=BATCH, seed=3,
                         validation_data=(xv, yv), progress=False)
    history = xd.fit(xd.InProcess(replicas), model, nn.CrossEntropyLoss(), opt, (x, y), epochs=2,
                     batch_size=BATCH, seed=3, validation_data=(xv, yv), progress=False)
    assert max_difference(model.state_dict(), ref.state_dict()) < ULPS_TOLERANCE
    for key in history:
        np.testing.assert_allclose(history[key], expected[key], rtol=0, atol=ULPS_TOLERANCE)
    state, ref_state = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    for i in ref_state:
        for name, value in ref_state[i].items():
            np.testing.assert_allclose(state[i][name], value, rtol=0, atol=ULPS_TOLERANCE)


@pytest.mark.parametrize("replicas", [1, 3])
def test_batch_norm_options_equal_fit(replicas):
    """momentum=None (the cumulative average), no affine parameters, no running statistics (evaluated with the
    statistics of each validation chunk, as xpcnn.evaluate's batches): fit's bits with one replica, within 1e-12
    with three."""
    x, y = data()

    def model():
        nn.manual_seed(0)
        f = np.float64
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False, dtype=f), nn.BatchNorm2d(4, momentum=None, dtype=f),
            nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(256, affine=False, dtype=f), nn.Linear(256, 10, dtype=f),
            nn.BatchNorm1d(10, track_running_stats=False, dtype=f),
        )

    ref, ours = model(), model()
    xv, yv = data(37, seed=1)
    xv, yv = np.concatenate([xv, x]), np.concatenate([yv, y])  # chunks of 61, 61, 37 and 2
    expected = xpcnn.fit(ref, nn.CrossEntropyLoss(), make_optimizer("sgd", ref), x, y, epochs=2, batch_size=BATCH,
                         progress=False)  # (fit's own validation refuses this model: it probes with one sample)
    history = xd.fit(xd.InProcess(replicas), ours, nn.CrossEntropyLoss(), make_optimizer("sgd", ours), (x, y),
                     epochs=2, batch_size=BATCH, validation_data=(xv, yv), progress=False)
    evaluated = xpcnn.evaluate(ref, nn.CrossEntropyLoss(), xv, yv, batch_size=BATCH)
    assert max_difference(ours.state_dict(), ref.state_dict()) < FIT_TOLERANCE
    if replicas == 1:
        assert bitwise_equal(ours.state_dict(), ref.state_dict()) and history["loss"] == expected["loss"]
        assert (history["val_loss"][-1], history["val_accuracy"][-1]) == evaluated
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-13)
    np.testing.assert_allclose((history["val_loss"][-1], history["val_accuracy"][-1]), evaluated, rtol=1e-13)


def test_mse_mean_divides_by_every_term():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((50, 6)), rng.standard_normal((50, 3))

    def model():
        nn.manual_seed(1)
        return nn.Sequential(nn.Linear(6, 8, dtype=np.float64), nn.Tanh(), nn.Linear(8, 3, dtype=np.float64))

    ref, ours = model(), model()
    expected = xpcnn.fit(ref, nn.MSELoss(), make_optimizer("sgd", ref), x, y, epochs=2, batch_size=16,
                         progress=False)
    history = xd.fit(xd.InProcess(3), ours, nn.MSELoss(), make_optimizer("sgd", ours), (x, y), epochs=2,
                     batch_size=16, progress=False)
    assert max_difference(ours.state_dict(), ref.state_dict()) < 1e-13
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-13)


# -- checkpoints and resuming --------------------------------------------------------------------------------------


class Crash(Exception):
    pass


def test_checkpoint_resume_after_a_driver_crash_equals_the_whole_run(tmp_path):
    x, y = data()
    whole = bn_dropout_model()
    expected = xd.fit(xd.InProcess(2), whole, nn.CrossEntropyLoss(), make_optimizer("adam", whole), (x, y),
                      epochs=3, batch_size=BATCH, seed=1, progress=False)

    def crash(step):
        if step == 5:
            raise Crash

    model = bn_dropout_model()
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    with pytest.raises(Crash):
        xd.fit(xd.InProcess(2), model, nn.CrossEntropyLoss(), make_optimizer("adam", model), (x, y), epochs=3,
               batch_size=BATCH, seed=1, checkpoint=str(tmp_path), checkpoint_every=2, progress=False,
               on_step=crash)
    assert bitwise_equal(model.state_dict(), before)  # a failed run leaves the model as it was
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["step"] == 4 and manifest["epoch"] == 1 and manifest["batch"] == 1 and not manifest["complete"]
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "state-000000004.npz"]

    model = bn_dropout_model()  # a new driver: the checkpoint holds the state
    history = xd.fit(xd.InProcess(2), model, nn.CrossEntropyLoss(), make_optimizer("adam", model), (x, y),
                     epochs=3, batch_size=BATCH, seed=1, checkpoint=str(tmp_path), checkpoint_every=2,
                     progress=False)
    assert bitwise_equal(model.state_dict(), whole.state_dict())
    assert history == expected
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"]


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    x, y = data()
    model = bn_dropout_model()
    with pytest.raises(Crash):
        xd.fit(xd.InProcess(2), model, nn.CrossEntropyLoss(), make_optimizer("sgd", model), (x, y), epochs=2,
               batch_size=BATCH, checkpoint=str(tmp_path), checkpoint_every=1, progress=False,
               on_step=lambda step: (_ for _ in ()).throw(Crash) if step == 2 else None)
    with pytest.raises(ValueError, match="batch_size=61, now 30"):
        xd.fit(xd.InProcess(2), model, nn.CrossEntropyLoss(), make_optimizer("sgd", model), (x, y), epochs=2,
               batch_size=30, checkpoint=str(tmp_path), progress=False)


def test_resuming_follows_the_checkpoints_number_of_replicas(tmp_path):
    x, y = data()
    whole = bn_dropout_model()
    xd.fit(xd.InProcess(3), whole, nn.CrossEntropyLoss(), make_optimizer("sgd", whole), (x, y), epochs=2,
           batch_size=BATCH, progress=False)
    model = bn_dropout_model()
    with pytest.raises(Crash):
        xd.fit(xd.InProcess(3), model, nn.CrossEntropyLoss(), make_optimizer("sgd", model), (x, y), epochs=2,
               batch_size=BATCH, checkpoint=str(tmp_path), checkpoint_every=2, progress=False,
               on_step=lambda step: (_ for _ in ()).throw(Crash) if step == 3 else None)
    xd.fit(xd.InProcess(1), model, nn.CrossEntropyLoss(), make_optimizer("sgd", model), (x, y), epochs=2,
           batch_size=BATCH, checkpoint=str(tmp_path), progress=False)  # InProcess(1): 3 replicas all the same
    assert bitwise_equal(model.state_dict(), whole.state_dict())
    with pytest.raises(Crash):
        xd.fit(xd.InProcess(3), model, nn.CrossEntropyLoss(), make_optimizer("sgd", model), (x, y), epochs=2,
               batch_size=BATCH, checkpoint=str(tmp_path), checkpoint_every=2, progress=False,
               on_step=lambda step: (_ for _ in ()).throw(Crash) if step == 3 else None)
    with pytest.warns(RuntimeWarning, match="with 2 gives the same steps up to the order"):
        xd.fit(xd.InProcess(3), model, nn.CrossEntropyLoss(), make_optimizer("sgd", model), (x, y), epochs=2,
               batch_size=BATCH, checkpoint=str(tmp_path), replicas=2, progress=False)


def test_damaged_checkpoint_is_refused(tmp_path):
    x, y = data()
    model = bn_dropout_model()
    with pytest.raises(Crash):
        xd.fit(xd.InProcess(1), model, nn.CrossEntropyLoss(), make_optimizer("sgd", model), (x, y), epochs=2,
               batch_size=BATCH, checkpoint=str(tmp_path), checkpoint_every=1, progress=False,
               on_step=lambda step: (_ for _ in ()).throw(Crash) if step == 2 else None)
    npz = next(p for p in tmp_path.iterdir() if p.suffix == ".npz")
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="SHA-256"):
        xd.fit(xd.InProcess(1), model, nn.CrossEntropyLoss(), make_optimizer("sgd", model), (x, y), epochs=2,
               batch_size=BATCH, checkpoint=str(tmp_path), progress=False)


# -- data sources --------------------------------------------------------------------------------------------------


def test_npz_and_zarr_data_give_the_same_run(tmp_path):
    zarr = pytest.importorskip("zarr")
    x, y = data()
    runs = {}
    np.savez(tmp_path / "train.npz", x=x, y=y)
    group = zarr.open_group(str(tmp_path / "train.zarr"), mode="w")
    group.create_array("x", data=x, chunks=(16, 1, 8, 8))
    group.create_array("y", data=y, chunks=(16,))
    for name, source in [("arrays", (x, y)), ("npz", str(tmp_path / "train.npz")),
                         ("zarr", str(tmp_path / "train.zarr")), ("zarr arrays", (group["x"], group["y"]))]:
        model = bn_dropout_model()
        history = xd.fit(xd.InProcess(3), model, nn.CrossEntropyLoss(), make_optimizer("sgd", model), source,
                         epochs=1, batch_size=BATCH, validation_data=source, progress=False)
        runs[name] = (model.state_dict(), history)
    for name, (state, history) in runs.items():
        assert bitwise_equal(state, runs["arrays"][0]), name
        assert history == runs["arrays"][1], name


# -- errors --------------------------------------------------------------------------------------------------------


def test_a_replica_that_drifts_is_an_error():
    class Drifting(xd.InProcess):
        def call(self, method, args_per_rank):
            if method == "digest":
                p = self._handles[1].model.parameters()[0]
                p.data = np.nextafter(p.data, np.inf)  # one ulp
            return super().call(method, args_per_rank)

    x, y = data()
    model = dropout_model()
    with pytest.raises(RuntimeError, match="parameters differ after epoch 1"):
        xd.fit(Drifting(2), model, nn.CrossEntropyLoss(), make_optimizer("sgd", model), (x, y),
               batch_size=BATCH, progress=False)


@pytest.mark.parametrize("change, error, match", [
    (dict(client="cluster"), TypeError, "client must be"),
    (dict(data=[1, 2, 3]), TypeError, "data must be a pair"),
    (dict(data=(np.zeros((4, 1, 8, 8)), np.zeros(3, np.int64))), ValueError, "same number of samples"),
    (dict(data="missing.npz"), ValueError, "no such .npz"),
    (dict(data=(np.zeros((4, 1, 8, 8)), np.full(4, 10))), ValueError, "data does not fit"),
    (dict(data=(np.zeros((4, 2, 8, 8)), np.zeros(4, np.int64))), ValueError, "data does not fit"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(optimizer="other"), ValueError, "optimizer must be built on model.parameters"),
    (dict(validation_data=(np.zeros((4, 1, 4, 4)), np.zeros(4, np.int64))), ValueError, "validation_data"),
    (dict(on_step=3), TypeError, "on_step"),
])
def test_bad_arguments_raise_before_training(change, error, match):
    x, y = data()
    model = dropout_model()
    args = dict(client=xd.InProcess(2), model=model, loss_fn=nn.CrossEntropyLoss(),
                optimizer=make_optimizer("sgd", model), data=(x, y))
    if change.get("optimizer") == "other":
        change = dict(optimizer=make_optimizer("sgd", dropout_model()))
    args.update(change)
    kwargs = {k: args.pop(k) for k in list(args) if k not in ("client", "model", "loss_fn", "optimizer", "data")}
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        xd.fit(*args.values(), progress=False, **kwargs)
    assert bitwise_equal(model.state_dict(), before)


def test_a_replica_that_cannot_be_built_raises_its_error(monkeypatch):
    """Not taken for a lost worker (no restarts): the replica's own error, raised on the driver."""
    from xpcnn.distributed import _replica

    def unreadable(*args):
        raise OSError("the data cannot be read here")

    monkeypatch.setattr(_replica, "Samples", unreadable)
    x, y = data()
    model = dropout_model()
    with pytest.raises(OSError, match="cannot be read here"):
        xd.fit(xd.InProcess(2), model, nn.CrossEntropyLoss(), make_optimizer("sgd", model), (x, y),
               batch_size=BATCH, progress=False)


def test_an_error_inside_a_replica_is_raised_on_the_driver():
    x, y = data(4)
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64, dtype=np.float64), nn.Linear(64, 10, dtype=np.float64))
    with pytest.raises(ValueError, match="more than one value per channel in the global batch"):
        xd.fit(xd.InProcess(2), model, nn.CrossEntropyLoss(), make_optimizer("sgd", model), (x[:3], y[:3]),
               batch_size=2, progress=False)


# -- backends ------------------------------------------------------------------------------------------------------


@pytest.mark.eager_only
@pytest.mark.parametrize("replicas", [1, 3])
def test_every_eager_backend_trains_as_fit(xp, replicas):
    """On the model's own namespace and device (array-api-strict's device1 raises on any leak to the default
    device or through NumPy): fit's bits with one replica, 3 replicas within 1e-12 of fit, the shuffle and the
    masks made there too; class weights and ignored targets (a denominator exchanged) included."""
    if not xp.float64:
        pytest.skip("float64 comparison")
    from xpcnn._host import to_numpy

    x, y = data()
    y = np.where(np.arange(len(y)) % 7 == 3, -100, y)
    X, Y, w = xp.asarray(x), xp.asarray(y), xp.asarray(weights())
    ref, model = bn_dropout_model().to(xp.namespace, xp.device), bn_dropout_model().to(xp.namespace, xp.device)
    expected = xpcnn.fit(ref, nn.CrossEntropyLoss(weight=w), make_optimizer("adam", ref), X, Y, epochs=2,
                         batch_size=BATCH, progress=False)
    history = xd.fit(xd.InProcess(replicas), model, nn.CrossEntropyLoss(weight=w), make_optimizer("adam", model),
                     (X, Y), epochs=2, batch_size=BATCH, progress=False)
    host = lambda m: {k: to_numpy(v) for k, v in m.state_dict().items()}  # noqa: E731
    assert max_difference(host(model), host(ref)) < FIT_TOLERANCE
    if replicas == 1:
        assert bitwise_equal(host(model), host(ref)) and history == expected
    assert model.parameters()[0].data.device == X.device


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_channels_last_batch_norm_equals_fit(replicas):
    """NHWC batch norm (2-D and 1-D, (N, L, C)) synchronised over its last axis: fit's bits with one replica,
    within FIT_TOLERANCE with more."""

    def model():
        nn.manual_seed(0)
        f = np.float64
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False, data_format="NHWC", dtype=f),
            nn.BatchNorm2d(4, data_format="NHWC", dtype=f), nn.ReLU(), nn.Flatten(1, 2, data_format="NHWC"),
            nn.BatchNorm1d(4, data_format="NHWC", dtype=f), nn.Flatten(data_format="NHWC"), nn.Dropout(0.3),
            nn.Linear(256, 10, dtype=f),
        )

    x, y = data()
    x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    ref, ours = model(), model()
    ref_opt, opt = make_optimizer("adam", ref), make_optimizer("adam", ours)
    expected = xpcnn.fit(ref, nn.CrossEntropyLoss(), ref_opt, x, y, epochs=2, batch_size=BATCH, seed=4,
                         progress=False)
    history = xd.fit(xd.InProcess(replicas), ours, nn.CrossEntropyLoss(), opt, (x, y), epochs=2,
                     batch_size=BATCH, seed=4, progress=False)
    assert max_difference(ours.state_dict(), ref.state_dict()) < FIT_TOLERANCE
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=0, atol=FIT_TOLERANCE)
    if replicas == 1:
        assert bitwise_equal(ours.state_dict(), ref.state_dict()) and history == expected


# -- the criterion's options ---------------------------------------------------------------------------------------


def weights():
    return np.linspace(0.5, 2.0, 10)


@pytest.mark.parametrize("replicas", [1, 2, 3])
@pytest.mark.parametrize("options", [
    dict(weight="classes"), dict(ignore="rows"), dict(label_smoothing=0.1), dict(weight="classes", ignore="rows"),
    dict(reduction="sum", ignore="rows"),
], ids=lambda o: "-".join(o))
def test_cross_entropy_options_equal_fit(options, replicas):
    """Class weights and ignored targets make a "mean" divide by a sum over the global batch (exchanged at every
    step), label smoothing does not; the history's loss and accuracy weigh batches as fit's."""
    x, y = data()
    options = dict(options)
    if options.pop("ignore", None):
        y = np.where(np.arange(len(y)) % 7 == 3, -100, y)  # the default ignore_index
    if options.get("weight") == "classes":
        options["weight"] = weights()
    ref, ours = dropout_model(), dropout_model()
    expected = xpcnn.fit(ref, nn.CrossEntropyLoss(**options), make_optimizer("adam", ref), x, y, epochs=2,
                         batch_size=BATCH, seed=2, validation_data=(x[:37], y[:37]), progress=False)
    history = xd.fit(xd.InProcess(replicas), ours, nn.CrossEntropyLoss(**options), make_optimizer("adam", ours),
                     (x, y), epochs=2, batch_size=BATCH, seed=2, validation_data=(x[:37], y[:37]), progress=False)
    if replicas == 1:
        assert bitwise_equal(ours.state_dict(), ref.state_dict()) and history == expected
    assert max_difference(ours.state_dict(), ref.state_dict()) < FIT_TOLERANCE
    assert history.keys() == expected.keys()
    for key in history:
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-14)


@pytest.mark.parametrize("replicas", [1, 2])
def test_dense_targets_equal_fit(replicas):
    """(N, C, H, W) scores against (N, H, W) class indices, some ignored: the mean is over positions."""
    x, y = data()
    y = np.random.default_rng(3).integers(0, 3, (len(x), 8, 8))
    y[:, 0, :3] = -100

    def model():
        nn.manual_seed(0)
        f = np.float64
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False, dtype=f), nn.BatchNorm2d(4, dtype=f),
                             nn.ReLU(), nn.Conv2d(4, 3, 1, dtype=f))

    ref, ours = model(), model()
    expected = xpcnn.fit(ref, nn.CrossEntropyLoss(), make_optimizer("sgd", ref), x, y, epochs=2,
                         batch_size=BATCH, progress=False)
    history = xd.fit(xd.InProcess(replicas), ours, nn.CrossEntropyLoss(), make_optimizer("sgd", ours), (x, y),
                     epochs=2, batch_size=BATCH, progress=False)
    if replicas == 1:
        assert bitwise_equal(ours.state_dict(), ref.state_dict()) and history == expected
    assert max_difference(ours.state_dict(), ref.state_dict()) < FIT_TOLERANCE
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-14)
    np.testing.assert_allclose(history["accuracy"], expected["accuracy"], rtol=1e-14)


@pytest.mark.parametrize("replicas", [1, 2])
def test_float16_batch_norm_computes_in_float32_as_fit(replicas):
    """A 16-bit model's synchronised batch norm computes in float32 and rounds once, as the single-process one:
    fit's bits with one replica; with two, the float32 sums in another order round to within an ulp or two."""

    def model():
        nn.manual_seed(0)
        f = np.float16
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False, dtype=f), nn.BatchNorm2d(4, dtype=f),
                             nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(256, dtype=f), nn.Linear(256, 10, dtype=f))

    x, y = data()
    x = x.astype(np.float16)
    ref, ours = model(), model()
    xpcnn.fit(ref, nn.CrossEntropyLoss(), make_optimizer("sgd", ref), x, y, epochs=1, batch_size=BATCH,
              progress=False)
    xd.fit(xd.InProcess(replicas), ours, nn.CrossEntropyLoss(), make_optimizer("sgd", ours), (x, y), epochs=1,
           batch_size=BATCH, progress=False)
    assert all(v.dtype == np.float16 for k, v in ours.state_dict().items() if "num_batches" not in k)
    if replicas == 1:
        assert bitwise_equal(ours.state_dict(), ref.state_dict())
    else:
        for key, value in ref.state_dict().items():
            np.testing.assert_allclose(ours.state_dict()[key], value, rtol=2e-3, atol=2e-3, err_msg=key)

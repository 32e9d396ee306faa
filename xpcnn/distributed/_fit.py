"""The driver of data-parallel training: :func:`fit`."""

from __future__ import annotations

import math
import pickle
import time
import warnings

import numpy as np  # host: the history's numbers and the checkpoint's driver arrays

from .._host import from_numpy
from .._validation import as_bool, as_float, as_int, namespace_and_device
from ..nn.losses import CrossEntropyLoss
from ..nn.module import Module
from ..optim import Optimizer
from ..training import _check_criterion, _check_scheduler, _progress_bar, _progress_stream
from ..functional.losses import check_class_range
from . import _checkpoint
from ._backends import ReplicaLost, backend_for
from ._data import batch_bounds, data_spec
from ._exchange import ordered_sum, reduce
from ._layers import check_supported, named_modules, set_dropout_calls

__all__ = ["fit"]

DEFAULT_TIMEOUT = 300.0  # seconds a replica may take to answer one call before it counts as lost
RESTART_PAUSE = 0.5  # seconds the driver waits after losing a replica (the scheduler notices the dead worker)


def fit(client, model: Module, loss_fn, optimizer: Optimizer, data, *, epochs: int = 1, batch_size: int = 32,
        seed: int = 0, validation_data=None, shuffle: bool = True, scheduler=None, scheduler_step: str = "epoch",
        checkpoint: str | None = None, checkpoint_every: int = 100, max_restarts: int = 3,
        replicas: int | None = None, timeout: float = DEFAULT_TIMEOUT, progress: bool = True,
        on_step=None) -> dict:
    """Data-parallel :func:`xpcnn.fit`: one replica of the model per worker, each step's gradient that of the
    global batch.

    Every replica recomputes the epoch's shuffle as :func:`xpcnn.fit` does (same ``seed``), takes its contiguous
    slice of each global batch of ``batch_size`` samples, and returns the partial sum of its samples' gradients
    (for ``reduction="mean"``, each divided by the global batch's size). The driver adds the partial sums in rank
    order and every replica applies that same update with its copy of ``optimizer``. Dropout masks are drawn by
    global position and batch norm statistics are those of the global batch (:mod:`xpcnn.distributed._layers`),
    so a step equals :func:`xpcnn.fit`'s up to the order of the sums, whatever the number of replicas, and a run
    with a given number of replicas gives the same bits wherever they run.

    Parameters
    ----------
    client : distributed.Client or InProcess
        The cluster (replicas become Dask actors, one per worker) or ``InProcess(replicas=W)``: W replicas in
        this process, the same computation without a cluster.
    model, loss_fn, optimizer
        As for :func:`xpcnn.fit`; ``optimizer`` built on ``model.parameters()``. They are shipped to the replicas;
        at the end, ``model`` and ``optimizer`` hold the trained state (left unchanged if training fails).
    data : (x, y) arrays, an ``.npz`` path, a zarr group path, or a pair of zarr arrays
        Read by each replica itself (paths must be readable on every worker; see :mod:`._data`).
    epochs, batch_size, seed, shuffle
        As for :func:`xpcnn.fit`; ``batch_size`` is the GLOBAL batch size.
    validation_data : same forms as ``data``, or None
        Evaluated after every epoch, each replica on its slice.
    scheduler : LRScheduler or ReduceLROnPlateau, optional
        Built on ``optimizer``; shipped with it, and stepped on every replica where :func:`xpcnn.fit` steps it:
        after every epoch (``scheduler_step="epoch"``, after validation; ReduceLROnPlateau gets the epoch's
        ``val_loss``, or ``loss`` without validation data, as the driver computed it) or after every optimizer
        step (``"batch"``). Its state is part of the checkpoints; at the end, ``scheduler`` holds the trained
        run's state.
    scheduler_step : {'epoch', 'batch'}
    checkpoint : str or None
        A directory: every ``checkpoint_every`` steps and at the end of training the state (model, optimizer,
        position in the data, history) is written there atomically (npz + JSON manifest, no pickle). If it holds
        an unfinished checkpoint of the same run (same data size, batch size, seed, replicas), training resumes
        from it; a finished one is started over.
    checkpoint_every : int
        Steps between snapshots, which are also kept in memory to resume from when a replica is lost.
    max_restarts : int
        How many times a lost replica (worker death, broken connection, no answer within ``timeout`` seconds) may
        make the driver rebuild all replicas on the workers alive (as many replicas as before) and resume from the
        last snapshot; the resumed run gives the same bits as an uninterrupted one.
    replicas : int or None
        The number of replicas (default: one per worker; ``InProcess``'s own count).
    progress : bool
        A tqdm bar per epoch with the running loss (and accuracy).
    on_step : callable or None
        Called on the driver with the global step number (1, 2, ...) after each step (steps replayed after a
        restart are reported again; an exception it raises ends training, the model left unchanged).

    Returns
    -------
    dict
        The history, as :func:`xpcnn.fit`'s: ``loss`` (and ``accuracy`` for cross-entropy), ``val_loss`` (and
        ``val_accuracy``) with validation data: one value per epoch.

    Raises
    ------
    TypeError, ValueError
        For malformed arguments, before anything is shipped; errors of the model or the data inside a replica are
        raised again on the driver as they were raised there.
    RuntimeError
        When replicas disagree on the parameters at the end of an epoch (their SHA-256 digests differ), or when
        more than ``max_restarts`` replicas were lost.

    Examples
    --------
    One replica gives :func:`xpcnn.fit`'s bits; on a cluster, pass a ``distributed.Client`` instead of
    ``InProcess`` (README, "Training on a cluster"):

    >>> import numpy as np, xpcnn
    >>> import xpcnn.distributed as xd
    >>> from xpcnn import nn, optim
    >>> x, y = np.random.default_rng(0).standard_normal((30, 4)), np.arange(30) % 3
    >>> def model():
    ...     return nn.Sequential(nn.Linear(4, 8, seed=0, dtype=np.float64), nn.BatchNorm1d(8, dtype=np.float64),
    ...                          nn.ReLU(), nn.Linear(8, 3, seed=1, dtype=np.float64))
    >>> def train(fit, net, data):
    ...     opt = optim.SGD(net.parameters(), lr=0.1)
    ...     sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    ...     return fit(net, nn.CrossEntropyLoss(), opt, *data, epochs=3, batch_size=8, seed=0, scheduler=sched,
    ...                progress=False)
    >>> ref, ours = model(), model()
    >>> expected = train(xpcnn.fit, ref, (x, y))
    >>> history = train(lambda *a, **k: xd.fit(xd.InProcess(1), *a, **k), ours, ((x, y),))
    >>> history == expected and all(np.array_equal(a.data, b.data) for a, b in zip(ours.parameters(), ref.parameters()))
    True
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be an xpcnn.nn.Module, got {type(model).__name__}")
    _check_criterion(loss_fn)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an xpcnn.optim optimizer, got {type(optimizer).__name__}")
    params = model.parameters()
    if not params or [id(p) for p in optimizer.params] != [id(p) for p in params]:
        raise ValueError("optimizer must be built on model.parameters() (all of them, in order)")
    _check_scheduler(scheduler, optimizer, scheduler_step)
    check_supported(model)
    epochs, seed = as_int(epochs, "epochs", minimum=0), as_int(seed, "seed")
    batch_size = as_int(batch_size, "batch_size", minimum=1)
    checkpoint_every = as_int(checkpoint_every, "checkpoint_every", minimum=1)
    max_restarts = as_int(max_restarts, "max_restarts", minimum=0)
    shuffle, progress = as_bool(shuffle, "shuffle"), as_bool(progress, "progress")
    timeout = as_float(timeout, "timeout", minimum=0.0)
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step must be callable or None, got {type(on_step).__name__}")
    spec, sample_shape, n, _, _ = data_spec(data)
    val_spec, val_size = None, 0
    if validation_data is not None:
        val_spec, val_shape, val_size, _, _ = data_spec(validation_data, "validation_data")
        if val_shape != sample_shape:
            raise ValueError(f"validation_data's samples must have data's shape {sample_shape}, got {val_shape}")
    xp, device = namespace_and_device(model=params[0].data)
    global_denominator = _probe(model, loss_fn, spec, xp, device)

    backend = backend_for(client, timeout)
    requested = replicas is not None
    count = backend.default_replicas() if replicas is None else as_int(replicas, "replicas", minimum=1)
    config = {"data": spec, "validation": val_spec, "seed": seed, "shuffle": shuffle, "batch_size": batch_size,
              "validation_size": val_size, "scheduler_step": None if scheduler is None else scheduler_step,
              "schedule": None if scheduler is None else f"{type(scheduler).__name__} per {scheduler_step}",
              "global_denominator": global_denominator}
    run = _Run(backend, pickle.dumps((model, optimizer, scheduler)), loss_fn, config, count, requested, n, epochs,
               isinstance(loss_fn, CrossEntropyLoss), checkpoint, checkpoint_every, max_restarts, progress, on_step)
    final = run.train()
    model.load_state_dict({k: v for k, v in final["model"].items()})
    set_dropout_calls(model, final["dropout_calls"])
    optimizer.load_state_dict(final["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(final["scheduler"])
    return final["history"]


def _probe(model, loss_fn, spec, xp, device) -> bool:
    """Run the first two samples through the model in eval mode (a clear error now, not on a worker; two, for a
    batch norm without running statistics), and check every cross-entropy target against the model's class count
    once. Returns whether a ``"mean"`` cross-entropy's denominator must be summed over the global batch at every
    step (class weights, or targets equal to ``ignore_index``); else it is the batch's rows."""
    x, y = spec.open()
    x1, y1 = (from_numpy(np.asarray(a[0:2]), xp, device) for a in (x, y))
    was_training = model.training
    model.eval()
    try:
        out = model.forward(x1)
        if isinstance(loss_fn, CrossEntropyLoss):
            loss_fn.unchecked()(out, y1)
            if np.issubdtype(np.dtype(y.dtype), np.floating):
                return False  # class probabilities: the mean divides by the rows
            targets = np.asarray(y[:])  # host: the targets, read once on the driver
            if loss_fn.check_targets:
                check_class_range(np, targets, out.shape[1], loss_fn.ignore_index)
            return loss_fn.reduction == "mean" and (
                loss_fn.weight is not None or bool(np.any(targets == loss_fn.ignore_index)))
        loss_fn(out, y1)
        return False
    except (ValueError, TypeError) as error:
        raise type(error)(f"data does not fit the model and loss: {error}") from error
    finally:
        model.train(was_training)
        for _, module in named_modules(model):  # the probe's caches: not shipped (a 16-bit one does not unpickle)
            module._cache = None


class _Run:
    """The driver's state of one training run: where it is, the history, the last snapshot."""

    def __init__(self, backend, blob, loss_fn, config, count, count_requested, n, epochs, classify, checkpoint,
                 checkpoint_every, max_restarts, progress, on_step):
        self.backend, self.blob, self.loss_fn, self.config = backend, blob, loss_fn, config
        self.count_requested = count_requested  # False: the number of replicas follows a checkpoint's
        self.count, self.n, self.epochs, self.classify = count, n, epochs, classify
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        self.max_restarts, self.progress, self.on_step = max_restarts, progress, on_step
        self.batches = batch_bounds(n, config["batch_size"])
        self.reduction = loss_fn.reduction
        self.restarts = 0
        self.pending = None  # the reduced gradient the replicas apply at their next call
        self.pending_epoch = None  # the metric of an epoch whose scheduler step the replicas take at their next call
        self.epoch_scheduler = config["scheduler_step"] == "epoch"  # the replicas step a scheduler per epoch

    # -- position and snapshots -------------------------------------------------------------------------------------

    def _fresh_position(self):
        history = {"loss": [], **({"accuracy": []} if self.classify else {})}
        if self.config["validation"] is not None:
            history.update(val_loss=[], **({"val_accuracy": []} if self.classify else {}))
        return {"epoch": 0, "batch": 0, "step": 0, "history": history, **dict.fromkeys(TALLY)}

    def _meta(self, position, complete=False):
        return {"step": position["step"], "epoch": position["epoch"], "batch": position["batch"],
                "history": position["history"], "complete": complete, "n": self.n, "replicas": self.count,
                "batch_size": self.config["batch_size"], "seed": self.config["seed"],
                "shuffle": self.config["shuffle"], "epochs": self.epochs,
                "schedule": self.config["schedule"]}

    def _take_snapshot(self, position, complete=False):
        state = self._call_all("state")
        snapshot = {**state[0], "position": _copy_position(position)}
        if self.checkpoint is not None:
            driver_arrays = {k: np.asarray(position[k]) for k in TALLY if position[k] is not None}
            meta = {**self._meta(position, complete), "dropout_calls": state[0]["dropout_calls"],
                    "scheduler": state[0]["scheduler"]}
            _checkpoint.write(self.checkpoint, {"model": state[0]["model"], "optimizer": state[0]["optimizer"],
                                                "driver_arrays": driver_arrays, "meta": meta})
        return snapshot

    def _resume_from_disk(self):
        if self.checkpoint is None:
            return None
        saved = _checkpoint.read(self.checkpoint)
        if saved is None or saved["meta"]["complete"]:
            return None
        meta = saved["meta"]
        ours = self._meta(self._fresh_position())
        different = [k for k in ("n", "batch_size", "seed", "shuffle", "schedule") if meta.get(k) != ours[k]]
        if different:
            raise ValueError(
                f"checkpoint {self.checkpoint!r} holds an unfinished run with other settings "
                f"({', '.join(f'{k}={meta.get(k)!r}, now {ours[k]!r}' for k in different)}); "
                "resume it with the same settings or give another directory"
            )
        if meta["replicas"] != self.count:
            if self.count_requested:
                warnings.warn(
                    f"checkpoint {self.checkpoint!r} was written by a run with {meta['replicas']} replicas; resuming "
                    f"with {self.count} gives the same steps up to the order of the gradient sums, not the same bits",
                    RuntimeWarning, stacklevel=4)
            else:
                self.count = meta["replicas"]
        position = {k: meta[k] for k in ("epoch", "batch", "step", "history")}
        arrays = saved["driver_arrays"]
        position.update({k: arrays.get(k) for k in TALLY})
        return {"model": saved["model"], "optimizer": saved["optimizer"], "dropout_calls": meta["dropout_calls"],
                "scheduler": meta.get("scheduler"),
                "position": position}

    # -- calls ------------------------------------------------------------------------------------------------------

    def _call_all(self, method, *args):
        """``method(update, *args)`` on every replica (the pending update applied first: the reduced gradient of the
        last step, and the scheduler's step at the end of an epoch); the results."""
        update = None if self.pending is None and self.pending_epoch is None else (self.pending, self.pending_epoch)
        messages = self.backend.call(method, [(update, *args)] * self.count)
        self.pending = self.pending_epoch = None
        return self._finish(messages)

    def _finish(self, messages):
        """Serve the replicas' exchanges until every one is done; their results in rank order."""
        while True:
            errors = [m[1] for m in messages if m[0] == "error"]
            if errors:
                raise errors[0]
            kinds = {m[0] for m in messages}
            if kinds == {"done"}:
                return [m[1] for m in messages]
            ops = {m[1][0] for m in messages if m[0] == "exchange"}
            if kinds != {"exchange"} or len(ops) != 1:
                raise RuntimeError(f"the replicas are out of step: {[m[0] for m in messages]} {sorted(ops)}")
            answer = reduce(ops.pop(), [m[1][1] for m in messages])
            messages = self.backend.call("resume", [(answer,)] * self.count)

    # -- training ---------------------------------------------------------------------------------------------------

    def train(self) -> dict:
        self._last_snapshot = self._resume_from_disk()
        while True:
            snapshot = self._last_snapshot
            try:
                self.backend.build(self.blob, self.loss_fn, self.config, self.count, snapshot)
                self.pending = self.pending_epoch = None
                return self._epochs(_copy_position(snapshot["position"]) if snapshot else self._fresh_position())
            except ReplicaLost as error:
                self.backend.drop()
                self.restarts += 1
                if self.restarts > self.max_restarts:
                    raise RuntimeError(f"gave up after {self.max_restarts} restarts: {error}") from error
                snapshot = self._last_snapshot  # what the next build starts from
                where = "the start" if snapshot is None else f"step {snapshot['position']['step']}"
                warnings.warn(f"{error}; rebuilding the replicas and resuming from {where} "
                              f"(restart {self.restarts} of at most {self.max_restarts})", RuntimeWarning,
                              stacklevel=3)
                time.sleep(RESTART_PAUSE)
            except BaseException:
                self.backend.drop()
                raise

    def _epochs(self, position):
        first = True
        while position["epoch"] < self.epochs:
            epoch = position["epoch"]
            bar = _progress_bar(_progress_stream(self.progress), len(self.batches), f"epoch {epoch + 1}/{self.epochs}")
            if bar is not None:
                bar.update(position["batch"])
            shown = time.monotonic()
            while position["batch"] < len(self.batches):
                if not first and position["step"] % self.checkpoint_every == 0:
                    self._last_snapshot = self._take_snapshot(position)
                first = False
                results = self._call_all("step", epoch, position["batch"])
                grads = [r[0] for r in results]
                self.pending = [ordered_sum(column) for column in zip(*grads)]
                self._tally(position, ordered_sum([r[1] for r in results]), *results[0][2:4],
                            *(ordered_sum([r[k] for r in results]) for k in (4, 5)))
                position["batch"] += 1
                position["step"] += 1
                if bar is not None:
                    bar.update(1)
                    if time.monotonic() - shown > 0.5 or position["batch"] == len(self.batches):
                        bar.set_postfix(self._postfix(position), refresh=False)
                        shown = time.monotonic()
                if self.on_step is not None:
                    self.on_step(position["step"])
            if bar is not None:
                bar.close()
            self._end_epoch(position)
            first = False
        final = self._take_snapshot(position, complete=True)
        self.backend.drop()
        return {**final, "history": position["history"]}

    def _end_epoch(self, position) -> None:
        digests = self._call_all("digest")
        if len(set(digests)) != 1:
            raise RuntimeError(
                f"the replicas' parameters differ after epoch {position['epoch'] + 1} (SHA-256 digests by rank: "
                f"{[d[:12] for d in digests]}): a replica drifted"
            )
        history = position["history"]
        history["loss"].append(self._dataset_loss(position["loss_sum"], position["weight"]))
        if self.classify:
            history["accuracy"].append(_ratio(position["correct"], position["counted"]))
        if self.config["validation"] is not None:
            # per global chunk of the validation set, each replica's shard: (loss, denominator, weight, hits, counted)
            tally = dict.fromkeys(TALLY)
            for shards in zip(*self._call_all("evaluate")):
                self._tally(tally, *(_total([shard[k] for shard in shards]) for k in range(5)))
            history["val_loss"].append(self._dataset_loss(tally["loss_sum"], tally["weight"]))
            if self.classify:
                history["val_accuracy"].append(_ratio(tally["correct"], tally["counted"]))
        if self.epoch_scheduler:  # taken by the replicas before their next call's work, as fit steps it now
            self.pending_epoch = history["val_loss" if "val_loss" in history else "loss"][-1]
        position.update(epoch=position["epoch"] + 1, batch=0, **dict.fromkeys(TALLY))

    def _tally(self, position, total, denominator, weight, correct, counted) -> None:
        """Add a global batch to the epoch's sums as :func:`xpcnn.fit` does (the same operations, so one replica
        gives fit's history bit for bit): for ``"mean"``, the batch's mean ``total / denominator`` times its weight
        (what fit's loss divided by: the rows, or the target weights' sum), and the weights; else the sum."""
        if self.reduction == "mean":
            position["loss_sum"] = _add(position["loss_sum"], (total / denominator) * weight)
            position["weight"] = _add(position["weight"], weight)
        else:
            position["loss_sum"] = _add(position["loss_sum"], total)
        if self.classify:
            position["correct"] = _add(position["correct"], correct)
            position["counted"] = _add(position["counted"], counted)

    def _dataset_loss(self, total, weight) -> float:
        if self.reduction != "mean":
            return float(total)
        weight = float(weight)
        return float(total) / weight if weight else math.nan

    def _postfix(self, position):
        postfix = {"loss": f"{self._dataset_loss(position['loss_sum'], position['weight']):.4f}"}
        if self.classify:
            postfix["acc"] = f"{_ratio(position['correct'], position['counted']):.4f}"
        return postfix


def _add(total, value):
    return value if total is None else total + value


def _total(values):
    """The rank-ordered sum of the replicas' values (arrays, or plain numbers such as a count of rows); None if
    they are all None."""
    if all(v is None or isinstance(v, (int, float)) for v in values):
        numbers = [v for v in values if v is not None]
        return sum(numbers[1:], numbers[0]) if numbers else None
    return ordered_sum(values)


def _ratio(correct, counted) -> float:
    counted = int(counted)
    return int(correct) / counted if counted else math.nan


TALLY = ("loss_sum", "weight", "correct", "counted")  # the epoch's running sums, kept on the driver


def _copy_position(position):
    history = {k: list(v) for k, v in position["history"].items()}
    return {**position, "history": history}

"""Mini-batch training, evaluation and prediction for any :class:`~xpcnn.nn.Module`.

The data must already be in the model's namespace and on its device (move it once, before ``fit``): batches are
taken on the device with ``xp.take``, the shuffling permutation is made on the device from xpcnn's seeded
generator, and running loss and accuracy stay device arrays. The only device-to-host reads are the progress bar's
refreshes (at most a few per second) and one per epoch for the history.

A run's data order is a :class:`DataOrder` (a seed and the count of epochs drawn): successive ``fit`` calls continue
it, and :func:`xpcnn.save_checkpoint` keeps it, so that a resumed run sees the orders it would have seen. After each
epoch ``fit`` steps the scheduler it was given and calls its callbacks (:class:`EarlyStopping`,
:class:`~xpcnn.checkpoint.BestCheckpoint`, any callable) with the :class:`TrainingRun`.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import weakref

import array_api_compat

from ._random import uniform
from ._validation import as_bool, as_float, as_int, namespace_and_device
from .functional.losses import check_class_range
from .nn.losses import CrossEntropyLoss, _Loss
from .nn.module import Module
from .optim import LRScheduler, Optimizer, ReduceLROnPlateau

__all__ = ["fit", "evaluate", "predict", "DataOrder", "TrainingRun", "Callback", "EarlyStopping"]


class DataOrder:
    """The order :func:`fit` visits the samples in: a seeded generator that counts the epochs it has drawn.

    Epoch ``e`` (counted from 0 over the whole training, across any number of :func:`fit` calls) visits the
    samples in the permutation drawn from ``(seed, e)`` by xpcnn's counter-based generator, on the data's device:
    the order depends only on the seed, the epoch and the number of samples, never on how the epochs were split
    between calls. Save it with :func:`xpcnn.save_checkpoint` and a resumed run sees the order it would have seen.

    Parameters
    ----------
    seed : int
        The seed of the permutations (default 0).

    Attributes
    ----------
    seed : int
    epoch : int
        Epochs drawn so far: the next epoch's number, counted from 0.

    Raises
    ------
    TypeError
        When ``seed`` is not an int.

    Examples
    --------
    Five calls of one epoch see the orders that one call of five epochs sees:

    >>> import numpy as np
    >>> order = DataOrder(seed=1)
    >>> first = order.next_order(np, 5, device="cpu")
    >>> order.epoch, first.shape
    (1, (5,))
    >>> order.state_dict()
    {'seed': 1, 'epoch': 1}
    """

    def __init__(self, seed: int = 0):
        self.seed = as_int(seed, "seed")
        self.epoch = 0

    @classmethod
    def of(cls, model: Module) -> DataOrder:
        """The data order :func:`fit` uses for ``model`` when it is given none: made at seed 0 by the first call
        and kept (outside the model's state dict) between calls, so that successive calls continue one run."""
        _check_model(model)
        if model not in _model_orders:
            _model_orders[model] = cls()
        return _model_orders[model]

    def next_order(self, xp, n: int, *, device, shuffle: bool = True):
        """The index order of the next epoch (an (n,) int64 array on ``device``; ``arange(n)`` when not
        ``shuffle``), and count the epoch."""
        n = as_int(n, "n", minimum=0)
        if shuffle:
            order = xp.argsort(uniform(xp, (n,), seed=self.seed, stream=self.epoch, device=device))
            order = xp.astype(order, xp.int64)
        else:
            order = xp.arange(n, dtype=xp.int64, device=device)
        self.epoch += 1
        return order

    def state_dict(self) -> dict:
        """``{"seed": int, "epoch": int}``: plain Python values."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a state from :meth:`state_dict`.

        Raises
        ------
        TypeError, ValueError
            When ``state_dict`` is not a dict with an int ``seed`` and an int ``epoch`` >= 0.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"seed", "epoch"}:
            raise TypeError(f"state_dict must be a dict with keys 'seed' and 'epoch' (from DataOrder.state_dict()), "
                            f"got {state_dict!r}")
        seed, epoch = as_int(state_dict["seed"], "seed"), as_int(state_dict["epoch"], "epoch", minimum=0)
        self.seed, self.epoch = seed, epoch

    def __repr__(self):
        return f"DataOrder(seed={self.seed}, epoch={self.epoch})"


_model_orders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class TrainingRun:
    """What :func:`fit` hands its callbacks: the objects being trained and the run's progress.

    Attributes
    ----------
    model, loss_fn, optimizer, scheduler, data_order
        The objects :func:`fit` was given (``data_order`` the one in use, ``scheduler`` None without one).
    epoch : int
        Epochs completed in the whole training (``data_order.epoch``): 1 after the first epoch ever.
    logs : dict
        This epoch's metrics: ``loss`` (and ``accuracy``, ``val_loss``, ``val_accuracy`` where computed), and
        ``time``, the epoch's seconds.
    history : dict
        Every metric of this call so far, one value per epoch (what :func:`fit` returns).
    stop : bool
        Set it to True to stop after this epoch (:class:`EarlyStopping` does).

    Parameters
    ----------
    model, loss_fn, optimizer, scheduler, data_order
        The attributes above.
    history : dict
        The dict of metrics to fill (:func:`fit` makes the run; there is no need to build one).

    Examples
    --------
    See :class:`Callback`: a callback reads ``run.epoch`` and ``run.logs`` and may set ``run.stop``.

    >>> import xpcnn
    >>> def stop_when_low(run):
    ...     run.stop = run.logs["loss"] < 0.01
    """

    def __init__(self, model, loss_fn, optimizer, scheduler, data_order, history):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.scheduler, self.data_order, self.history = scheduler, data_order, history
        self.epoch, self.logs, self.stop = data_order.epoch, {}, False


class Callback:
    """:func:`fit`'s callbacks' base class: override any of the three hooks (each gets the
    :class:`TrainingRun`). A plain callable passed in ``callbacks`` is called as ``on_epoch_end(run)``.

    A callback with progress to keep in a checkpoint lists its attribute names in ``_state_names``: :meth:`state_dict`
    and :meth:`load_state_dict` then save and restore them (:func:`xpcnn.save_checkpoint` with ``callbacks=``).

    Examples
    --------
    >>> import numpy as np, xpcnn
    >>> from xpcnn import nn
    >>> class PrintLoss(xpcnn.Callback):
    ...     def on_epoch_end(self, run):
    ...         print(f"epoch {run.epoch}: loss {run.logs['loss']:.1f}")
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, seed=0))
    >>> x, y = np.zeros((8, 1, 2, 2), dtype=np.float32), np.zeros(8, dtype=np.int64)
    >>> opt = xpcnn.optim.SGD(model.parameters(), lr=0.1)
    >>> history = xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=2, batch_size=4, progress=False,
    ...                     callbacks=[PrintLoss()])
    epoch 1: loss 0.9
    epoch 2: loss 0.8
    """

    def on_train_begin(self, run: TrainingRun) -> None:
        """Called before the first epoch of a :func:`fit` call (check the monitored metric exists here)."""

    def on_epoch_end(self, run: TrainingRun) -> None:
        """Called after each epoch, its validation and its scheduler step; ``run.logs`` holds its metrics."""

    def on_train_end(self, run: TrainingRun) -> None:
        """Called when the :func:`fit` call ends, normally or stopped early (not when an error ends it)."""

    _state_names: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        """The callback's own progress as plain Python values (what :func:`xpcnn.save_checkpoint` keeps when given
        ``callbacks=``); empty for a callback without state."""
        return {name: getattr(self, name) for name in self._state_names}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict`'s values.

        Raises
        ------
        ValueError
            When the keys are not this callback's.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != set(self._state_names):
            raise ValueError(f"state_dict is not a {type(self).__name__} state: expected keys "
                             f"{sorted(self._state_names)}, got {state_dict!r:.80}")
        for name, value in state_dict.items():
            setattr(self, name, value)


class _Monitor:
    """The improvement test shared by :class:`EarlyStopping` and :class:`~xpcnn.checkpoint.BestCheckpoint`."""

    def __init__(self, monitor, mode, min_delta):
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a metric name such as 'val_loss', got {type(monitor).__name__}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.mode = ("max" if "accuracy" in monitor else "min") if mode == "auto" else mode
        self.min_delta = as_float(min_delta, "min_delta", minimum=0.0)
        self.best = None

    def check_monitored(self, run) -> None:
        if self.monitor not in run.history:
            raise ValueError(
                f"{type(self).__name__} monitors {self.monitor!r}, which this fit call does not compute; it "
                f"computes {sorted(run.history)} (val_* needs validation_data, accuracy a CrossEntropyLoss)"
            )

    def improved(self, value: float) -> bool:
        if self.best is None:
            return not math.isnan(value)
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor, Callback):
    """Stop :func:`fit` when a metric has stopped improving, as Keras's ``EarlyStopping``.

    Parameters
    ----------
    monitor : str
        A key of the history: ``"val_loss"`` (default), ``"val_accuracy"``, ``"loss"``, ``"accuracy"``.
    mode : {'auto', 'min', 'max'}
        Whether the metric should go down or up; ``'auto'``: up for accuracies, down otherwise.
    patience : int
        Epochs without improvement tolerated before stopping, >= 0 (default 0: stop at the first).
    min_delta : float
        Smallest change that counts as an improvement, >= 0.
    restore_best_weights : bool
        When stopping (or at the end of the call), load the weights and buffers of the best epoch back into the
        model (the arrays are kept, not copied: xpcnn never writes a parameter in place).

    Attributes
    ----------
    best : float or None
        The best value seen. ``wait``: epochs since it; ``stopped_epoch``: the run's epoch at which it stopped
        (None while running).

    Its state carries over from one :func:`fit` call to the next, as one run (``fit(..., epochs=1)`` in a loop:
    stop the loop when ``stopped_epoch`` is set); :func:`xpcnn.save_checkpoint` keeps it when given
    ``callbacks=[...]``. Build a new one to start afresh. With ``restore_best_weights``, the best weights are held
    in memory only.

    Raises
    ------
    TypeError, ValueError
        For a bad argument; at the start of :func:`fit` when the monitored metric is not computed.

    Examples
    --------
    >>> import numpy as np, xpcnn
    >>> from xpcnn import nn
    >>> x = np.zeros((8, 3), np.float32); y = np.ones((8, 1), np.float32)
    >>> model = nn.Sequential(nn.Linear(3, 1, seed=0))
    >>> stop = xpcnn.EarlyStopping(monitor="loss", patience=2, min_delta=0.5)
    >>> history = xpcnn.fit(model, nn.MSELoss(), xpcnn.optim.SGD(model.parameters(), lr=0.01), x, y, epochs=50,
    ...                     callbacks=[stop], progress=False)
    >>> len(history["loss"]), stop.stopped_epoch  # the first epoch stays the best, by 0.5, three epochs after
    (4, 4)
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", patience: int = 0, min_delta: float = 0.0,
                 restore_best_weights: bool = False):
        super().__init__(monitor, mode, min_delta)
        self.patience = as_int(patience, "patience", minimum=0)
        self.restore_best_weights = as_bool(restore_best_weights, "restore_best_weights")
        self.wait, self.stopped_epoch, self._best_state = 0, None, None

    _state_names = ("best", "wait", "stopped_epoch")

    def on_train_begin(self, run):
        self.check_monitored(run)

    def on_epoch_end(self, run):
        value = run.logs[self.monitor]
        if self.improved(value):
            self.best, self.wait = value, 0
            if self.restore_best_weights:
                self._best_state = dict(run.model.state_dict())
            return
        self.wait += 1
        if self.wait > self.patience:
            run.stop, self.stopped_epoch = True, run.epoch

    def on_train_end(self, run):
        if self.restore_best_weights and self._best_state is not None:
            run.model.load_state_dict(self._best_state)


def fit(model: Module, loss_fn: _Loss, optimizer: Optimizer, x, y, *, epochs: int = 1, batch_size: int = 32,
        validation_data=None, shuffle: bool = True, seed: int | None = None, data_order: DataOrder | None = None,
        scheduler=None, scheduler_step: str = "epoch", callbacks=(), progress=True) -> dict:
    """Train ``model`` on (x, y) for ``epochs`` passes of mini-batches.

    Each step: ``optimizer.zero_grad()``, ``model.forward`` of a batch, the loss, ``model.backward`` (without the
    input gradient), ``optimizer.step()``. The data must already be in the model's namespace and on its device.

    Parameters
    ----------
    model : Module
        Its mode (train or eval) is restored when ``fit`` returns; it trains in train mode and validates in eval.
    loss_fn : CrossEntropyLoss or MSELoss
        With ``reduction`` 'mean' or 'sum'.
    optimizer : Optimizer
        Built on ``model.parameters()``.
    x : array, shape (N, ...)
        The inputs, samples first, in the model's layout (NCHW images for a convolutional model unless it was
        built for NHWC), floating, in the model's namespace and on its device.
    y : array, shape (N,) or (N, ...)
        Integer class indices in [0, C) for cross-entropy; for MSE, arrays of the output's shape.
    epochs : int
        Passes over the data, >= 0 (default 1).
    batch_size : int
        Samples per step, >= 1 (default 32); the last batch of an epoch may be smaller.
    validation_data : (x_val, y_val), optional
        Evaluated after every epoch (in eval mode) into ``val_loss`` (and ``val_accuracy``).
    shuffle : bool
        Visit the samples in the data order's permutation (default), or in order.
    seed : int, optional
        Restart the model's own data order at this seed (``DataOrder.of(model)``); leave it None to continue it.
    data_order : DataOrder, optional
        The generator of the epochs' orders, advanced by one per epoch. By default the model's own
        (:meth:`DataOrder.of`): ``fit(..., epochs=1)`` called five times sees the orders, and ends with the weights,
        that ``fit(..., epochs=5)`` does. Pass your own (and save it in a checkpoint) to control it.
    scheduler : LRScheduler or ReduceLROnPlateau, optional
        Stepped after every epoch (``scheduler_step="epoch"``, after validation; ReduceLROnPlateau gets
        ``val_loss``, or ``loss`` without validation data) or after every optimizer step (``"batch"``, as
        ``OneCycleLR`` expects).
    scheduler_step : {'epoch', 'batch'}
    callbacks : sequence of Callback or callable
        Called after every epoch with the :class:`TrainingRun` (a plain callable as ``on_epoch_end``):
        :class:`EarlyStopping`, :class:`~xpcnn.checkpoint.BestCheckpoint`, or your own. Setting ``run.stop``
        ends the call after that epoch.
    progress : bool or text stream
        Where progress goes: True for ``sys.stderr`` (the default), or a stream. On a terminal a bar per epoch
        with the running loss and accuracy; otherwise (a log file, CI) one plain line per epoch with the loss,
        accuracy, validation metrics and the epoch's seconds, no carriage returns. False prints nothing.

    Returns
    -------
    dict
        The history of this call: ``{"loss": [...], "accuracy": [...], "val_loss": [...], "val_accuracy":
        [...]}``, one Python float per epoch (accuracy only for cross-entropy, validation only with
        ``validation_data``). The loss is the criterion's over the whole epoch: the mean over all samples for
        ``reduction="mean"``, their sum for ``"sum"`` (whatever the batch size).

    Raises
    ------
    TypeError, ValueError
        For anything malformed — the model, loss, optimizer, data, ``validation_data``, ``epochs``, ``batch_size``,
        ``seed``, ``data_order``, ``scheduler``, ``callbacks``, a monitored metric the call does not compute —
        before the first update changes the model.

    Examples
    --------
    >>> import numpy as np, xpcnn
    >>> from xpcnn import nn
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((64, 3)).astype(np.float32)
    >>> y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    >>> model = nn.Sequential(nn.Linear(3, 1, seed=0))
    >>> history = xpcnn.fit(model, nn.MSELoss(), xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=20,
    ...                     batch_size=16, progress=False)
    >>> history["loss"][-1] < 1e-3
    True
    """
    xp, device = _check_data(model, x, y, batch_size)
    _check_criterion(loss_fn)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an xpcnn.optim optimizer, got {type(optimizer).__name__}")
    epochs = as_int(epochs, "epochs", minimum=0)
    shuffle = as_bool(shuffle, "shuffle")
    stream = _progress_stream(progress)
    batch_size = as_int(batch_size, "batch_size")
    data_order = _resolve_data_order(model, seed, data_order)
    _check_scheduler(scheduler, optimizer, scheduler_step)
    callbacks = _check_callbacks(callbacks)
    was_training = model.training
    if validation_data is not None:
        _check_validation_data(model, loss_fn, validation_data, x)
    classify = isinstance(loss_fn, CrossEntropyLoss)
    step_loss, check_targets = _checking_targets_once(xp, loss_fn, y)
    history = {"loss": [], **({"accuracy": []} if classify else {})}
    if validation_data is not None:
        history.update(val_loss=[], **({"val_accuracy": []} if classify else {}))
    run = TrainingRun(model, loss_fn, optimizer, scheduler, data_order, history)
    for callback in callbacks:
        _hook(callback, "on_train_begin", run)
    try:
        last_epoch = data_order.epoch + epochs
        for _ in range(epochs):
            _fit_epoch(run, x, y, xp, device, batch_size, validation_data, shuffle, stream, last_epoch,
                       step_loss, check_targets, classify, scheduler_step)
            for callback in callbacks:
                _hook(callback, "on_epoch_end", run)
            if run.stop:
                break
        for callback in callbacks:
            _hook(callback, "on_train_end", run)
    finally:
        model.train(was_training)
    return history


def _fit_epoch(run, x, y, xp, device, batch_size, validation_data, shuffle, stream, last_epoch, step_loss,
               check_targets, classify, scheduler_step):
    model, optimizer, loss_fn, scheduler = run.model, run.optimizer, run.loss_fn, run.scheduler
    n = x.shape[0]
    started = time.monotonic()
    model.train()
    order = run.data_order.next_order(xp, n, device=device, shuffle=shuffle)
    batches = _batches(xp, n, batch_size, order, device)
    label = f"epoch {run.data_order.epoch}/{last_epoch}"
    bar = _progress_bar(stream, len(batches), label)
    tally, seen, shown = _Tally(xp, loss_fn, classify), 0, time.monotonic()
    for index in batches:
        xb, yb = xp.take(x, index, axis=0), xp.take(y, index, axis=0)
        optimizer.zero_grad()
        out = model.forward(xb)
        check_targets(out)
        loss = step_loss(out, yb)
        tally.add(loss, _mean_denominator(step_loss, index.shape[0]), out, yb)
        model.backward(step_loss.backward(1.0), input_grad=False)
        optimizer.step()
        if scheduler is not None and scheduler_step == "batch":
            scheduler.step()
        seen += index.shape[0]
        if bar is not None:
            bar.update(1)
            if time.monotonic() - shown > 0.5 or seen == n:  # the only per-step sync: the display
                bar.set_postfix(tally.postfix(), refresh=False)
                shown = time.monotonic()
    logs = {"loss": tally.loss()}
    if classify:
        logs["accuracy"] = tally.accuracy()
    if validation_data is not None:
        val_loss, val_accuracy = evaluate(model, loss_fn, *validation_data, batch_size=batch_size)
        logs["val_loss"] = val_loss
        if classify:
            logs["val_accuracy"] = val_accuracy
    if scheduler is not None and scheduler_step == "epoch":
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(logs.get("val_loss", logs["loss"]))
        else:
            scheduler.step()
    for key, value in logs.items():
        run.history[key].append(value)
    logs["time"] = time.monotonic() - started
    run.epoch, run.logs = run.data_order.epoch, logs
    if bar is not None:
        bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k != "time"}, refresh=True)
        bar.close()
    elif stream is not None:
        stream.write(_epoch_line(label, logs) + "\n")
        stream.flush()


def _epoch_line(label: str, logs: dict) -> str:
    """One plain line for a log file: ``epoch 3/10: loss 0.1234, accuracy 0.9500, val_loss ..., 1.2 s``."""
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "time")
    return f"{label}: {metrics}, {logs['time']:.1f} s"


def _resolve_data_order(model, seed, data_order) -> DataOrder:
    if data_order is not None:
        if not isinstance(data_order, DataOrder):
            raise TypeError(f"data_order must be an xpcnn.DataOrder, got {type(data_order).__name__}")
        if seed is not None:
            raise TypeError("pass seed or data_order, not both: the data order carries its own seed")
        return data_order
    if seed is not None:
        seed = as_int(seed, "seed")
        _model_orders[model] = DataOrder(seed)
    return DataOrder.of(model)


def _check_scheduler(scheduler, optimizer, scheduler_step) -> None:
    if scheduler_step not in ("epoch", "batch"):
        raise ValueError(f"scheduler_step must be 'epoch' or 'batch', got {scheduler_step!r}")
    if scheduler is None:
        return
    if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
        raise TypeError(f"scheduler must be an xpcnn.optim learning-rate scheduler, got {type(scheduler).__name__}")
    if scheduler.optimizer is not optimizer:
        raise ValueError("scheduler must schedule the optimizer passed to fit (it was built on another one)")
    if isinstance(scheduler, ReduceLROnPlateau) and scheduler_step == "batch":
        raise ValueError("ReduceLROnPlateau steps on an epoch's metric: use scheduler_step='epoch'")


def _check_callbacks(callbacks) -> list:
    if callbacks is None or isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be a list of Callback objects or callables, got {type(callbacks).__name__}")
    callbacks = list(callbacks)
    for i, callback in enumerate(callbacks):
        if not (isinstance(callback, Callback) or callable(callback)):
            raise TypeError(f"callbacks[{i}] must be a Callback or a callable, got {type(callback).__name__}")
    return callbacks


def _hook(callback, name: str, run: TrainingRun) -> None:
    if isinstance(callback, Callback):
        getattr(callback, name)(run)
    elif name == "on_epoch_end":
        callback(run)


def evaluate(model: Module, loss_fn: _Loss, x, y, *, batch_size: int = 256) -> tuple[float, float | None]:
    """The loss and accuracy of ``model`` on (x, y), in eval mode, batch by batch.

    Parameters
    ----------
    model : Module
        Evaluated in eval mode; its mode is restored afterwards.
    loss_fn : CrossEntropyLoss or MSELoss
        With ``reduction`` 'mean' or 'sum'.
    x : array, shape (N, ...)
        Inputs in the model's layout, namespace and device.
    y : array, shape (N,) or (N, ...)
        Class indices for cross-entropy, arrays of the output's shape for MSE.
    batch_size : int
        Samples per forward pass, >= 1 (default 256); it never changes the result.

    Returns
    -------
    loss : float
        The criterion's over all of (x, y): the mean over every sample for ``reduction="mean"``, the sum for
        ``"sum"``.
    accuracy : float or None
        The fraction of rows whose highest score is the target class; None unless ``loss_fn`` is cross-entropy.

    Raises
    ------
    TypeError, ValueError
        For a malformed model, loss or data (naming the argument).

    Examples
    --------
    >>> import numpy as np, xpcnn
    >>> from xpcnn import nn
    >>> model = nn.Sequential(nn.Linear(3, 2, seed=0))
    >>> loss, accuracy = xpcnn.evaluate(model, nn.CrossEntropyLoss(), np.zeros((4, 3), np.float32),
    ...                                 np.array([0, 1, 1, 0]))
    >>> accuracy
    0.5
    """
    xp, device = _check_data(model, x, y, batch_size)
    _check_criterion(loss_fn)
    was_training = model.training
    model.eval()
    try:
        classify = isinstance(loss_fn, CrossEntropyLoss)
        step_loss, check_targets = _checking_targets_once(xp, loss_fn, y)
        tally = _Tally(xp, loss_fn, classify)
        for index in _batches(xp, x.shape[0], batch_size, None, device):
            yb = xp.take(y, index, axis=0)
            out = model.forward(xp.take(x, index, axis=0))
            check_targets(out)
            loss = step_loss(out, yb)
            tally.add(loss, _mean_denominator(step_loss, index.shape[0]), out, yb)
    finally:
        model.train(was_training)
    return tally.loss(), (tally.accuracy() if classify else None)


def predict(model: Module, x, *, batch_size: int = 256, probabilities: bool = False):
    """``model``'s outputs for x, in eval mode, batch by batch, concatenated.

    Parameters
    ----------
    model : Module
        Run in eval mode; its mode is restored afterwards.
    x : array, shape (N, ...)
        Inputs in the model's layout, namespace and device.
    batch_size : int
        Samples per forward pass, >= 1 (default 256).
    probabilities : bool
        Return the softmax of the outputs over axis 1 (the class axis of (N, C) scores, or of (N, C, H, W) maps)
        instead of the raw scores (logits); computed with the row maximum subtracted, so large scores don't
        overflow.

    Returns
    -------
    array, shape (N, ...)
        The outputs (or probabilities), in x's namespace, on its device, in the model's dtype.

    Raises
    ------
    TypeError, ValueError
        For a malformed model or input; ValueError when ``probabilities`` is asked of outputs without a class
        axis (1-D).

    Examples
    --------
    >>> import numpy as np, xpcnn
    >>> from xpcnn import nn
    >>> model = nn.Sequential(nn.Linear(3, 4, seed=0))
    >>> probs = xpcnn.predict(model, np.ones((5, 3), np.float32), probabilities=True)
    >>> probs.shape, bool(np.allclose(probs.sum(axis=1), 1.0))
    ((5, 4), True)
    """
    _check_model(model)
    xp, device = namespace_and_device(x=x)
    _check_samples(x, "x")
    batch_size = as_int(batch_size, "batch_size", minimum=1)
    probabilities = as_bool(probabilities, "probabilities")
    model.check_input(x)
    was_training = model.training
    model.eval()
    try:
        if x.shape[0] == 0:
            outputs = [model.forward(x)]
        else:
            outputs = [model.forward(xp.take(x, index, axis=0))
                       for index in _batches(xp, x.shape[0], batch_size, None, device)]
    finally:
        model.train(was_training)
    if probabilities:
        if outputs[0].ndim < 2:
            raise ValueError(f"probabilities=True needs outputs with a class axis (N, C, ...), got shape "
                             f"{tuple(outputs[0].shape)}")
        outputs = [_softmax(xp, out) for out in outputs]
    return outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=0)


def _softmax(xp, scores):
    """Softmax over axis 1, the maximum subtracted first."""
    shifted = scores - xp.max(scores, axis=1, keepdims=True)
    exp = xp.exp(shifted)
    return exp / xp.sum(exp, axis=1, keepdims=True)


class _Tally:
    """Running sums of one pass over the data, kept as device arrays (read at the end, or by the display).

    The loss is the criterion's over all the data: for ``"mean"`` each batch's mean times what it divided by (its
    samples, or for cross-entropy its summed target weights), over the sum of those; for ``"sum"`` the sum. The
    accuracy counts the targets not ignored: class indices (or the most probable class of probability targets)
    met by the highest score, at every position of (N, C, d1, ...) outputs."""

    def __init__(self, xp, loss_fn, classify: bool):
        self.xp, self.reduction, self.classify = xp, loss_fn.reduction, classify
        self.ignore_index = getattr(loss_fn, "ignore_index", None)
        self.loss_sum = self.weight = self.correct = self.counted = 0

    def add(self, loss, denominator, out, y) -> None:
        if self.reduction == "mean":
            self.loss_sum, self.weight = self.loss_sum + loss * denominator, self.weight + denominator
        else:
            self.loss_sum = self.loss_sum + loss
        if self.classify:
            hits, counted = _hits(self.xp, out, y, self.ignore_index)
            self.correct, self.counted = self.correct + hits, self.counted + counted

    def loss(self) -> float:
        if self.reduction != "mean":
            return float(self.loss_sum)
        weight = float(self.weight)
        return float(self.loss_sum) / weight if weight else math.nan

    def accuracy(self) -> float:
        counted = int(self.counted)
        return int(self.correct) / counted if counted else math.nan

    def postfix(self) -> dict:
        postfix = {"loss": f"{self.loss():.4f}"}
        if self.classify:
            postfix["acc"] = f"{self.accuracy():.4f}"
        return postfix


def _mean_denominator(step_loss, samples: int):
    """What the step's ``"mean"`` loss divided by, as a weight of its batch: cross-entropy's summed target weights
    (kept in its cache: read before the backward pass takes it), else the batch's samples."""
    cache = getattr(step_loss, "_cache", None)
    denominator = getattr(cache, "denominator", None)
    return samples if denominator is None else denominator


def _checking_targets_once(xp, loss_fn, y):
    """(the loss to call at every step, a function to call with each step's output). A checking cross-entropy
    becomes one that does not check (its check reads the targets, a device sync on a GPU), and the function checks
    all of y against the output's class count on its first call; other losses are used as they are."""
    if not (isinstance(loss_fn, CrossEntropyLoss) and loss_fn.check_targets):
        return loss_fn, lambda out: None
    pending = [True]

    def check_targets(out):
        if pending:
            if not xp.isdtype(y.dtype, "real floating"):  # class probabilities have no range to check
                check_class_range(xp, y, out.shape[0 if out.ndim == 1 else 1], loss_fn.ignore_index)
            pending.clear()

    return loss_fn.unchecked(), check_targets


def _hits(xp, out, y, ignore_index):
    """(targets met by the highest score, targets counted), 0-d device arrays (no sync): class indices other than
    ``ignore_index``, or the most probable class of class-probability targets, at every position."""
    predicted = xp.argmax(out, axis=1)
    if xp.isdtype(y.dtype, "real floating"):
        hits = predicted == xp.argmax(y, axis=1)
        return xp.sum(xp.astype(hits, xp.int64)), math.prod(hits.shape)
    kept = y != ignore_index if ignore_index is not None else xp.ones_like(y, dtype=xp.bool)
    hits = (predicted == y) & kept
    return xp.sum(xp.astype(hits, xp.int64)), xp.sum(xp.astype(kept, xp.int64))


def _check_model(model) -> None:
    if not isinstance(model, Module):
        raise TypeError(f"model must be an xpcnn.nn.Module, got {type(model).__name__}")


def _check_criterion(loss_fn) -> None:
    if not isinstance(loss_fn, _Loss):
        raise TypeError(f"loss_fn must be an xpcnn.nn loss (CrossEntropyLoss, MSELoss), got {type(loss_fn).__name__}")
    if loss_fn.reduction == "none":
        raise ValueError("loss_fn must reduce to one number (reduction 'mean' or 'sum'), got reduction='none'")


def _check_samples(a, name: str) -> None:
    if a.ndim < 1:
        raise ValueError(f"{name} must have a sample axis first, got a 0-d array")


def _check_data(model, x, y, batch_size, names=("x", "y")):
    _check_model(model)
    xp, device = namespace_and_device(**{names[0]: x, names[1]: y})
    _check_samples(x, names[0])
    _check_samples(y, names[1])
    model.check_input(x)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of samples, got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{names[0]} must hold at least one sample, got 0")
    as_int(batch_size, "batch_size", minimum=1)
    return xp, device


def _check_validation_data(model, loss_fn, validation_data, x) -> None:
    """Check ``validation_data`` before training changes the model: a pair of arrays on the model's device whose
    first two samples (one if it holds one) go through the model (in eval mode, which changes no state) and the
    loss. Two, because a batch norm without running statistics normalises with the batch's own, which one sample
    per channel does not define."""
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise TypeError(f"validation_data must be a pair (x_val, y_val), got {type(validation_data).__name__}")
    x_val, y_val = validation_data
    xp, _ = _check_data(model, x_val, y_val, 1, names=("validation_data[0]", "validation_data[1]"))
    namespace_and_device(x=x, **{"validation_data[0]": x_val})
    if x_val.dtype != x.dtype or tuple(x_val.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(
            f"validation_data[0] must have x's dtype and sample shape {tuple(x.shape[1:])} ({x.dtype}), "
            f"got {tuple(x_val.shape[1:])} ({x_val.dtype})"
        )
    was_training = model.training
    model.eval()
    try:
        first = xp.arange(min(2, x_val.shape[0]), dtype=xp.int64, device=array_api_compat.device(x_val))
        out = model.forward(xp.take(x_val, first, axis=0))
        check = isinstance(loss_fn, CrossEntropyLoss)
        probe = loss_fn.unchecked() if check else copy.copy(loss_fn)
        probe(out, xp.take(y_val, first, axis=0))
        if check and loss_fn.check_targets and not xp.isdtype(y_val.dtype, "real floating"):
            check_class_range(xp, y_val, out.shape[1], loss_fn.ignore_index)
    except (ValueError, TypeError) as error:
        raise type(error)(f"validation_data does not fit the model and loss: {error}") from error
    finally:
        model.train(was_training)


def _batches(xp, n, batch_size, order, device):
    """Index arrays (on the device) of consecutive batches, in ``order`` when given."""
    order = xp.arange(n, dtype=xp.int64, device=device) if order is None else order
    return [order[start : min(start + batch_size, n)] for start in range(0, n, batch_size)]


def _progress_stream(progress):
    """The text stream progress goes to (None for ``progress=False``)."""
    if progress is True or (type(progress).__module__ == "numpy" and type(progress).__name__ in ("bool", "bool_")):
        return sys.stderr if progress else None
    if progress is False:
        return None
    if not callable(getattr(progress, "write", None)):
        raise TypeError(f"progress must be True, False or a text stream, got {type(progress).__name__} {progress!r}")
    return progress


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _progress_bar(stream, total, desc):
    """A tqdm bar on a terminal; None otherwise (no stream, or a file that gets one line per epoch)."""
    if stream is None or not _is_terminal(stream):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True, file=stream)

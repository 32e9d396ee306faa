"""Training checkpoints: the model, the optimizer, the scheduler, the epoch and the data order in one file.

A checkpoint is one ``.npz`` file written atomically (a temporary file beside the target, renamed into place, as
:func:`xpcnn.save` does) and read without pickle. Its arrays are host copies named ``model/<name>``,
``optimizer/<index>/<key>`` and ``extra/<key>``; everything else — the epoch, the optimizer's hyperparameters and
step counts, the scheduler's state, the data order, the model's extra state (Dropout's call counters), the user's
``extra`` values — is one JSON document stored as the array ``manifest`` (UTF-8 bytes). Loading checks everything
and restores all or nothing; the arrays are converted to each model's namespace, device and dtype, so a checkpoint
written from CuPy resumes on NumPy and back.

A run interrupted after epoch ``e`` and resumed from the checkpoint written then ends bitwise equal to the run
that was never interrupted: every value of the state is restored exactly (floats round-trip through JSON exactly)
and :class:`xpcnn.DataOrder` gives epoch ``e + 1`` the order it would have had.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import array_api_compat
import numpy as np  # host: checkpoint files hold host arrays

from ._host import to_numpy
from ._validation import as_int
from .nn.module import Module
from .optim import LRScheduler, Optimizer, ReduceLROnPlateau
from .training import Callback, DataOrder, TrainingRun, _Monitor

__all__ = ["save_checkpoint", "load_checkpoint", "Checkpoint", "BestCheckpoint"]

FORMAT = "xpcnn-checkpoint"
VERSION = 1
MANIFEST = "manifest"  # the array holding the JSON manifest


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns besides the state it restored.

    Attributes
    ----------
    epoch : int or None
        The ``epoch`` saved (by default the data order's epoch count: epochs completed).
    data_order : DataOrder
        The data order the saved state was loaded into.
    extra : dict
        The ``extra`` values saved (arrays come back as host NumPy arrays).

    Parameters
    ----------
    epoch : int or None
    data_order : DataOrder
    extra : dict
        The attributes above (:func:`load_checkpoint` makes it; there is no need to build one).

    Examples
    --------
    See :func:`load_checkpoint`, which returns one:

    >>> import xpcnn
    >>> xpcnn.Checkpoint(epoch=3, data_order=xpcnn.DataOrder(seed=0)).epoch
    3
    """

    epoch: int | None
    data_order: DataOrder
    extra: dict = field(default_factory=dict)


def save_checkpoint(path, model: Module, optimizer: Optimizer | None = None, scheduler=None, *,
                    epoch: int | None = None, data_order: DataOrder | None = None, callbacks=(),
                    extra: dict | None = None) -> None:
    """Write a training checkpoint to ``path`` (an ``.npz`` file, atomically, without pickle).

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its folder must exist. An existing file is replaced only once the new one is complete.
    model : Module
        Its parameters, buffers and extra state (``named_extra_state``: Dropout's call counters).
    optimizer : Optimizer, optional
        Its :meth:`~xpcnn.optim.Optimizer.state_dict` (momentum buffers, moments, step counts, hyperparameters).
    scheduler : LRScheduler or ReduceLROnPlateau, optional
        Its ``state_dict()``.
    epoch : int, optional
        Epochs completed; by default ``data_order.epoch``.
    data_order : DataOrder, optional
        The data order to save; by default the model's own, :meth:`DataOrder.of(model) <xpcnn.DataOrder.of>`
        (the one :func:`xpcnn.fit` uses when given none).
    callbacks : sequence of Callback
        Callbacks whose ``state_dict()`` to keep (:class:`~xpcnn.EarlyStopping`'s patience count,
        :class:`BestCheckpoint`'s best value), in order; load them back with the same list.
    extra : dict, optional
        Your own values under string keys: JSON values (numbers, strings, lists, dicts, None) or arrays.

    Raises
    ------
    TypeError
        For a wrong type of any argument, or an ``extra`` value that is neither JSON nor an array.
    FileNotFoundError
        When the folder of ``path`` does not exist (named as given).

    Examples
    --------
    >>> import os, tempfile, numpy as np, xpcnn
    >>> from xpcnn import nn
    >>> model = nn.Sequential(nn.Linear(3, 2, seed=0))
    >>> opt = xpcnn.optim.Adam(model.parameters(), lr=1e-3)
    >>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt.npz")
    >>> xpcnn.save_checkpoint(path, model, opt, epoch=4, extra={"note": "after warm-up"})
    >>> xpcnn.load_checkpoint(path, model, opt).epoch
    4
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be an xpcnn.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an xpcnn.optim optimizer or None, got {type(optimizer).__name__}")
    _check_scheduler(scheduler)
    data_order = DataOrder.of(model) if data_order is None else data_order
    if not isinstance(data_order, DataOrder):
        raise TypeError(f"data_order must be an xpcnn.DataOrder or None, got {type(data_order).__name__}")
    epoch = data_order.epoch if epoch is None else as_int(epoch, "epoch", minimum=0)
    extra = {} if extra is None else extra
    if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
        raise TypeError(f"extra must be a dict with string keys, got {type(extra).__name__}")

    arrays = {f"model/{name}": to_numpy(value) for name, value in model.state_dict().items()}
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": epoch,
        "model": {"arrays": list(model.state_dict()), "extra_state": dict(model.named_extra_state())},
        "data_order": data_order.state_dict(),
        "optimizer": None,
        "scheduler": None,
        "extra": {},
        "callbacks": [{"class": type(c).__name__, "state": _json_value(c.state_dict(), f"callbacks[{i}] state")}
                      for i, c in enumerate(_check_callbacks(callbacks))],
    }
    if optimizer is not None:
        state = optimizer.state_dict()
        entries = {}
        for index, entry in state["state"].items():
            entries[str(index)] = {}
            for key, value in entry.items():
                if array_api_compat.is_array_api_obj(value):
                    name = f"optimizer/{index}/{key}"
                    arrays[name] = to_numpy(value)
                    entries[str(index)][key] = {"array": name}
                else:
                    entries[str(index)][key] = {"value": _json_value(value, f"optimizer state {index}.{key}")}
        manifest["optimizer"] = {"class": type(optimizer).__name__, "param_groups": state["param_groups"],
                                 "state": entries}
    if scheduler is not None:
        manifest["scheduler"] = {"class": type(scheduler).__name__, "state": scheduler.state_dict()}
    for key, value in extra.items():
        if array_api_compat.is_array_api_obj(value):
            arrays[f"extra/{key}"] = to_numpy(value)
            manifest["extra"][key] = {"array": f"extra/{key}"}
        else:
            manifest["extra"][key] = {"value": _json_value(value, f"extra[{key!r}]")}
    text = json.dumps(manifest, allow_nan=True)
    arrays[MANIFEST] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)  # host: the manifest's bytes
    _write_atomically(path, arrays)


def load_checkpoint(path, model: Module, optimizer: Optimizer | None = None, scheduler=None, *,
                    data_order: DataOrder | None = None, callbacks=()) -> Checkpoint:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` (and the optimizer, scheduler and
    data order given); all or nothing.

    Parameters
    ----------
    path : str or os.PathLike
    model : Module
        Built as the saved one (same names, shapes and dtypes); its namespace and device may differ.
    optimizer : Optimizer, optional
        Of the saved class, built on ``model.parameters()``; its state is replaced.
    scheduler : LRScheduler or ReduceLROnPlateau, optional
        Of the saved class, built on ``optimizer``; its state is replaced.
    data_order : DataOrder, optional
        Loaded with the saved data order; by default the model's own (``DataOrder.of(model)``), so that the next
        :func:`xpcnn.fit` continues the saved run.
    callbacks : sequence of Callback
        The callbacks saved with ``callbacks=`` (same classes, same order), loaded with their state.

    Returns
    -------
    Checkpoint
        ``epoch``, ``data_order`` and ``extra``.

    Raises
    ------
    ValueError
        When the file is not an xpcnn checkpoint, or its state does not fit the model, optimizer or scheduler
        (another class, other names, shapes or dtypes); nothing is changed then.
    TypeError
        For a wrong type of argument.
    FileNotFoundError
        When ``path`` does not exist.

    Examples
    --------
    >>> import os, tempfile, xpcnn
    >>> from xpcnn import nn
    >>> model = nn.Sequential(nn.Linear(3, 2, seed=0))
    >>> opt = xpcnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
    >>> xpcnn.save_checkpoint(path, model, opt, extra={"best": 0.5})
    >>> state = xpcnn.load_checkpoint(path, model, opt)
    >>> state.epoch, state.extra
    (0, {'best': 0.5})
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be an xpcnn.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an xpcnn.optim optimizer or None, got {type(optimizer).__name__}")
    _check_scheduler(scheduler)
    if data_order is not None and not isinstance(data_order, DataOrder):
        raise TypeError(f"data_order must be an xpcnn.DataOrder or None, got {type(data_order).__name__}")
    manifest, arrays = _read(path)
    not_fitting = f"checkpoint {os.fspath(path)!r} does not fit"

    try:
        model_state = {name: arrays[f"model/{name}"] for name in manifest["model"]["arrays"]}
    except KeyError as error:
        raise ValueError(f"{os.fspath(path)!r} is a damaged xpcnn checkpoint: it lacks the array {error}") from None
    opt_state = None
    if optimizer is not None:
        saved = manifest["optimizer"]
        if saved is None:
            raise ValueError(f"{not_fitting}: it holds no optimizer state")
        if saved["class"] != type(optimizer).__name__:
            raise ValueError(f"{not_fitting}: it holds a {saved['class']} state, the optimizer is a "
                             f"{type(optimizer).__name__}")
        try:
            states = {int(index): {key: arrays[v["array"]] if "array" in v else v["value"]
                                   for key, v in entry.items()} for index, entry in saved["state"].items()}
        except KeyError as error:
            raise ValueError(f"{os.fspath(path)!r} is a damaged xpcnn checkpoint: it lacks the array {error}") from None
        opt_state = {"state": states, "param_groups": saved["param_groups"]}
    if scheduler is not None:
        saved = manifest["scheduler"]
        if saved is None:
            raise ValueError(f"{not_fitting}: it holds no scheduler state")
        if saved["class"] != type(scheduler).__name__:
            raise ValueError(f"{not_fitting}: it holds a {saved['class']} state, the scheduler is a "
                             f"{type(scheduler).__name__}")
    data_order = DataOrder.of(model) if data_order is None else data_order
    callbacks = _check_callbacks(callbacks)
    saved_callbacks = manifest.get("callbacks", [])
    if callbacks and [c["class"] for c in saved_callbacks] != [type(c).__name__ for c in callbacks]:
        raise ValueError(f"{not_fitting}: it holds the states of callbacks {[c['class'] for c in saved_callbacks]}, "
                         f"got {[type(c).__name__ for c in callbacks]}")

    # Everything restored, or on any error everything put back as it was.
    undo = [
        (model.load_state_dict, dict(model.state_dict())),
        (model.load_extra_state, dict(model.named_extra_state())),
        (data_order.load_state_dict, data_order.state_dict()),
    ]
    if optimizer is not None:
        undo.append((_restore_optimizer(optimizer), None))
    if scheduler is not None:
        undo.append((scheduler.load_state_dict, scheduler.state_dict()))
    undo += [(callback.load_state_dict, callback.state_dict()) for callback in callbacks]
    try:
        model.load_state_dict(model_state)
        model.load_extra_state(manifest["model"]["extra_state"])
        if optimizer is not None:
            optimizer.load_state_dict(opt_state)
        if scheduler is not None:
            scheduler.load_state_dict(manifest["scheduler"]["state"])
        data_order.load_state_dict(manifest["data_order"])
        for callback, saved in zip(callbacks, saved_callbacks):
            callback.load_state_dict(saved["state"])
    except (ValueError, TypeError, KeyError) as error:
        for restore, state in reversed(undo):
            restore(state)
        raise ValueError(f"{not_fitting}: {error}") from error
    extra = {key: arrays[v["array"]] if "array" in v else v["value"] for key, v in manifest["extra"].items()}
    return Checkpoint(manifest["epoch"], data_order, extra)


class BestCheckpoint(_Monitor, Callback):
    """A :func:`xpcnn.fit` callback that keeps the checkpoint of the best epoch by a metric.

    After every epoch whose ``monitor`` value improves on the best so far, :func:`save_checkpoint` writes the
    model, the optimizer, the scheduler and the data order to ``path`` (replacing the previous best atomically),
    with ``extra={"monitor": ..., "value": ...}``.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file (its folder must exist).
    monitor : str
        A key of the history: ``"val_loss"`` (default), ``"val_accuracy"``, ``"loss"``, ``"accuracy"``.
    mode : {'auto', 'min', 'max'}
        Whether lower or higher is better; ``'auto'``: higher for accuracies, lower otherwise.
    min_delta : float
        Smallest change that counts as an improvement, >= 0.

    Attributes
    ----------
    best : float or None
        The best value so far; ``best_epoch`` the run's epoch it was reached at. Both carry over between
        :func:`xpcnn.fit` calls, and a checkpoint keeps them when given ``callbacks=[...]``.

    Raises
    ------
    TypeError, ValueError
        For a bad argument; at the start of :func:`xpcnn.fit` when the monitored metric is not computed.

    Examples
    --------
    >>> import os, tempfile, numpy as np, xpcnn
    >>> from xpcnn import nn
    >>> x = np.ones((8, 3), np.float32); y = np.zeros((8, 1), np.float32)
    >>> model = nn.Sequential(nn.Linear(3, 1, seed=0))
    >>> best = xpcnn.BestCheckpoint(os.path.join(tempfile.mkdtemp(), "best.npz"), monitor="loss")
    >>> _ = xpcnn.fit(model, nn.MSELoss(), xpcnn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=3,
    ...               callbacks=[best], progress=False)
    >>> best.best_epoch
    3
    """

    def __init__(self, path, monitor: str = "val_loss", mode: str = "auto", min_delta: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"cannot keep checkpoints in {self.path!r}: the folder {directory!r} does not exist")
        self.best_epoch = None

    _state_names = ("best", "best_epoch")

    def on_train_begin(self, run: TrainingRun) -> None:
        self.check_monitored(run)

    def on_epoch_end(self, run: TrainingRun) -> None:
        value = run.logs[self.monitor]
        if self.improved(value):
            self.best, self.best_epoch = value, run.epoch
            save_checkpoint(self.path, run.model, run.optimizer, run.scheduler, epoch=run.epoch,
                            data_order=run.data_order, extra={"monitor": self.monitor, "value": value})


def _check_callbacks(callbacks) -> list:
    if isinstance(callbacks, Callback) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be a list of Callback objects, got {type(callbacks).__name__}")
    callbacks = list(callbacks)
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks[{i}] must be a Callback (its state is saved), got {type(callback).__name__}")
    return callbacks


def _check_scheduler(scheduler) -> None:
    if scheduler is not None and not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
        raise TypeError(f"scheduler must be an xpcnn.optim scheduler or None, got {type(scheduler).__name__}")


def _restore_optimizer(optimizer):
    """A function that puts the optimizer's current state back (its state and hyperparameters, exactly)."""
    saved_state = [dict(s) for s in optimizer.state]
    saved_attrs = dict(vars(optimizer))

    def restore(_):
        vars(optimizer).update(saved_attrs)
        optimizer.state = saved_state

    return restore


def _json_value(value, what: str):
    """``value`` checked to survive JSON unchanged (tuples become lists)."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be a JSON value (number, string, list, dict, None) or an array, got "
                        f"{type(value).__name__}: {error}") from None
    return json.loads(text)


def _write_atomically(path, arrays: dict) -> None:
    """``np.savez`` to a temporary file beside ``path``, flushed, then renamed over it (as :func:`xpcnn.save`)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save to {path!r}: the folder {directory!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".xpcnn-", suffix=".npz.tmp", dir=directory)
    os.chmod(tmp, 0o666 & ~_umask())  # the permissions of a file made by open(), not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # host: writing the file
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read(path):
    """(manifest, {name: host array}) of a checkpoint file; a ValueError naming the file when it is not one."""
    not_checkpoint = f"{os.fspath(path)!r} is not an xpcnn checkpoint (an .npz written by xpcnn.save_checkpoint)"
    try:
        data = np.load(path, allow_pickle=False)  # host: reading the file
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{not_checkpoint}: {error}") from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{not_checkpoint}: it holds a single array")
    try:
        with data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{not_checkpoint}: {error}") from error
    if MANIFEST not in arrays:
        raise ValueError(f"{not_checkpoint}: it has no manifest (weights written by xpcnn.save load with xpcnn.load)")
    try:
        manifest = json.loads(arrays.pop(MANIFEST).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{not_checkpoint}: its manifest is not JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{not_checkpoint}: its manifest is not an xpcnn checkpoint's")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{not_checkpoint}: format version {manifest.get('version')!r}, this xpcnn reads {VERSION}")
    return manifest, arrays

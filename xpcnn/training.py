"""Mini-batch training, evaluation and prediction for any :class:`~xpcnn.nn.Module`.

The data must already be in the model's namespace and on its device (move it once, before ``fit``): batches are
taken on the device with ``xp.take``, the shuffling permutation is made on the device from xpcnn's seeded
generator, and running loss and accuracy stay device arrays. The only device-to-host reads are the progress bar's
refreshes (at most a few per second) and one per epoch for the history.
"""

from __future__ import annotations

import time

import array_api_compat

from ._random import uniform
from ._validation import as_bool, as_int, namespace_and_device
from .functional.losses import check_class_range
from .nn.losses import CrossEntropyLoss, _Loss
from .nn.module import Module
from .optim import Optimizer

__all__ = ["fit", "evaluate", "predict"]


def fit(model, loss_fn, optimizer, x, y, *, epochs=1, batch_size=32, validation_data=None, shuffle=True, seed=0,
        progress=True):
    """Train ``model`` on (x, y) for ``epochs`` passes of mini-batches.

    Returns the history: ``{"loss": [...], "accuracy": [...], "val_loss": [...], "val_accuracy": [...]}``, one value
    per epoch (accuracy only for :class:`~xpcnn.nn.CrossEntropyLoss`, validation only with ``validation_data``).
    The loss is the criterion's over the whole epoch: the mean over all samples for ``reduction="mean"``, their sum
    for ``"sum"`` (whatever the batch size). ``progress`` shows a tqdm bar with the running loss and accuracy.
    The model is left in the mode (train or eval) it was in.

    Raises
    ------
    TypeError, ValueError
        For anything malformed — the model, loss, optimizer, data, ``validation_data``, ``epochs``, ``batch_size``,
        ``seed`` — before the first update changes the model.
    """
    xp, device = _check_data(model, x, y, batch_size)
    _check_criterion(loss_fn)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an xpcnn.optim optimizer, got {type(optimizer).__name__}")
    epochs, seed = as_int(epochs, "epochs", minimum=0), as_int(seed, "seed")
    shuffle, progress = as_bool(shuffle, "shuffle"), as_bool(progress, "progress")
    batch_size = as_int(batch_size, "batch_size")
    was_training = model.training
    if validation_data is not None:
        _check_validation_data(model, loss_fn, validation_data, x)
    n = x.shape[0]
    classify = isinstance(loss_fn, CrossEntropyLoss)
    step_loss, check_targets = _checking_targets_once(xp, loss_fn, y)
    history = {"loss": [], **({"accuracy": []} if classify else {})}
    if validation_data is not None:
        history.update(val_loss=[], **({"val_accuracy": []} if classify else {}))
    try:
        _fit_epochs(model, optimizer, x, y, xp, device, epochs, batch_size, validation_data, shuffle, seed, progress,
                    loss_fn, step_loss, check_targets, classify, history)
    finally:
        model.train(was_training)
    return history


def _fit_epochs(model, optimizer, x, y, xp, device, epochs, batch_size, validation_data, shuffle, seed, progress,
                loss_fn, step_loss, check_targets, classify, history):
    n = x.shape[0]
    for epoch in range(epochs):
        model.train()
        order = xp.argsort(uniform(xp, (n,), seed=seed, stream=epoch, device=device)) if shuffle else None
        batches = _batches(xp, n, batch_size, order, device)
        bar = _progress(progress, len(batches), f"epoch {epoch + 1}/{epochs}")
        loss_sum, correct, seen, shown = 0.0, 0, 0, time.monotonic()
        for index in batches:
            xb, yb = xp.take(x, index, axis=0), xp.take(y, index, axis=0)
            optimizer.zero_grad()
            out = model.forward(xb)
            check_targets(out)
            loss = step_loss(out, yb)
            model.backward(step_loss.backward(1.0), input_grad=False)
            optimizer.step()
            loss_sum = loss_sum + _batch_total(loss, index.shape[0], loss_fn.reduction)
            if classify:
                correct = correct + _correct(xp, out, yb)
            seen += index.shape[0]
            if bar is not None:
                bar.update(1)
                if time.monotonic() - shown > 0.5 or seen == n:  # the only per-step sync: the display
                    bar.set_postfix(_postfix(loss_sum, correct, seen, classify, loss_fn.reduction), refresh=False)
                    shown = time.monotonic()
        if bar is not None:
            bar.close()
        history["loss"].append(_dataset_loss(loss_sum, n, loss_fn.reduction))
        if classify:
            history["accuracy"].append(int(correct) / n)
        if validation_data is not None:
            val_loss, val_accuracy = evaluate(model, loss_fn, *validation_data, batch_size=batch_size)
            history["val_loss"].append(val_loss)
            if classify:
                history["val_accuracy"].append(val_accuracy)


def evaluate(model, loss_fn, x, y, *, batch_size=256):
    """(loss, accuracy) of ``model`` in eval mode; accuracy is None unless ``loss_fn`` is cross-entropy.

    The loss is the criterion's over all of (x, y): the mean over every sample for ``reduction="mean"``, the sum
    for ``"sum"``, whatever ``batch_size``. The model is left in the mode it was in.
    """
    xp, device = _check_data(model, x, y, batch_size)
    _check_criterion(loss_fn)
    was_training = model.training
    model.eval()
    try:
        classify = isinstance(loss_fn, CrossEntropyLoss)
        step_loss, check_targets = _checking_targets_once(xp, loss_fn, y)
        loss_sum, correct = 0.0, 0
        for index in _batches(xp, x.shape[0], batch_size, None, device):
            yb = xp.take(y, index, axis=0)
            out = model.forward(xp.take(x, index, axis=0))
            check_targets(out)
            loss_sum = loss_sum + _batch_total(step_loss(out, yb), index.shape[0], loss_fn.reduction)
            if classify:
                correct = correct + _correct(xp, out, yb)
    finally:
        model.train(was_training)
    n = x.shape[0]
    return _dataset_loss(loss_sum, n, loss_fn.reduction), (int(correct) / n if classify else None)


def predict(model, x, *, batch_size=256):
    """``model``'s outputs for x in eval mode, batch by batch, concatenated (on x's device). The model is left in
    the mode it was in."""
    _check_model(model)
    xp, device = namespace_and_device(x=x)
    _check_samples(x, "x")
    batch_size = as_int(batch_size, "batch_size", minimum=1)
    model.check_input(x)
    was_training = model.training
    model.eval()
    try:
        if x.shape[0] == 0:
            return model.forward(x)
        batches = _batches(xp, x.shape[0], batch_size, None, device)
        return xp.concat([model.forward(xp.take(x, index, axis=0)) for index in batches], axis=0)
    finally:
        model.train(was_training)


def _batch_total(loss, count: int, reduction: str):
    """A batch's share of the data set's loss: its sum (the mean times the batch's size for ``"mean"``)."""
    return loss * count if reduction == "mean" else loss


def _dataset_loss(total, n: int, reduction: str) -> float:
    """The data set's loss from the sum of its batches' totals (one host read)."""
    return float(total) / n if reduction == "mean" else float(total)


def _checking_targets_once(xp, loss_fn, y):
    """(the loss to call at every step, a function to call with each step's output). A checking cross-entropy
    becomes one that does not check (its check reads the targets, a device sync on a GPU), and the function checks
    all of y against the output's class count on its first call; other losses are used as they are."""
    if not (isinstance(loss_fn, CrossEntropyLoss) and loss_fn.check_targets):
        return loss_fn, lambda out: None
    pending = [True]

    def check_targets(out):
        if pending:
            check_class_range(xp, y, out.shape[1])
            pending.clear()

    return CrossEntropyLoss(loss_fn.reduction, check_targets=False), check_targets


def _correct(xp, out, y):
    """Number of rows whose highest score is at the target class (a 0-d device array: no sync)."""
    return xp.sum(xp.astype(xp.argmax(out, axis=1) == y, xp.int64))


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
    first sample goes through the model (in eval mode, which changes no state) and the loss."""
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
        first = xp.arange(1, dtype=xp.int64, device=array_api_compat.device(x_val))
        out = model.forward(xp.take(x_val, first, axis=0))
        check = isinstance(loss_fn, CrossEntropyLoss)
        probe = CrossEntropyLoss(loss_fn.reduction, check_targets=False) if check else loss_fn
        probe(out, xp.take(y_val, first, axis=0))
        if check and loss_fn.check_targets:
            check_class_range(xp, y_val, out.shape[1])
    except (ValueError, TypeError) as error:
        raise type(error)(f"validation_data does not fit the model and loss: {error}") from error
    finally:
        model.train(was_training)


def _batches(xp, n, batch_size, order, device):
    """Index arrays (on the device) of consecutive batches, in ``order`` when given."""
    order = xp.arange(n, dtype=xp.int64, device=device) if order is None else order
    return [order[start : min(start + batch_size, n)] for start in range(0, n, batch_size)]


def _postfix(loss_sum, correct, seen, classify, reduction):
    postfix = {"loss": f"{_dataset_loss(loss_sum, seen, reduction):.4f}"}
    if classify:
        postfix["acc"] = f"{int(correct) / seen:.4f}"
    return postfix


def _progress(enabled, total, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)

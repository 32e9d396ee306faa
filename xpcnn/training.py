"""Mini-batch training, evaluation and prediction for any :class:`~xpcnn.nn.Module`.

The data must already be in the model's namespace and on its device (move it once, before ``fit``): batches are
taken on the device with ``xp.take``, the shuffling permutation is made on the device from xpcnn's seeded
generator, and running loss and accuracy stay device arrays. The only device-to-host reads are the progress bar's
refreshes (at most a few per second) and one per epoch for the history.
"""

from __future__ import annotations

import time

from ._random import uniform
from ._validation import namespace_and_device
from .functional.losses import check_class_range
from .nn.losses import CrossEntropyLoss

__all__ = ["fit", "evaluate", "predict"]


def fit(model, loss_fn, optimizer, x, y, *, epochs=1, batch_size=32, validation_data=None, shuffle=True, seed=0,
        progress=True):
    """Train ``model`` on (x, y) for ``epochs`` passes of mini-batches.

    Returns the history: ``{"loss": [...], "accuracy": [...], "val_loss": [...], "val_accuracy": [...]}``, one value
    per epoch (accuracy only for :class:`~xpcnn.nn.CrossEntropyLoss`, validation only with ``validation_data``).
    ``progress`` shows a tqdm bar with the running loss and accuracy.
    """
    xp, device = _check_data(model, x, y, batch_size)
    n = x.shape[0]
    classify = isinstance(loss_fn, CrossEntropyLoss)
    step_loss, check_targets = _checking_targets_once(xp, loss_fn, y)
    history = {"loss": [], **({"accuracy": []} if classify else {})}
    if validation_data is not None:
        history.update(val_loss=[], **({"val_accuracy": []} if classify else {}))
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
            loss_sum = loss_sum + loss * index.shape[0]
            if classify:
                correct = correct + _correct(xp, out, yb)
            seen += index.shape[0]
            if bar is not None:
                bar.update(1)
                if time.monotonic() - shown > 0.5 or seen == n:  # the only per-step sync: the display
                    bar.set_postfix(_postfix(loss_sum, correct, seen, classify), refresh=False)
                    shown = time.monotonic()
        if bar is not None:
            bar.close()
        history["loss"].append(float(loss_sum) / n)
        if classify:
            history["accuracy"].append(int(correct) / n)
        if validation_data is not None:
            val_loss, val_accuracy = evaluate(model, loss_fn, *validation_data, batch_size=batch_size)
            history["val_loss"].append(val_loss)
            if classify:
                history["val_accuracy"].append(val_accuracy)
    return history


def evaluate(model, loss_fn, x, y, *, batch_size=256):
    """(mean loss, accuracy) of ``model`` in eval mode; accuracy is None unless ``loss_fn`` is cross-entropy."""
    xp, device = _check_data(model, x, y, batch_size)
    model.eval()
    classify = isinstance(loss_fn, CrossEntropyLoss)
    step_loss, check_targets = _checking_targets_once(xp, loss_fn, y)
    loss_sum, correct = 0.0, 0
    for index in _batches(xp, x.shape[0], batch_size, None, device):
        yb = xp.take(y, index, axis=0)
        out = model.forward(xp.take(x, index, axis=0))
        check_targets(out)
        loss_sum = loss_sum + step_loss(out, yb) * index.shape[0]
        if classify:
            correct = correct + _correct(xp, out, yb)
    n = x.shape[0]
    return float(loss_sum) / n, (int(correct) / n if classify else None)


def predict(model, x, *, batch_size=256):
    """``model``'s outputs for x in eval mode, batch by batch, concatenated (on x's device)."""
    xp, device = namespace_and_device(x=x)
    model.eval()
    model.check_input(x)
    if x.shape[0] == 0:
        return model.forward(x)
    outs = [model.forward(xp.take(x, index, axis=0)) for index in _batches(xp, x.shape[0], batch_size, None, device)]
    return xp.concat(outs, axis=0)


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


def _check_data(model, x, y, batch_size):
    xp, device = namespace_and_device(x=x, y=y)
    model.check_input(x)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one sample, got 0")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return xp, device


def _batches(xp, n, batch_size, order, device):
    """Index arrays (on the device) of consecutive batches, in ``order`` when given."""
    order = xp.arange(n, dtype=xp.int64, device=device) if order is None else order
    return [order[start : min(start + batch_size, n)] for start in range(0, n, batch_size)]


def _postfix(loss_sum, correct, seen, classify):
    postfix = {"loss": f"{float(loss_sum) / seen:.4f}"}
    if classify:
        postfix["acc"] = f"{int(correct) / seen:.4f}"
    return postfix


def _progress(enabled, total, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)

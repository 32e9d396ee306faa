"""One data-parallel replica: a copy of the model and its optimizer, its own access to the data, and its rank.

Every method the driver calls takes ``update`` first: None, or ``(gradient, epoch_metric)``: the reduced gradient
of the previous step (a list, one array or None per parameter; or None), applied with the replica's optimizer
(and followed by a scheduler's per-batch step), then, when ``epoch_metric`` is not None, the scheduler's step at
the end of an epoch (ReduceLROnPlateau's metric) — all before anything else, so that a step costs one round trip
when nothing is exchanged. Each returns a message of :mod:`._exchange` (``("done", result)``,
``("exchange", ...)`` or ``("error", exception)``): errors of the model or the data travel as messages, so that
an exception from the transport itself means a lost replica.
"""

from __future__ import annotations

import copy
import hashlib
import math

import array_api_compat

from .._host import from_numpy, to_numpy
from .._validation import namespace_and_device
from ..nn.losses import CrossEntropyLoss, MSELoss
from ..optim import ReduceLROnPlateau
from ..training import _hits
from ._data import Samples, batch_bounds, epoch_order, shard_bounds
from ._exchange import Conversation, InlineConversation, fresh
from ._layers import ShardContext, dropout_calls, prepare, set_dropout_calls

__all__ = ["Replica"]


def per_sample_size(loss_fn, out) -> int:
    """How many of the criterion's terms (rows) one sample contributes: its ``"mean"`` divides by this times N
    (cross-entropy: the positions of (N, C, d1, ...) outputs, when no target is weighted or ignored)."""
    return math.prod(out.shape[1:] if isinstance(loss_fn, MSELoss) else out.shape[2:])


def summing(loss_fn):
    """The criterion with ``reduction="sum"`` and the same options (class weights, ignore_index, label smoothing),
    targets not checked (the driver checked them once)."""
    if isinstance(loss_fn, CrossEntropyLoss):
        return CrossEntropyLoss("sum", check_targets=False, weight=fresh(loss_fn.weight),
                                ignore_index=loss_fn.ignore_index, label_smoothing=loss_fn.label_smoothing)
    return type(loss_fn)("sum")


class Replica:
    """Rank ``rank`` of ``replicas``: built on a worker (a Dask actor) or in the driver's process."""

    def __init__(self, model, optimizer, scheduler, loss_fn, config: dict, rank: int, replicas: int, snapshot=None):
        self.model, self.optimizer, self.rank, self.replicas = model, optimizer, rank, replicas
        self.scheduler, self.scheduler_step = scheduler, config["scheduler_step"]
        self.config = config
        self.reduction = loss_fn.reduction
        self.classify = isinstance(loss_fn, CrossEntropyLoss)
        self.loss_fn = summing(loss_fn)
        self.ignore_index = loss_fn.ignore_index if self.classify else None
        self.global_denominator = config["global_denominator"]
        _copy_arrays(model, optimizer)
        params = model.parameters()
        self.xp, self.device = namespace_and_device(model=params[0].data)
        self.conversation = Conversation()
        self.context = ShardContext(self.conversation, replicas)
        exchanges = prepare(model, self.context) or self.global_denominator
        if not exchanges or replicas == 1:  # nothing to exchange, or nobody to exchange with: no step thread
            self.conversation = self.context.conversation = InlineConversation(solo=exchanges)
        self.train = Samples(config["data"], self.xp, self.device)
        self.val = Samples(config["validation"], self.xp, self.device) if config["validation"] else None
        self._order = (None, None)
        if snapshot is not None:
            self._restore(snapshot)

    # -- what the driver calls --------------------------------------------------------------------------------------

    def step(self, update, epoch: int, batch: int):
        """Apply ``update``; start global batch ``batch`` of ``epoch``: forward and backward of this replica's
        shard. Ends (after any exchanges) with ``("done", (grads, loss total, correct count or None))``."""
        return self._run(update, lambda: self._step(epoch, batch))

    def resume(self, answer):
        """Continue the step with the reduced answer of an exchange."""
        try:
            return self.conversation.resume(tuple(_fresh_tree(answer)))
        except Exception as error:  # noqa: BLE001
            return ("error", error)

    def evaluate(self, update):
        """Apply ``update``; (loss total, correct) of this replica's slice of the validation set, in eval mode."""
        return self._run(update, self._evaluate)

    def state(self, update):
        """Apply ``update``; the model's state dict, the optimizer's, and the dropout counters (host arrays)."""
        return self._run(update, self._state)

    def digest(self, update):
        """Apply ``update``; a SHA-256 of every parameter, buffer, dropout counter, the learning rate and the
        scheduler's state (to check replicas agree)."""
        return self._run(update, self._digest)

    def abort(self):
        self.conversation.abort()
        return ("done", None)

    # -- the work ---------------------------------------------------------------------------------------------------

    def _run(self, update, job):
        try:
            self._apply(update)
        except Exception as error:  # noqa: BLE001
            return ("error", error)
        return self.conversation.start(job)

    def _apply(self, update) -> None:
        if update is None:
            return
        grads, epoch_metric = update
        if grads is not None:
            self.optimizer.zero_grad()
            for p, g in zip(self.model.parameters(), grads):
                p.grad = None if g is None else fresh(g)
            self.optimizer.step()
            self.optimizer.zero_grad()
            if self.scheduler_step == "batch":
                self.scheduler.step()
        if epoch_metric is not None and self.scheduler_step == "epoch":
            if isinstance(self.scheduler, ReduceLROnPlateau):
                self.scheduler.step(epoch_metric)
            else:
                self.scheduler.step()

    def _order_for(self, epoch: int):
        if self._order[0] != epoch:
            c = self.config
            self._order = (epoch, epoch_order(self.xp, self.train.n, c["seed"], epoch, c["shuffle"], self.device))
        return self._order[1]

    def _step(self, epoch: int, batch: int):
        start, stop = batch_bounds(self.train.n, self.config["batch_size"])[batch]
        lo, hi = shard_bounds(stop - start, self.replicas, self.rank)
        index = self._order_for(epoch)[start + lo : start + hi]
        xb, yb = self.train.rows(index)
        self.context.row_offset = lo
        self.model.train()
        self.model.zero_grad()
        out = self.model.forward(xb)
        total = self.loss_fn(out, yb)
        denominator, weight = self._denominator(out, stop - start, whole_batch=True)
        scale = 1.0 / denominator if self.reduction == "mean" else 1.0
        self.model.backward(self.loss_fn.backward(scale), input_grad=False)
        grads = [p.grad for p in self.model.parameters()]
        self.model.zero_grad()
        return (grads, total, denominator, weight, *self._hits(out, yb))

    def _denominator(self, out, samples: int, whole_batch: bool):
        """(what a ``"mean"`` loss over these ``samples`` divides by, the weight :func:`xpcnn.fit`'s history gives
        them; None, None for ``"sum"``), read before the backward pass takes the loss's cache. ``whole_batch``:
        for this replica's shard of a global batch (the rows of the global batch, or the cross-entropy's target
        weights or kept targets summed over it by an exchange); else for these samples alone."""
        if self.reduction != "mean":
            return None, None
        own = getattr(self.loss_fn._cache, "denominator", None) if self.classify else None
        if whole_batch and self.global_denominator:
            (denominator,) = self.conversation.exchange("sum", (own,))
        elif whole_batch or own is None:
            denominator = samples * per_sample_size(self.loss_fn, out)
        else:
            denominator = own
        return denominator, (denominator if self.classify else samples)

    def _hits(self, out, yb):
        return _hits(self.xp, out, yb, self.ignore_index) if self.classify else (None, None)

    def _evaluate(self):
        """Per chunk of ``batch_size`` validation samples (:func:`xpcnn.evaluate`'s batches), this replica's
        contiguous shard of it, in eval mode: ``[(loss, denominator, weight, hits, counted), ...]`` (the driver
        weighs the chunks as :func:`xpcnn.evaluate` does). A batch norm without running statistics normalises with
        the chunk's statistics, synchronised, as in one process."""
        self.model.eval()
        parts = []
        try:
            for start, stop in batch_bounds(self.val.n, self.config["batch_size"]):
                lo, hi = shard_bounds(stop - start, self.replicas, self.rank)
                xb, yb = self.val.range(start + lo, start + hi)
                self.context.row_offset = lo
                out = self.model.forward(xb)
                loss = self.loss_fn(out, yb)
                parts.append((loss, *self._denominator(out, hi - lo, whole_batch=False), *self._hits(out, yb)))
        finally:
            self.model.train()
        return parts

    def _state(self):
        model = {name: to_numpy(value).copy() for name, value in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        opt_state = {i: {k: (to_numpy(v).copy() if array_api_compat.is_array_api_obj(v) else v) for k, v in s.items()}
                     for i, s in opt["state"].items()}
        return {"model": model, "optimizer": {"state": opt_state, "param_groups": opt["param_groups"]},
                "dropout_calls": dropout_calls(self.model),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def _digest(self):
        h = hashlib.sha256()
        for name, value in self.model.state_dict().items():
            h.update(name.encode())
            if value is not None:
                h.update(to_numpy(value).tobytes())
        h.update(repr(sorted(dropout_calls(self.model).items())).encode())
        h.update(repr((self.optimizer.lr, None if self.scheduler is None else self.scheduler.state_dict())).encode())
        return h.hexdigest()

    def _restore(self, snapshot) -> None:
        xp, device = self.xp, self.device
        self.model.load_state_dict({k: from_numpy(to_numpy(v), xp, device) for k, v in snapshot["model"].items()})
        set_dropout_calls(self.model, snapshot["dropout_calls"])
        opt = snapshot["optimizer"]
        state = {int(i): {k: (from_numpy(to_numpy(v), xp, device) if array_api_compat.is_array_api_obj(v) else v)
                          for k, v in s.items()} for i, s in opt["state"].items()}
        self.optimizer.load_state_dict({"state": state, "param_groups": [dict(g) for g in opt["param_groups"]]})
        if self.scheduler is not None and snapshot.get("scheduler") is not None:
            self.scheduler.load_state_dict(copy.deepcopy(snapshot["scheduler"]))


def _add(total, value):
    return value if total is None else total + value


def _copy_arrays(model, optimizer) -> None:
    """Replace every array of the unpickled model and optimizer by a fresh copy (see :func:`fresh`)."""
    for name, value in model.state_dict().items():
        if value is not None:
            model._assign(name, fresh(value))
    for state in optimizer.state:
        for key, value in state.items():
            if array_api_compat.is_array_api_obj(value):
                state[key] = fresh(value)


def _fresh_tree(answer):
    """The exchange's answer with its arrays copied (see :func:`fresh`); numbers as they are."""
    for item in answer:
        yield fresh(item) if array_api_compat.is_array_api_obj(item) else item

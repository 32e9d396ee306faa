"""One data-parallel replica: a copy of the model and its optimizer, its own access to the data, and its rank.

Every method the driver calls takes ``update`` first: the reduced gradient of the previous step (a list, one array
or None per parameter), applied with the replica's optimizer before anything else, so that a step costs one round
trip when nothing is exchanged. Each returns a message of :mod:`._exchange` (``("done", result)``,
``("exchange", ...)`` or ``("error", exception)``): errors of the model or the data travel as messages, so that
an exception from the transport itself means a lost replica.
"""

from __future__ import annotations

import hashlib

import array_api_compat

from .._host import from_numpy, to_numpy
from .._validation import namespace_and_device
from ..nn.losses import CrossEntropyLoss, MSELoss
from ..training import _hits
from ._data import Samples, batch_bounds, epoch_order, shard_bounds
from ._exchange import Conversation, InlineConversation, fresh
from ._layers import ShardContext, dropout_calls, prepare, set_dropout_calls

__all__ = ["Replica"]


def per_sample_size(loss_fn, out) -> int:
    """How many of the criterion's terms one sample contributes (its ``"mean"`` divides by this times N)."""
    if isinstance(loss_fn, MSELoss):
        size = 1
        for d in out.shape[1:]:
            size *= d
        return size
    return 1


class Replica:
    """Rank ``rank`` of ``replicas``: built on a worker (a Dask actor) or in the driver's process."""

    def __init__(self, model, optimizer, loss_fn, config: dict, rank: int, replicas: int, snapshot=None):
        self.model, self.optimizer, self.rank, self.replicas = model, optimizer, rank, replicas
        self.config = config
        self.reduction = loss_fn.reduction
        self.classify = isinstance(loss_fn, CrossEntropyLoss)
        self.loss_fn = CrossEntropyLoss("sum", check_targets=False) if self.classify else type(loss_fn)("sum")
        _copy_arrays(model, optimizer)
        params = model.parameters()
        self.xp, self.device = namespace_and_device(model=params[0].data)
        self.conversation = Conversation()
        self.context = ShardContext(self.conversation, replicas)
        exchanges = prepare(model, self.context)
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
        """Apply ``update``; a SHA-256 of every parameter, buffer and dropout counter (to check replicas agree)."""
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
        self.optimizer.zero_grad()
        for p, g in zip(self.model.parameters(), update):
            p.grad = None if g is None else fresh(g)
        self.optimizer.step()
        self.optimizer.zero_grad()

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
        per_sample = per_sample_size(self.loss_fn, out)
        scale = 1.0 / ((stop - start) * per_sample) if self.reduction == "mean" else 1.0
        self.model.backward(self.loss_fn.backward(scale), input_grad=False)
        grads = [p.grad for p in self.model.parameters()]
        self.model.zero_grad()
        if self.reduction == "mean" and per_sample != 1:
            total = total / per_sample
        return grads, total, (_hits(self.xp, out, yb, None)[0] if self.classify else None)

    def _evaluate(self):
        n = self.val.n
        lo, hi = shard_bounds(n, self.replicas, self.rank)
        chunk = self.config["batch_size"]
        self.model.eval()
        total, correct = None, None
        try:
            for start in range(lo, hi, chunk):
                xb, yb = self.val.range(start, min(start + chunk, hi))
                out = self.model.forward(xb)
                loss = self.loss_fn(out, yb)
                per_sample = per_sample_size(self.loss_fn, out)
                loss = loss / per_sample if self.reduction == "mean" and per_sample != 1 else loss
                total = loss if total is None else total + loss
                if self.classify:
                    c = _hits(self.xp, out, yb, None)[0]
                    correct = c if correct is None else correct + c
        finally:
            self.model.train()
        return total, correct

    def _state(self):
        model = {name: to_numpy(value).copy() for name, value in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        opt_state = {i: {k: (to_numpy(v).copy() if array_api_compat.is_array_api_obj(v) else v) for k, v in s.items()}
                     for i, s in opt["state"].items()}
        return {"model": model, "optimizer": {"state": opt_state, "param_groups": opt["param_groups"]},
                "dropout_calls": dropout_calls(self.model)}

    def _digest(self):
        h = hashlib.sha256()
        for name, value in self.model.state_dict().items():
            h.update(name.encode())
            if value is not None:
                h.update(to_numpy(value).tobytes())
        h.update(repr(sorted(dropout_calls(self.model).items())).encode())
        return h.hexdigest()

    def _restore(self, snapshot) -> None:
        xp, device = self.xp, self.device
        self.model.load_state_dict({k: from_numpy(to_numpy(v), xp, device) for k, v in snapshot["model"].items()})
        set_dropout_calls(self.model, snapshot["dropout_calls"])
        opt = snapshot["optimizer"]
        state = {int(i): {k: (from_numpy(to_numpy(v), xp, device) if array_api_compat.is_array_api_obj(v) else v)
                          for k, v in s.items()} for i, s in opt["state"].items()}
        self.optimizer.load_state_dict({"state": state, "param_groups": [dict(g) for g in opt["param_groups"]]})


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

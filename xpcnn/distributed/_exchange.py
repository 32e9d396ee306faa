"""The replicas' one way of talking to each other: through the driver, in rank order.

A replica runs its part of a step in a thread of its own. Where the step needs something from every replica (a
synchronised batch norm's statistics), it calls :meth:`Conversation.exchange` with its contribution: the thread
posts the contribution and waits; the replica's method returns it to the driver, which gathers one contribution
per replica, reduces them (:func:`reduce`, in rank order: the same bits whatever the placement) and sends every
replica the same answer, which the waiting thread receives as ``exchange``'s return value. A step ends with a
``("done", result)`` message; a failure inside the step with ``("error", exception)``.

Messages, replica to driver::

    ("exchange", (op, contribution))      op one of REDUCTIONS
    ("done", result)
    ("error", exception)

Another transport (an allreduce through mpi4py, NCCL between CuPy replicas) would replace this class by one whose
``exchange`` reduces among the replicas directly, in the same fixed order, and the driver would only see "done".
"""

from __future__ import annotations

import queue
import threading

import array_api_compat

__all__ = ["Conversation", "InlineConversation", "reduce", "ordered_sum", "merge_moments", "fresh"]


class Aborted(Exception):
    """Raised in a replica's step thread when the driver gives the step up (a replica elsewhere was lost)."""


_ABORT = object()


class Conversation:
    """One replica's side of the exchanges of a step (see the module docstring)."""

    def __init__(self):
        self._inbox: queue.Queue = queue.Queue()
        self._outbox: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._thread is not None

    def start(self, job):
        """Run ``job()`` in a thread; return its first message (an exchange request, or how it ended)."""
        if self._thread is not None:
            raise RuntimeError("a replica's step started while the previous one is still waiting for an exchange")
        self._thread = threading.Thread(target=self._run, args=(job,), daemon=True, name="xpcnn-replica-step")
        self._thread.start()
        return self._next()

    def resume(self, answer):
        """Hand the reduced ``answer`` to the waiting step; return its next message."""
        if self._thread is None:
            raise RuntimeError("no step is waiting for an exchange")
        self._inbox.put(answer)
        return self._next()

    def abort(self) -> None:
        """End a step that waits for an exchange (it raises :class:`Aborted` in its thread)."""
        if self._thread is not None:
            self._inbox.put(_ABORT)
            self._thread.join()
            self._thread = None
            while not self._outbox.empty():
                self._outbox.get()

    def exchange(self, op: str, contribution):
        """Called from inside the step: post ``contribution`` for reduction ``op``; wait for the reduced answer."""
        self._outbox.put(("exchange", (op, contribution)))
        answer = self._inbox.get()
        if answer is _ABORT:
            raise Aborted("the driver gave this step up")
        return answer

    def _run(self, job) -> None:
        try:
            result = job()
        except Aborted:
            return
        except BaseException as error:  # noqa: BLE001 - handed to the driver, which raises it
            self._outbox.put(("error", error))
        else:
            self._outbox.put(("done", result))

    def _next(self):
        message = self._outbox.get()
        if message[0] != "exchange":
            self._thread.join()
            self._thread = None
        return message


class InlineConversation:
    """The step runs in the caller's thread, without the driver in the middle: for a model with nothing to exchange
    (an exchange is then a bug), or with ``solo`` for a lone replica, whose exchange is the reduction of its own
    contribution (the answer the driver would send, the same bits, without a round trip)."""

    active = False

    def __init__(self, solo: bool = False):
        self.solo = solo

    def start(self, job):
        try:
            return ("done", job())
        except Exception as error:  # noqa: BLE001 - handed to the driver, which raises it
            return ("error", error)

    def exchange(self, op, contribution):
        if self.solo:
            return reduce(op, [contribution])
        raise RuntimeError("this replica's model was prepared without exchanges, but a layer asked for one")

    def abort(self) -> None:
        pass


# -- the reductions, run on the driver ------------------------------------------------------------------------------


def fresh(a):
    """A copy of an array that arrived from elsewhere: a new, aligned allocation (NumPy's results can depend on the
    alignment of its input, and arrays unpickled from a message may be unaligned)."""
    if a is None:
        return None
    xp = array_api_compat.array_namespace(a)
    return xp.asarray(a, copy=True)


def ordered_sum(parts):
    """``((p0 + p1) + p2) + ...`` over the non-None parts, in the order given (rank order); None if all are None."""
    total = None
    for part in parts:
        if part is not None:
            part = fresh(part)
            total = part if total is None else total + part
    return total


def merge_moments(parts):
    """Merge per-replica per-channel moments ``(count, mean, var, residual)`` into ``(count, mean, var)`` of the
    whole batch, var biased. A shard's ``mean`` and ``var`` are the two-pass moments a single-process batch norm
    computes (``var = sum(c**2) / count`` with ``c = x - mean``), ``residual = sum(c)`` the rounding error of its
    mean times its count (None: taken as 0). In rank order::

        mean = (sum(count_i * mean_i) + sum(residual_i)) / count
        m2   = sum(count_i * var_i + 2 * d_i * residual_i + count_i * d_i**2),   d_i = mean_i - mean

    (the sum of squares about the global mean, exact in exact arithmetic; with the residuals, no error of a shard's
    rounded mean enters to first order, so the merge is as accurate as two passes over the whole batch), and
    ``var = m2 / count``. Shards of one sample give the single-process bits. Empty parts are skipped; a single
    non-empty part is returned as it came (a shard that is the whole batch normalises exactly as a single
    process); an empty batch gives 0."""
    parts = [(n, fresh(part_mean), fresh(part_var), fresh(residual)) for n, part_mean, part_var, residual in parts]
    full = [part for part in parts if part[0] > 0]
    if len(full) <= 1:
        return (full[0] if full else parts[0])[:3]
    count, total = 0, None
    for n, part_mean, _, residual in full:
        count += n
        total = part_mean * n if total is None else total + part_mean * n
    for _, _, _, residual in full:
        total = total if residual is None else total + residual
    mean = total / count
    m2 = None
    for n, part_mean, part_var, residual in full:
        d = part_mean - mean
        term = part_var * n if residual is None else part_var * n + 2.0 * d * residual
        term = term + d * d * n
        m2 = term if m2 is None else m2 + term
    return count, mean, m2 / count


REDUCTIONS = {"sum": lambda parts: tuple(ordered_sum(column) for column in zip(*parts)), "moments": merge_moments}


def reduce(op: str, contributions: list):
    """The answer every replica gets for one exchange: ``REDUCTIONS[op]`` over the contributions in rank order."""
    if op not in REDUCTIONS:
        raise ValueError(f"unknown exchange {op!r}; expected one of {sorted(REDUCTIONS)}")
    return REDUCTIONS[op](contributions)

"""Where the replicas live: in the driver's process (:class:`InProcess`, for tests and debugging) or as Dask actors,
one per worker (:class:`DaskActors`). Both give the driver the same three operations: build the replicas, call one
method on all of them (arguments per rank, results in rank order), and drop them."""

from __future__ import annotations

import pickle
import time

from .._validation import as_int
from ._replica import Replica

__all__ = ["InProcess", "DaskActors", "ReplicaLost", "backend_for"]


LIVENESS_POLL = 1.0  # seconds between checks that the replicas' workers are alive while a call is pending


class ReplicaLost(Exception):
    """A replica did not answer: its worker died, the connection broke, or the call timed out."""


class InProcess:
    """``replicas`` replicas in this process, called one after the other: the same steps as on a cluster, bit for
    bit, without one (pass it as ``client`` to :func:`xpcnn.distributed.fit`), for tests and debugging.

    Parameters
    ----------
    replicas : int
        W >= 1, the number of replicas (each with its own copy of the model, optimizer and scheduler).

    Raises
    ------
    ValueError, TypeError
        ``replicas`` below 1, or not an int.

    Examples
    --------
    >>> import numpy as np
    >>> import xpcnn.distributed as xd
    >>> from xpcnn import nn, optim
    >>> model = nn.Sequential(nn.Linear(4, 2, seed=0, dtype=np.float64))
    >>> x, y = np.random.default_rng(0).standard_normal((10, 4)), np.arange(10) % 2
    >>> history = xd.fit(xd.InProcess(3), model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1),
    ...                  (x, y), epochs=2, batch_size=4, progress=False)
    >>> sorted(history), len(history["loss"])
    (['accuracy', 'loss'], 2)
    """

    def __init__(self, replicas: int = 1):
        self.replicas = as_int(replicas, "replicas", minimum=1)
        self._handles = []

    def default_replicas(self) -> int:
        return self.replicas

    def build(self, blob: bytes, loss_fn, config, count: int, snapshot) -> None:
        self._handles = [_make_replica(blob, config, snapshot, loss_fn, rank, count) for rank in range(count)]

    def call(self, method: str, args_per_rank: list) -> list:
        return [getattr(h, method)(*args) for h, args in zip(self._handles, args_per_rank)]

    def drop(self) -> None:
        for h in self._handles:
            h.abort()
        self._handles = []


class DaskActors:
    """Replicas as Dask actors on a ``distributed.Client``'s workers, placed round-robin over the workers alive
    (sorted by address), so that a rebuilt set keeps its number of replicas after a worker is lost."""

    def __init__(self, client, timeout: float):
        self.client, self.timeout = client, timeout
        self._actors, self._futures, self._shared = [], [], []

    def workers(self) -> list:
        """The workers' addresses, asked of the scheduler now (``client.scheduler_info()`` returns a cache that the
        client's periodic refresh may have just replaced by one without the workers)."""
        identity = self.client.sync(self.client.scheduler.identity, n_workers=-1)
        return sorted(identity["workers"])

    def default_replicas(self) -> int:
        workers = self.workers()
        if not workers:
            raise ValueError("client has no workers: start some (LocalCluster(n_workers=...)) before fit")
        return len(workers)

    def build(self, blob: bytes, loss_fn, config, count: int, snapshot) -> None:
        try:
            self.client.wait_for_workers(1, timeout=self.timeout)
            workers = self.workers()
            # sent once to every worker, straight from the driver (not through the scheduler, not once per rank)
            shared = self.client.scatter([blob, config, snapshot], broadcast=True, direct=True, hash=False)
            futures = [
                self.client.submit(_make_replica, *shared, loss_fn, rank, count, actor=True,
                                   workers=[workers[rank % len(workers)]], allow_other_workers=True, pure=False)
                for rank in range(count)
            ]
            self._shared = shared
            self._futures = futures
            self._actors = [f.result(timeout=self.timeout) for f in futures]
        except Exception as error:  # noqa: BLE001 - any failure to place them is a lost replica
            raise ReplicaLost(f"could not build the replicas: {type(error).__name__}: {error}") from error

    def call(self, method: str, args_per_rank: list) -> list:
        try:
            pending = [getattr(actor, method)(*args) for actor, args in zip(self._actors, args_per_rank)]
            return [self._wait(p, method) for p in pending]
        except ReplicaLost:
            raise
        except Exception as error:  # noqa: BLE001 - the replicas' own errors come back as messages
            raise ReplicaLost(f"a replica was lost during {method}: {type(error).__name__}: {error}") from error

    def _wait(self, pending, method: str):
        """The call's result; a ReplicaLost as soon as the scheduler no longer lists a replica's worker (not
        after distributed's connection timeout), or after ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return pending.result(timeout=LIVENESS_POLL)
            except TimeoutError:
                alive = set(self.workers())
                lost = sorted({a._address for a in self._actors} - alive)
                if lost:
                    raise ReplicaLost(f"a replica was lost during {method}: worker {', '.join(lost)} left") from None
                if time.monotonic() > deadline:
                    raise ReplicaLost(f"a replica did not answer {method} within {self.timeout} s") from None

    def drop(self) -> None:
        actors, self._actors = self._actors, []
        for actor in actors:
            try:
                actor.abort().result(timeout=5)
            except Exception:  # noqa: BLE001,S110 - a dead replica has nothing to abort
                pass
        for future in self._futures + self._shared:
            future.release()
        self._futures, self._shared = [], []


def _make_replica(blob, config, snapshot, loss_fn, rank, count):
    """A replica, or (when building one fails: unreadable data, say) one that answers every call with that error,
    so that the driver raises it instead of taking it for a lost worker."""
    try:
        model, optimizer, scheduler = pickle.loads(blob)
        return Replica(model, optimizer, scheduler, loss_fn, config, rank, count, snapshot)
    except Exception as error:  # noqa: BLE001 - handed to the driver, which raises it
        return _FailedReplica(error)


class _FailedReplica:
    """Stands in for a replica that could not be built: every call answers with the error (methods spelled out:
    a Dask actor's proxy looks them up on the class)."""

    def __init__(self, error: Exception):
        self.error = error

    def _failed(self, *args):
        return ("error", self.error)

    step = resume = evaluate = state = digest = _failed

    def abort(self):
        return ("done", None)


def backend_for(client, timeout: float):
    if isinstance(client, InProcess):
        return client
    try:
        from distributed import Client
    except ImportError as error:
        raise TypeError("client must be an xpcnn.distributed.InProcess or a distributed.Client "
                        "(pip install 'xpcnn[distributed]')") from error
    if not isinstance(client, Client):
        raise TypeError(f"client must be a distributed.Client or an xpcnn.distributed.InProcess, "
                        f"got {type(client).__name__}")
    return DaskActors(client, timeout)

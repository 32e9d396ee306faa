"""Data-parallel training on dask.distributed (the ``distributed`` extra: ``pip install 'xpcnn[distributed]'``).

:func:`fit` trains one replica of the model per worker (Dask actors), each step's gradient that of the global batch:
the replicas recompute :func:`xpcnn.fit`'s shuffle, take contiguous slices of each global batch, return partial
sums of their samples' gradients, which the driver adds in rank order; every replica applies the same update.
Dropout masks are drawn by global position and batch norm statistics are synchronised over the global batch, so
a step equals the single-process one up to the order of its sums. :class:`InProcess` runs the same replicas in
the driver's process (tests, debugging). Checkpoints every K steps, and a lost worker is survived by rebuilding the
replicas on the workers left and resuming from the last snapshot.

How another transport would plug in: the replicas only talk through :class:`~._exchange.Conversation`
(``exchange(op, contribution) -> answer``, the driver reducing in rank order). An allreduce between the replicas
(mpi4py's ``Allreduce`` on host buffers, or NCCL between CuPy replicas under dask-cuda) would implement
``exchange`` directly, in the same fixed order, and reduce the gradients the same way, leaving the driver only
the step's start and end.
"""

from ._backends import InProcess
from ._fit import fit
from ._layers import GlobalDropout, SyncBatchNorm1d, SyncBatchNorm2d

__all__ = ["fit", "InProcess", "SyncBatchNorm1d", "SyncBatchNorm2d", "GlobalDropout"]

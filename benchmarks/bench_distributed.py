"""Data-parallel training throughput: :func:`xpcnn.fit` in one process against :func:`xpcnn.distributed.fit` on a
LocalCluster of 1 and of 2 worker processes (one thread each), the examples' networks, global batch 512.

    python benchmarks/bench_distributed.py                         # the digits LeNet
    python benchmarks/bench_distributed.py --network resnet        # the MNIST ResNet (synchronised batch norm)
    python benchmarks/bench_distributed.py --json results/distributed_numpy.json

A step is forward, cross-entropy, backward and an Adam update of the global batch (the same computation in every
contender: the first round's epoch loss is checked against one process's). The
contenders take turns, one epoch of ``--steps`` steps each per round; a distributed step's time is the time
between two steps' ends on the driver (``on_step``), the epoch's first step left out (it carries the replicas'
building); one process's is its epoch's time over its steps. Reported: median images/s, the speed-up over one
process with the BLAS's default threads (``vs_one_process``) and with one thread (``vs_one_thread``), each the
median over rounds of the ratio within each round, and the per-step overhead. One process runs twice:
with the BLAS's default threads and with one thread, as each worker has (the nanny sets ``OMP_NUM_THREADS=1``);
on a shared, loaded machine the two-thread run can collapse (threads waiting for each other's core).

* ``floor_ms``: a step of a one-parameter model on two samples per replica, the cost of the round trip, the
  driver's reduction and the messages alone;
* ``exchange_ms``: what one more exchange through the driver costs (a synchronised batch norm makes two per step
  and layer), from the same model with a batch norm (0 with one worker: a lone replica exchanges in place);
* ``overhead_ms``: a step's time minus the compute time of its largest shard, measured in the driver's process
  (``InProcess(1)`` on a batch of that size): what the cluster adds to the computation.

The second 2-worker cluster, ``cluster-2-malloc-kept``, replaces the nanny's ``MALLOC_TRIM_THRESHOLD_=65536``
(distributed's default in the workers' environment, which returns freed memory to the OS eagerly) by
:data:`WORKER_MALLOC`: each step's NumPy temporaries are then not faulted in again.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import common  # noqa: E402
from train_digits import lenet  # noqa: E402
from train_resnet import resnet  # noqa: E402

import xpcnn  # noqa: E402
import xpcnn.distributed as xd  # noqa: E402
from xpcnn import nn, optim  # noqa: E402

NETWORKS = {
    # name: (title, builder, image shape, default steps per round)
    "lenet": ("digits LeNet", lenet, (1, 8, 8), 8),
    "resnet": ("MNIST ResNet", resnet, (1, 28, 28), 3),
}
CLUSTERS = {  # name: (workers, keep the nanny's malloc settings)
    "cluster-1": (1, True),
    "cluster-2": (2, True),
    "cluster-2-malloc-kept": (2, False),
}
LOSS_RTOL = 1e-4
"""Relative tolerance of the check that the first round's epoch loss is one process's (the same computation; float32
sums in another order, and Adam's steps on gradients that are mostly rounding noise, move the weights apart)."""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def images(network, n, dtype):
    shape = NETWORKS[network][2]
    if network == "lenet":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images / 16.0).astype(dtype)[:, None]
        y = digits.target.astype(np.int64)
        reps = -(-n // len(x))
        return np.concatenate([x] * reps)[:n], np.concatenate([y] * reps)[:n]
    rng = np.random.default_rng(0)
    return rng.random((n, *shape), dtype=np.float32).astype(dtype), rng.integers(0, 10, n)


def new_model(network, dtype):
    model = NETWORKS[network][1](np, dtype=getattr(np, dtype))
    return model, optim.Adam(model.parameters(), lr=1e-3)


WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": 2**30, "MALLOC_MMAP_THRESHOLD_": 2**25}
"""glibc settings for the workers of ``cluster-2-malloc-kept``: freed memory is kept for the next step instead of
being returned to the OS (the nanny's default ``MALLOC_TRIM_THRESHOLD_=65536`` returns it eagerly, and every step
then faults its temporaries in again: the digits step in one process 29-38 ms, with the nanny's setting 57-61 ms).
Both are needed: setting the trim threshold alone also freezes glibc's mmap threshold at 128 KiB."""


def start_cluster(workers, malloc_trim=True):
    import dask
    from distributed import Client, LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    if not malloc_trim:  # dask.config.set merges dicts: a key left out stays, so the values are replaced
        environ.update(WORKER_MALLOC)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
    return cluster, Client(cluster)


def distributed_epoch(client, network, dtype, x, y, batch, seed):
    model, opt = new_model(network, dtype)
    ends = []
    history = xd.fit(client, model, nn.CrossEntropyLoss(), opt, (x, y), epochs=1, batch_size=batch, seed=seed,
                     progress=False, on_step=lambda step: ends.append(time.perf_counter()))
    return [1e3 * (b - a) for a, b in zip(ends, ends[1:])], history["loss"][0]


def one_thread():
    """The BLAS limited to one thread, as in the workers (the nanny sets OMP_NUM_THREADS=1 and its kin)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def one_process_epoch(network, dtype, x, y, batch, seed, threads=None):
    model, opt = new_model(network, dtype)
    start = time.perf_counter()
    with one_thread() if threads == 1 else contextlib.nullcontext():
        history = xpcnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=1, batch_size=batch, seed=seed,
                            progress=False)
    return 1e3 * (time.perf_counter() - start) / (len(x) // batch), history["loss"][0]


def floor_ms(client, replicas, steps=20, batch_norm=False):
    """Median step of a one-parameter model on two samples per replica; with ``batch_norm``, a batch norm after
    it, whose forward and backward passes exchange through the driver (two more round trips a step)."""
    nn.manual_seed(0)
    layers = [nn.Linear(1, 1, bias=False)] + ([nn.BatchNorm1d(1)] if batch_norm else [])
    model = nn.Sequential(*layers)
    n = 2 * replicas * (steps + 1)
    x, y = np.linspace(0, 1, n, dtype=np.float32)[:, None], np.zeros((n, 1), np.float32)
    ends = []
    xd.fit(client, model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.0), (x, y), batch_size=2 * replicas,
           shuffle=False, progress=False, on_step=lambda step: ends.append(time.perf_counter()))
    return statistics.median(1e3 * (b - a) for a, b in zip(ends, ends[1:]))


def shard_compute_ms(network, dtype, x, y, shard, repeats=3):
    """One process's step time on a batch of ``shard`` samples, through the replicas' own code (InProcess(1)),
    with one BLAS thread as in a worker."""
    times = []
    for _ in range(repeats):
        model, opt = new_model(network, dtype)
        ends = []
        with one_thread():
            xd.fit(xd.InProcess(1), model, nn.CrossEntropyLoss(), opt, (x[: shard * 4], y[: shard * 4]),
                   batch_size=shard, progress=False, on_step=lambda step: ends.append(time.perf_counter()))
        times += [1e3 * (b - a) for a, b in zip(ends, ends[1:])]
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(NETWORKS), action="append", default=None)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=None, help="steps per round (one epoch)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--cluster", choices=list(CLUSTERS), action="append", default=None,
                        help="the clusters to compare with one process (default: all)")
    parser.add_argument("--floor-steps", type=int, default=20, help="steps of the overhead floor's measurement")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core",
                 "distributed.worker"):  # the in-process scheduler's INFO lines would bury the table
        logging.getLogger(name).setLevel(logging.ERROR)
    batch, rows = args.batch_size, []
    clusters = {name: start_cluster(*CLUSTERS[name]) for name in dict.fromkeys(args.cluster or CLUSTERS)}
    try:
        floors = {name: floor_ms(client, len(client.scheduler_info()["workers"]), args.floor_steps)
                  for name, (_, client) in clusters.items()}
        exchange = {name: (floor_ms(client, len(client.scheduler_info()["workers"]), args.floor_steps, True)
                           - floors[name]) / 2 for name, (_, client) in clusters.items()}
        for network in dict.fromkeys(args.network or ["lenet"]):
            title, _, _, default_steps = NETWORKS[network]
            steps = args.steps or default_steps
            x, y = images(network, batch * steps, args.dtype)
            samples = {name: [] for name in ["one process", "one process, 1 thread", *clusters]}
            checked = False
            for round_ in range(args.rounds):
                ms, reference = one_process_epoch(network, args.dtype, x, y, batch, round_)
                samples["one process"].append(ms)
                samples["one process, 1 thread"].append(
                    one_process_epoch(network, args.dtype, x, y, batch, round_, threads=1)[0])
                for name, (_, client) in clusters.items():
                    step_ms, loss = distributed_epoch(client, network, args.dtype, x, y, batch, round_)
                    samples[name].append(statistics.median(step_ms) if step_ms else float("nan"))
                    if not checked:
                        assert abs(loss - reference) <= LOSS_RTOL * abs(reference), (
                            f"{name}: the epoch's loss {loss} is not one process's {reference}")
                checked = True
            base, base_1 = samples["one process"], samples["one process, 1 thread"]
            for name, times in samples.items():
                local = name.startswith("one process")
                workers = 1 if local else len(clusters[name][1].scheduler_info()["workers"])
                step = statistics.median(times)
                shard = -(-batch // workers)
                row = dict(network=network, contender=name, batch=batch, step_ms=round(step, 2),
                           images_per_s=round(batch / step * 1e3), vs_one_process=round(statistics.median(
                               b / t for b, t in zip(base, times)), 3),
                           vs_one_thread=round(statistics.median(b / t for b, t in zip(base_1, times)), 3),
                           samples_ms=[round(t, 2) for t in times])
                if not local:
                    compute = shard_compute_ms(network, args.dtype, x, y, shard, repeats=1 + (args.rounds > 1))
                    row.update(floor_ms=round(floors[name], 2), exchange_ms=round(exchange[name], 2),
                               shard_compute_ms=round(compute, 2),
                               overhead_ms=round(step - compute, 2))
                rows.append(row)
            print(f"{title}, global batch {batch}, {args.dtype}, {steps} steps a round, {args.rounds} rounds")
    finally:
        for cluster, client in clusters.values():
            client.close()
            cluster.close()
    common.print_table(rows, ["network", "contender", "step_ms", "images_per_s", "vs_one_process", "vs_one_thread",
                              "floor_ms",
                              "exchange_ms", "shard_compute_ms", "overhead_ms"])
    info = {**common.machine_info(), "cpu_model": cpu_model(), "load_average": os.getloadavg()}
    import distributed

    info["distributed"] = distributed.__version__
    print(f"CPU: {info['cpu_model']}, {info['cores']} cores, load average {info['load_average']}")
    if args.json:
        common.write_json(args.json, dict(benchmark="distributed", dtype=args.dtype, machine=info, rows=rows))
    return rows


if __name__ == "__main__":
    main()

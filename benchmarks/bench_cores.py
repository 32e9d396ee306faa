"""What a second core buys on this host: memory bandwidth, GEMM throughput, element-wise passes, xpcnn's batch
pieces in threads, and a whole ResNet training step (xpcnn and PyTorch, one thread against two).

    python benchmarks/bench_cores.py --json benchmarks/results/cores.json
    python benchmarks/bench_cores.py --tiny                        # the smoke test

Each row does the same total work twice, interleaved over ``--repeats`` rounds: once on one thread (``one_ms``),
once split in two halves on two threads (``two_ms``); ``speedup = one_ms / two_ms`` (the median over rounds of the
ratio within each round). 2.0 means the second core doubles the rate, 1.0 that it adds nothing. The kernels:

- ``copy``: ``copyto`` of float32 arrays of ``--copy-mib`` MiB each (the first rows: one that fits the caches,
  one that does not); GB/s counts the bytes read and written.
- ``multiply``: ``x * 1.5`` into a new array, x the size of a ResNet stage-1 activation (64 x 16 x 28 x 28).
- ``gemm``: 512 x 512 float32 products, BLAS limited to one thread per caller.
- ``conv 16@28 pieces``: xpcnn's conv2d forward + backward of the ResNet's 16-channel 3x3 layer (batch 64), the
  two halves of the batch on two threads (BLAS one thread each), against the whole batch on one.
- ``resnet step``: examples/train_resnet.py's network, batch 64, one training step: xpcnn with BLAS limited to
  one thread against BLAS's default (two), and PyTorch with ``torch.set_num_threads(1)`` against its default (two;
  timed one setting after the other, not interleaved: its thread pool is slow to take a change of size). Here
  ``two_ms`` runs the whole step (no halves): the speed-up is what the library's own threads give.

The threads release the GIL in NumPy's loops and in BLAS, so a kernel that is limited by the core's arithmetic
scales towards 2.0, one limited by the memory bandwidth the two cores share does not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import common  # noqa: E402

import xpcnn  # noqa: E402
from xpcnn import functional as F  # noqa: E402
from xpcnn import nn  # noqa: E402

COLUMNS = ["kernel", "size", "one_ms", "two_ms", "speedup", "one_rate", "two_rate", "unit"]


def _blas_limit(threads):
    """A context that limits BLAS to ``threads`` per caller (threadpoolctl), or does nothing without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - the bench extra installs it
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def _paired(one, two, repeats, settle):
    """Median ms of ``one()`` and ``two()`` (interleaved rounds) and the median within-round speed-up."""
    timings = common.time_interleaved({"one": one, "two": two}, repeats, lambda: None, settle_s=settle)
    ratio = common.paired_ratio(timings["one"], timings["two"])
    return timings["one"]["median_ms"], timings["two"]["median_ms"], ratio


def _halves(pool, work):
    """``work(0)`` and ``work(1)`` on two threads; returns when both are done."""
    list(pool.map(work, (0, 1)))


def copy_rows(pool, sizes_mib, repeats, settle):
    rows = []
    for mib in sizes_mib:
        n = mib * 2**18
        src = [np.ones(n, dtype=np.float32) for _ in range(2)]
        dst = [np.empty(n, dtype=np.float32) for _ in range(2)]
        reps = max(1, 256 // mib)

        def work(k):
            for _ in range(reps):
                np.copyto(dst[k], src[k])

        one, two, speedup = _paired(lambda: (work(0), work(1)), lambda: _halves(pool, work), repeats, settle)
        gb = 2 * 2 * reps * n * 4 / 1e9  # two halves, each read and written reps times
        rows.append(dict(kernel="copy", size=f"{mib} MiB", one_ms=one, two_ms=two, speedup=speedup,
                         one_rate=gb / one * 1e3, two_rate=gb / two * 1e3, unit="GB/s"))
    return rows


def multiply_row(pool, shape, repeats, settle):
    x = [np.ones(shape, dtype=np.float32) for _ in range(2)]

    def work(k):
        for _ in range(20):
            x[k] * 1.5

    one, two, speedup = _paired(lambda: (work(0), work(1)), lambda: _halves(pool, work), repeats, settle)
    gb = 2 * 20 * 2 * x[0].nbytes / 1e9
    return dict(kernel="multiply", size="x".join(map(str, shape)), one_ms=one, two_ms=two, speedup=speedup,
                one_rate=gb / one * 1e3, two_rate=gb / two * 1e3, unit="GB/s")


def gemm_row(pool, size, repeats, settle):
    a = np.ones((size, size), dtype=np.float32)

    def work(k):
        for _ in range(10):
            a @ a

    with _blas_limit(1):
        one, two, speedup = _paired(lambda: (work(0), work(1)), lambda: _halves(pool, work), repeats, settle)
    gflop = 2 * 10 * 2 * size**3 / 1e9
    return dict(kernel="gemm", size=f"{size}^3", one_ms=one, two_ms=two, speedup=speedup,
                one_rate=gflop / one * 1e3, two_rate=gflop / two * 1e3, unit="GFLOP/s")


def conv_row(pool, batch, channels, size, repeats, settle):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, channels, size, size), dtype=np.float32)
    w = rng.standard_normal((channels, channels, 3, 3), dtype=np.float32)
    half = batch // 2
    parts = (slice(0, half), slice(half, batch))

    def work(k):
        out, cache = F.conv2d_forward(x[parts[k], ...], w, padding=1)
        F.conv2d_backward(out, cache)

    with _blas_limit(1):
        one, two, speedup = _paired(lambda: (work(0), work(1)), lambda: _halves(pool, work), repeats, settle)
    return dict(kernel=f"conv {channels}@{size} pieces", size=f"batch {batch}", one_ms=one, two_ms=two,
                speedup=speedup, one_rate=batch / one * 1e3, two_rate=batch / two * 1e3, unit="images/s")


def resnet_rows(batch, image, repeats, settle):
    """The ResNet step, xpcnn (BLAS 1 vs default threads) and PyTorch (1 vs 2 threads)."""
    import bench_train
    import torch

    backend = common.Backend("numpy", None)
    model, net, optimizer, torch_optimizer = bench_train.networks("resnet", backend)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, image, image), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = nn.CrossEntropyLoss(check_targets=False)

    def ours():
        optimizer.zero_grad()
        loss_fn(model.forward(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()

    def theirs():
        torch_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        torch_optimizer.step()

    def ours_one():
        with _blas_limit(1):
            ours()

    def row(name, one, two, speedup):
        return dict(kernel=name, size=f"batch {batch}, {image}x{image}", one_ms=one, two_ms=two, speedup=speedup,
                    one_rate=batch / one * 1e3, two_rate=batch / two * 1e3, unit="images/s")

    rows = [row("resnet step, xpcnn", *_paired(ours_one, ours, repeats, settle))]
    # PyTorch's thread pool does not take a change of its size between rounds well (the two-thread rounds slowed
    # down by a third), so its two settings are timed one after the other: its default threads, then one.
    threads = torch.get_num_threads()
    two = common.time_interleaved({"two": theirs}, repeats, lambda: None, settle_s=settle)["two"]["median_ms"]
    torch.set_num_threads(1)
    try:
        one = common.time_interleaved({"one": theirs}, repeats, lambda: None, settle_s=settle)["one"]["median_ms"]
    finally:
        torch.set_num_threads(threads)
    rows.append(row("resnet step, torch", one, two, one / two))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--settle", type=float, default=0.2)
    parser.add_argument("--copy-mib", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--tiny", action="store_true", help="small sizes, one round, no settling (smoke test)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    path = common.output_path(args.json)
    if args.tiny:
        args.repeats, args.settle, args.copy_mib = 1, 0.0, [1]
    info = common.machine_info()
    print(f"# what the second core buys; {common.cpu_summary(info)}; BLAS {info.get('blas')}")
    with ThreadPoolExecutor(2) as pool:
        rows = copy_rows(pool, args.copy_mib, args.repeats, args.settle)
        rows.append(multiply_row(pool, (4, 16, 28, 28) if args.tiny else (64, 16, 28, 28), args.repeats, args.settle))
        rows.append(gemm_row(pool, 64 if args.tiny else 512, args.repeats, args.settle))
        rows.append(conv_row(pool, 4 if args.tiny else 64, 16, 12 if args.tiny else 28, args.repeats, args.settle))
    rows += resnet_rows(2 if args.tiny else 64, 12 if args.tiny else 28, args.repeats, args.settle)
    common.print_table(rows, COLUMNS)
    if path is not None:
        common.write_json(path, dict(machine=info, rows=rows, repeats=args.repeats))
    return rows


if __name__ == "__main__":
    main()

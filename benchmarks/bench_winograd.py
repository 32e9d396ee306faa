"""Winograd 3x3 convolutions beside xpcnn's im2col conv2d and PyTorch on the CPU, float32.

    python benchmarks/bench_winograd.py                          # conv (c), 1 thread and default threads
    python benchmarks/bench_winograd.py --threads 1 --rounds 9 --configs c resnet32_14 --json out.json
    python benchmarks/bench_winograd.py --quick                  # a smoke run: one small shape, 1 thread, 2 rounds

For every configuration, thread setting and pass (forward; forward + backward = forward, dx and dweight) it prints
the median wall time over ``--rounds`` interleaved rounds (every contender once per round, each settled for
0.2 s of untimed calls right before its timed one, as benchmarks/common.py does), the median process CPU time
(with one thread the CPU time is the least disturbed by other tenants of a shared machine), and the ratios to
PyTorch and to im2col, each the median of the per-round ratios.

Each thread setting runs in a fresh process: ``1`` sets OPENBLAS/OMP/MKL_NUM_THREADS=1 before NumPy loads and
``torch.set_num_threads(1)``; ``default`` leaves both libraries at their defaults.

Contenders: ``torch`` (torch.nn.functional.conv2d, NCHW, autograd for the backward pass), ``torch_cl`` (the same
in torch.channels_last), ``im2col`` (xpcnn.functional.conv2d_forward / conv2d_backward on NumPy), ``F2`` and ``F4``
(xpcnn._winograd on NumPy, NCHW), ``F4_nhwc`` (NHWC NumPy arrays) and ``F4_torch`` (the same functions on PyTorch
CPU tensors through the array API).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "c": ((32, 64, 32, 32), 64, 1),  # the benchmarks' conv (c)
    "resnet16_28": ((32, 16, 28, 28), 16, 1),
    "resnet32_14": ((32, 32, 14, 14), 32, 1),
    "resnet64_7": ((32, 64, 7, 7), 64, 1),
    "wide128_16": ((16, 128, 16, 16), 128, 1),
    "lenet2": ((64, 6, 14, 14), 16, 0),
}
QUICK = {"quick": ((2, 8, 9, 9), 8, 1)}


def cpu_model():
    """The CPU's model name and its vector extensions (from /proc/cpuinfo where there is one)."""
    model, flags = None, []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                if key.strip() == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    vector = sorted(f for f in flags if f.startswith(("avx", "sse4", "fma", "amx")))
    return dict(cpu_model=model or "unknown", vector_extensions=vector)


def _contenders(shape, out_channels, padding, workspace):
    import array_api_compat
    import numpy as np
    import torch

    from xpcnn._winograd import winograd_forward, winograd_input_grad, winograd_weight_grad
    from xpcnn.functional import conv2d_backward, conv2d_forward

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal((out_channels, shape[1], 3, 3)) / np.sqrt(9 * shape[1])).astype(np.float32)
    out_size = tuple(n + 2 * padding - 2 for n in shape[2:])
    d = rng.standard_normal((shape[0], out_channels, *out_size)).astype(np.float32)
    xh, dh = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)) for a in (x, d))
    xt, wt, dt = (torch.tensor(a) for a in (x, w, d))
    xcl, dcl = (t.contiguous(memory_format=torch.channels_last) for t in (xt, dt))
    tns = array_api_compat.array_namespace(xt)
    in_size = shape[2:]

    def torch_fwd(a):
        return lambda: torch.nn.functional.conv2d(a, wt, padding=padding)

    def torch_fb(a, g):
        def run():
            a_ = a.detach().requires_grad_()
            w_ = wt.detach().requires_grad_()
            torch.nn.functional.conv2d(a_, w_, padding=padding).backward(g)
        return run

    def im2col_fb():
        _, cache = conv2d_forward(x, w, padding=padding)
        conv2d_backward(d, cache)

    def wino(xp, a, g, weight, tile, fmt, backward):
        opts = dict(tile=tile, data_format=fmt, workspace_limit=workspace)

        def run():
            winograd_forward(xp, a, weight, padding, 1, **opts)
            if backward:
                winograd_input_grad(xp, g, weight, padding, 1, in_size, **opts)
                winograd_weight_grad(xp, a, g, padding, 1, **opts)
        return run

    npx = array_api_compat.array_namespace(x)
    forward = {
        "torch": torch_fwd(xt), "torch_cl": torch_fwd(xcl),
        "im2col": lambda: conv2d_forward(x, w, padding=padding),
        "F2": wino(npx, x, d, w, 2, "NCHW", False), "F4": wino(npx, x, d, w, 4, "NCHW", False),
        "F4_nhwc": wino(npx, xh, dh, w, 4, "NHWC", False), "F4_torch": wino(tns, xt, dt, wt, 4, "NCHW", False),
    }
    both = {
        "torch": torch_fb(xt, dt), "torch_cl": torch_fb(xcl, dcl), "im2col": im2col_fb,
        "F2": wino(npx, x, d, w, 2, "NCHW", True), "F4": wino(npx, x, d, w, 4, "NCHW", True),
        "F4_nhwc": wino(npx, xh, dh, w, 4, "NHWC", True), "F4_torch": wino(tns, xt, dt, wt, 4, "NCHW", True),
    }
    return {"fwd": forward, "fwd+bwd": both}


def _time_rounds(contenders, rounds, settle_s):
    """Wall and process-CPU milliseconds of each contender's timed call in every round (interleaved, settled)."""
    wall = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start, calls = time.perf_counter(), 0
            while calls < 1 or time.perf_counter() - start < settle_s:
                fn()
                calls += 1
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append((time.process_time() - c0) * 1e3)
            wall[name].append((time.perf_counter() - w0) * 1e3)
    return wall, cpu


def _paired(ours, reference):
    return statistics.median(a / b for a, b in zip(ours, reference))


def child(args):
    """Measure in this process (its thread setting fixed by the parent) and write rows as JSON."""
    import torch

    if args.threads == "1":
        torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    import common

    configs = QUICK if args.quick else {name: CONFIGS[name] for name in args.configs}
    rows = []
    for name, (shape, out_channels, padding) in configs.items():
        for pass_name, contenders in _contenders(shape, out_channels, padding, args.workspace_mib * 2**20).items():
            wall, cpu = _time_rounds(contenders, args.rounds, 0.02 if args.quick else 0.2)
            for contender in contenders:
                rows.append(dict(
                    config=name, x="x".join(map(str, shape)), out_channels=out_channels, threads=args.threads,
                    torch_threads=torch.get_num_threads(), **{"pass": pass_name}, contender=contender,
                    median_ms=statistics.median(wall[contender]), cpu_ms=statistics.median(cpu[contender]),
                    vs_torch=_paired(wall[contender], wall["torch"]),
                    vs_im2col=_paired(wall[contender], wall["im2col"]),
                    cpu_vs_torch=_paired(cpu[contender], cpu["torch"]),
                    samples_ms=[round(v, 3) for v in wall[contender]],
                ))
    with open(args.child_out, "w") as f:
        json.dump(dict(rows=rows, machine=common.machine_info(), state=common.machine_state()), f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["c"])
    parser.add_argument("--threads", choices=["1", "default", "both"], default=None,
                        help="thread settings to measure (default: both; 1 with --quick)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workspace-mib", type=int, default=4, help="Winograd's workspace_limit in MiB")
    parser.add_argument("--quick", action="store_true", help="smoke run: one small shape, 2 rounds")
    parser.add_argument("--json", default="benchmarks/results/winograd_speed.json",
                        help="output path, relative to the working directory")
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_out:
        return child(args)
    if args.quick:
        args.rounds = min(args.rounds, 2)
    if args.threads is None:
        args.threads = "1" if args.quick else "both"
    path = Path(args.json).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)  # checked before measuring, not after
    rows, machines = [], {}
    for threads in (["1", "default"] if args.threads == "both" else [args.threads]):
        env = dict(os.environ)
        if threads == "1":
            env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            command = [sys.executable, __file__, "--child-out", str(out), "--threads", threads,
                       "--rounds", str(args.rounds), "--workspace-mib", str(args.workspace_mib),
                       "--configs", *args.configs] + (["--quick"] if args.quick else [])
            subprocess.run(command, env=env, check=True)
            result = json.loads(out.read_text())
        rows += result["rows"]
        machines[threads] = dict(result["machine"], state=result["state"])
    sys.path.insert(0, str(Path(__file__).parent))
    import common

    common.print_table(rows, ["config", "threads", "pass", "contender", "median_ms", "cpu_ms", "vs_torch",
                              "vs_im2col", "cpu_vs_torch"])
    payload = dict(cpu=cpu_model(), machine=machines, workspace_mib=args.workspace_mib, rounds=args.rounds,
                   rows=rows)
    common.write_json(path, payload)
    print(f"CPU: {payload['cpu']['cpu_model']}; wrote {path}")


if __name__ == "__main__":
    main()

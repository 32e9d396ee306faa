"""Convolution forward + backward in both layouts against PyTorch: xpcnn NCHW against torch NCHW, xpcnn NHWC
(``data_format="NHWC"``) against torch ``channels_last``, on the ResNet example's layer shapes (batch 64) and on
workload (c) (x 32x64x32x32, w 64x64x3x3, padding 1).

Every contender takes turns in each round, settled first (benchmarks/README.md). ``--clock cpu`` times CPU seconds
of this process (``time.process_time``) instead of wall-clock: on a machine shared with other busy processes it
moves far less, and with one thread per library (``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1``) it is the work
each library does. Prints a table; ``--json`` writes the figures with the machine's description.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_conv_layouts.py --clock cpu --json out.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, machine_state, print_table, write_json  # noqa: E402

# (name, batch, in_channels, out_channels, size, kernel, stride, padding, input_grad)
SHAPES = {
    "resnet-stem": (64, 1, 16, 28, 3, 1, 1, False),
    "resnet-16-16": (64, 16, 16, 28, 3, 1, 1, True),
    "resnet-16-32-s2": (64, 16, 32, 28, 3, 2, 1, True),
    "resnet-16-32-1x1-s2": (64, 16, 32, 28, 1, 2, 0, True),
    "resnet-32-32": (64, 32, 32, 14, 3, 1, 1, True),
    "resnet-32-64-s2": (64, 32, 64, 14, 3, 2, 1, True),
    "resnet-32-64-1x1-s2": (64, 32, 64, 14, 1, 2, 0, True),
    "resnet-64-64": (64, 64, 64, 7, 3, 1, 1, True),
    "c": (32, 64, 64, 32, 3, 1, 1, True),
}
RESNET_COUNT = {"resnet-16-16": 2}  # layers of that shape in one step (the others: one each)


def contenders(shape, dtype, with_im2col=False):
    import torch

    from xpcnn.functional import conv2d_backward, conv2d_forward

    batch, cin, cout, size, k, stride, pad, input_grad = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cin, size, size)).astype(dtype)
    w = (rng.standard_normal((cout, cin, k, k)) * 0.1).astype(dtype)
    out, _ = conv2d_forward(x, w, stride=stride, padding=pad)
    dout = rng.standard_normal(out.shape).astype(dtype)
    x_nhwc, dout_nhwc = (np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1))) for a in (x, dout))
    options = dict(stride=stride, padding=pad)

    def xpcnn(x, dout, data_format, algorithm="auto"):
        def run():
            _, cache = conv2d_forward(x, w, **options, data_format=data_format, algorithm=algorithm)
            conv2d_backward(dout, cache, input_grad=input_grad)
        return run

    def pytorch(memory_format):
        xt = torch.tensor(x).contiguous(memory_format=memory_format).requires_grad_(input_grad)
        wt = torch.tensor(w).contiguous(memory_format=memory_format).requires_grad_(True)
        dt = torch.tensor(dout).contiguous(memory_format=memory_format)

        def run():
            torch.nn.functional.conv2d(xt, wt, **options).backward(dt)
            xt.grad = wt.grad = None
        return run

    fns = {
        "xpcnn NCHW": xpcnn(x, dout, "NCHW"),
        "torch NCHW": pytorch(torch.contiguous_format),
        "xpcnn NHWC": xpcnn(x_nhwc, dout_nhwc, "NHWC"),
        "torch channels_last": pytorch(torch.channels_last),
    }
    if with_im2col:  # the default choice against im2col alone (algorithm="im2col": Winograd off), side by side
        fns["xpcnn NCHW im2col"] = xpcnn(x, dout, "NCHW", "im2col")
        fns["xpcnn NHWC im2col"] = xpcnn(x_nhwc, dout_nhwc, "NHWC", "im2col")
    return fns


def timed(fns, repeats, clock, settle_s):
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            while time.perf_counter() - start < settle_s:
                fn()
            begin = clock()
            fn()
            samples[name].append((clock() - begin) * 1e3)
    return samples


def cpu_model():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, None
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return model, sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), help="default: all")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--settle", type=float, default=0.2)
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    parser.add_argument("--with-im2col", action="store_true",
                        help="also time xpcnn with algorithm='im2col' (Winograd off) in the same rounds")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    json_path = Path(args.json).resolve() if args.json else None
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    model, flags = cpu_model()
    info = dict(machine_info(), cpu_model=model, vector_extensions=flags,
                omp_threads=os.environ.get("OMP_NUM_THREADS"), clock=args.clock)
    print(f"# conv2d forward + backward, {args.dtype}, {args.clock} ms; {model}; BLAS {info.get('blas')}; "
          f"PyTorch {info.get('torch_threads')} threads")
    state_before = machine_state()
    rows = []
    for name in args.shape or list(SHAPES):
        fns = contenders(SHAPES[name], np.dtype(args.dtype), args.with_im2col)
        samples = timed(fns, args.repeats, clock, args.settle)
        med = {k: statistics.median(v) for k, v in samples.items()}
        rows.append(dict(shape=name, **{f"{k} ms": round(v, 2) for k, v in med.items()},
                         nchw_ratio=round(med["xpcnn NCHW"] / med["torch NCHW"], 2),
                         nhwc_ratio=round(med["xpcnn NHWC"] / med["torch channels_last"], 2),
                         **({"nchw_im2col_ratio": round(med["xpcnn NCHW im2col"] / med["torch NCHW"], 2),
                             "nhwc_im2col_ratio": round(med["xpcnn NHWC im2col"] / med["torch channels_last"], 2)}
                            if args.with_im2col else {}),
                         samples_ms=samples))
    resnet = [r for r in rows if r["shape"].startswith("resnet")]
    if len(resnet) == sum(1 for s in SHAPES if s.startswith("resnet")):
        total = {k: sum(r[f"{k} ms"] * RESNET_COUNT.get(r["shape"], 1) for r in resnet)
                 for k in ("xpcnn NCHW", "torch NCHW", "xpcnn NHWC", "torch channels_last")}
        rows.append(dict(shape="resnet step (all convs)", **{f"{k} ms": round(v, 1) for k, v in total.items()},
                         nchw_ratio=round(total["xpcnn NCHW"] / total["torch NCHW"], 2),
                         nhwc_ratio=round(total["xpcnn NHWC"] / total["torch channels_last"], 2)))
    print_table(rows, ["shape", "xpcnn NCHW ms", "torch NCHW ms", "nchw_ratio", "xpcnn NHWC ms",
                       "torch channels_last ms", "nhwc_ratio",
                       *(["xpcnn NCHW im2col ms", "nchw_im2col_ratio", "xpcnn NHWC im2col ms", "nhwc_im2col_ratio"]
                         if args.with_im2col else [])])
    if json_path:
        write_json(json_path, dict(machine=dict(info, state=dict(before=state_before, after=machine_state())),
                                   dtype=args.dtype, rows=rows))


if __name__ == "__main__":
    main()

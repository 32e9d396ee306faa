"""Pooling in both layouts: xpcnn against PyTorch CPU, NCHW against NCHW and NHWC against ``channels_last``.

Every contender of one configuration runs in the same rounds (:func:`common.time_interleaved`), so the ratios
compare like with like on a shared, noisy machine. The default workload is issue 12's: float32 forward + backward
of x 32x64x32x32, max and average pooling 2x2 (stride 2) and 3x3 with stride 1 and 2, padding 1.

``--transpose`` adds the contender "xpcnn-NHWC-via-NCHW": the NHWC input transposed to NCHW, pooled there and the
result (and the gradient) transposed back, to show whether the native NHWC path beats the transpose.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from xpcnn import functional as F  # noqa: E402

# (kind, kernel, stride, padding)
CONFIGS = [
    ("max", 2, 2, 0),
    ("max", 3, 1, 1),
    ("max", 3, 2, 1),
    ("avg", 2, 2, 0),
    ("avg", 3, 1, 1),
    ("avg", 3, 2, 1),
]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return "unknown"
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    vector = sorted(f for f in flags if f.startswith(("avx", "sse4", "fma", "amx")))
    return f"{model} [{' '.join(vector)}]"


def contenders(kind, kernel, stride, padding, x_nchw, with_backward, transpose):
    import torch

    forward = F.max_pool2d_forward if kind == "max" else F.avg_pool2d_forward
    backward = F.max_pool2d_backward if kind == "max" else F.avg_pool2d_backward
    torch_pool = torch.nn.functional.max_pool2d if kind == "max" else torch.nn.functional.avg_pool2d
    x_nhwc = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    t_nchw = torch.tensor(x_nchw, requires_grad=True)
    t_nhwc = torch.tensor(x_nchw).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    options = dict(stride=stride, padding=padding)

    def ours(x, data_format):
        def run():
            out, cache = forward(x, kernel, **options, data_format=data_format)
            if with_backward:
                backward(out, cache)
        return run

    def theirs(t):
        def run():
            out = torch_pool(t, kernel, stride, padding)
            if with_backward:
                out.backward(out.detach())
        return run

    def via_nchw():
        x = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))
        out, cache = forward(x, kernel, **options)
        out = np.ascontiguousarray(out.transpose(0, 2, 3, 1))
        if with_backward:
            dout = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
            np.ascontiguousarray(backward(dout, cache).transpose(0, 2, 3, 1))

    runs = {
        "NCHW": {"xpcnn": ours(x_nchw, "NCHW"), "torch": theirs(t_nchw)},
        "NHWC": {"xpcnn": ours(x_nhwc, "NHWC"), "torch": theirs(t_nhwc)},
    }
    if transpose:
        runs["NHWC"]["xpcnn-NHWC-via-NCHW"] = via_nchw
    return runs


def bench(args):
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.shape).astype(args.dtype)
    rows = []
    configs = [c for c in CONFIGS if args.only is None or f"{c[0]}{c[1]}s{c[2]}" in args.only]
    for kind, kernel, stride, padding in configs:
        for with_backward in args.passes:
            runs = contenders(kind, kernel, stride, padding, x, with_backward, args.transpose)
            # both layouts' contenders in the same rounds
            flat = {f"{layout}/{name}": fn for layout, group in runs.items() for name, fn in group.items()}
            timings = common.time_interleaved(flat, args.repeats, lambda: None, settle_s=args.settle)
            for layout, group in runs.items():
                reference = timings[f"{layout}/torch"]
                for name in group:
                    t = timings[f"{layout}/{name}"]
                    rows.append(dict(
                        op=f"{kind}_pool{kernel}x{kernel}/s{stride}/p{padding}",
                        **{"pass": "fwd+bwd" if with_backward else "fwd"}, layout=layout, contender=name,
                        median_ms=t["median_ms"], min_ms=t["min_ms"], max_ms=t["max_ms"],
                        vs_torch=t["median_ms"] / reference["median_ms"],
                        vs_torch_rounds=common.paired_ratio(t, reference),
                        vs_torch_min=t["min_ms"] / reference["min_ms"],  # the least disturbed rounds
                    ))
    torch.set_grad_enabled(True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[32, 64, 32, 32], metavar=("N", "C", "H", "W"),
                        help="x's shape in NCHW (default: 32 64 32 32)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default: 9)")
    parser.add_argument("--settle", type=float, default=0.2,
                        help="seconds each contender runs untimed before its timed call in every round (default: 0.2)")
    parser.add_argument("--forward", action="store_true", help="also time the forward pass alone")
    parser.add_argument("--transpose", action="store_true",
                        help="add the NHWC contender that transposes to NCHW and back")
    parser.add_argument("--only", nargs="+", default=None,
                        help="configurations to run, e.g. max2s2 max3s1 max3s2 avg2s2 avg3s1 avg3s2 (default: all)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="PyTorch's intra-op threads (default: its own choice; xpcnn's element-wise NumPy work "
                             "runs on one thread)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and one round (smoke test)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows and the machine facts here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.shape, args.repeats, args.settle = [2, 3, 8, 8], 1, 0.0
    args.passes = (False, True) if args.forward else (True,)
    if args.json is not None:  # fail before measuring, not after
        args.json = Path(os.path.abspath(args.json))
        args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    state_before = common.machine_state()
    rows = bench(args)
    info = common.machine_info()
    info["cpu"] = _cpu_model()
    info["state"] = dict(before=state_before, after=common.machine_state())
    print(f"# {args.dtype} x {tuple(args.shape)} (NCHW); {info['cpu']}; {info['cores']} cores; torch "
          f"{info.get('torch')} ({info.get('torch_threads')} threads)")
    print(f"# machine state (host copy GB/s, GEMM GFLOP/s) before {info['state']['before']}, "
          f"after {info['state']['after']}")
    common.print_table(rows, ["op", "pass", "layout", "contender", "median_ms", "min_ms", "max_ms", "vs_torch",
                              "vs_torch_rounds", "vs_torch_min"])
    if args.json is not None:
        common.write_json(args.json, dict(benchmark="pool_layouts", dtype=args.dtype, shape=args.shape,
                                          machine=info, rows=rows))
    return rows


if __name__ == "__main__":
    main()

"""Batch norm and ReLU, forward + backward, on the ResNet example's shapes: xpcnn against PyTorch on the same device.

    python benchmarks/bench_norm.py                          # NumPy vs PyTorch CPU, NCHW and NHWC
    python benchmarks/bench_norm.py --torch-threads 1        # PyTorch on one thread, as NumPy's elementwise ops
    python benchmarks/bench_norm.py --json results/norm.json

The shapes are those of ``examples/train_resnet.py`` at batch 64 (float32): 16 channels at 28x28, 32 at 14x14,
64 at 7x7. Each op is timed as a layer runs in a training step: forward in training mode (batch statistics and
the running statistics' update), then backward (dx, dweight, dbias), PyTorch through autograd. NHWC rows time
``data_format="NHWC"`` against PyTorch's ``channels_last`` tensors. Contenders take turns in every round
(``common.time_interleaved``); medians in ms, and the ratio xpcnn / PyTorch (lower is better).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

import xpcnn.functional as F  # noqa: E402

SHAPES = [(64, 16, 28, 28), (64, 32, 14, 14), (64, 64, 7, 7)]
TINY_SHAPES = [(4, 3, 5, 5)]


def contenders(backend, shape, data_format, dtype):
    torch = backend.torch
    rng = np.random.default_rng(0)
    c = shape[1]
    x_host = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dout_host = rng.standard_normal(shape).astype(dtype)
    w_host, b_host = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    last = data_format == "NHWC"
    move = (lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))) if last else (lambda a: a)
    x, dout = backend.asarray(move(x_host)), backend.asarray(move(dout_host))
    w, b = backend.asarray(w_host), backend.asarray(b_host)
    rm, rv = backend.asarray(np.zeros(c, dtype)), backend.asarray(np.ones(c, dtype))
    fmt = torch.channels_last if last else torch.contiguous_format
    tx = backend.torch_tensor(x_host).to(memory_format=fmt).requires_grad_()
    tdout = backend.torch_tensor(dout_host).to(memory_format=fmt)
    tw, tb = backend.torch_tensor(w_host).requires_grad_(), backend.torch_tensor(b_host).requires_grad_()
    trm, trv = backend.torch_tensor(np.zeros(c, dtype)), backend.torch_tensor(np.ones(c, dtype))

    def our_bn():
        out, cache = F.batch_norm2d_forward(x, w, b, running_mean=rm, running_var=rv, data_format=data_format)
        return F.batch_norm2d_backward(dout, cache)

    def their_bn():
        torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training=True).backward(tdout)

    def our_relu():
        out, cache = F.relu_forward(x)
        return F.relu_backward(dout, cache)

    def their_relu():
        torch.relu(tx).backward(tdout)

    return {"batch_norm2d": (our_bn, their_bn), "relu": (our_relu, their_relu)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "torch"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--settle", type=float, default=0.2)
    parser.add_argument("--torch-threads", type=int, default=None, help="PyTorch's CPU threads (default: its own)")
    parser.add_argument("--data-format", action="append", choices=["NCHW", "NHWC"],
                        help="layouts to time (repeat for both); default: both")
    parser.add_argument("--tiny", action="store_true", help="one small shape (the smoke test)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.json is not None:
        args.json = args.json.resolve()
        args.json.parent.mkdir(parents=True, exist_ok=True)
    backend = common.Backend(args.backend, args.device)
    if args.torch_threads:
        backend.torch.set_num_threads(args.torch_threads)
    info = common.machine_info()
    print(f"# batch norm and ReLU forward + backward, {args.backend} float32; {info.get('processor')}, "
          f"{info.get('cores')} cores; PyTorch {backend.torch.get_num_threads()} threads")
    rows = []
    for data_format in args.data_format or ["NCHW", "NHWC"]:
        for shape in TINY_SHAPES if args.tiny else SHAPES:
            for op, (ours, theirs) in contenders(backend, shape, data_format, np.float32).items():
                timing = common.time_interleaved(dict(xpcnn=ours, torch=theirs), args.repeats, backend.sync,
                                                 settle_s=args.settle)
                rows.append(dict(op=op, layout=data_format, shape="x".join(map(str, shape)),
                                 xpcnn_ms=timing["xpcnn"]["median_ms"], torch_ms=timing["torch"]["median_ms"],
                                 vs_torch=timing["xpcnn"]["median_ms"] / timing["torch"]["median_ms"],
                                 vs_torch_rounds=common.paired_ratio(timing["xpcnn"], timing["torch"])))
                print(f"  {op} {data_format} {rows[-1]['shape']}: {rows[-1]['xpcnn_ms']:.3f} ms vs "
                      f"{rows[-1]['torch_ms']:.3f} ms", flush=True)
    common.print_table(rows, ["op", "layout", "shape", "xpcnn_ms", "torch_ms", "vs_torch", "vs_torch_rounds"])
    if args.json is not None:
        common.write_json(args.json, dict(benchmark="norm", backend=args.backend, machine=info, rows=rows))


if __name__ == "__main__":
    main()

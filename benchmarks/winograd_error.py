"""Winograd's float32 error against float64, beside im2col's and PyTorch's own float32 error.

    python benchmarks/winograd_error.py                       # every configuration, table + results/winograd_error.json
    python benchmarks/winograd_error.py --only c resnet64_7 --json out.json
    python benchmarks/winograd_error.py --quick --json /tmp/e.json  # a smoke run on one small shape

For each configuration (x ~ N(0, 1), weights ~ N(0, 1 / fan_in), dout ~ N(0, 1)) and each of forward, dx and
dweight, the float64 reference is PyTorch's float64 convolution (xpcnn's im2col in float64 without torch). Each
float32 contender is reported as

``rel_max``
    the largest absolute error over the largest reference magnitude, ``max|err| / max|ref|``;
``tol_use``
    the largest share of the PyTorch comparison tests' float32 tolerance used by any element,
    ``max |err| / (RTOL * |ref| + ATOL * max|ref|)`` with tests/helpers.py's RTOL = 2e-4, ATOL = 2e-5: below 1
    passes those tests.

Contenders: Winograd F(2x2,3x3) and F(4x4,3x3) (xpcnn._winograd, NumPy), xpcnn's im2col conv2d in float32, and
PyTorch's float32 convolution (oneDNN on the CPU: it may itself use Winograd).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from xpcnn._winograd import winograd_forward, winograd_input_grad, winograd_weight_grad  # noqa: E402
from xpcnn.functional import conv2d_backward, conv2d_forward  # noqa: E402

RTOL, ATOL = 2e-4, 2e-5  # tests/helpers.py, float32

# name: (x shape NCHW, out channels, padding)
CONFIGS = {
    "c": ((32, 64, 32, 32), 64, 1),  # the benchmarks' conv (c)
    "lenet1": ((64, 1, 28, 28), 6, 1),  # LeNet-like, 3 x 3 kernels
    "lenet2": ((64, 6, 14, 14), 16, 0),
    "resnet16_28": ((16, 16, 28, 28), 16, 1),  # ResNet stages of 16 / 32 / 64 channels at 28 / 14 / 7
    "resnet32_14": ((16, 32, 14, 14), 32, 1),
    "resnet64_7": ((16, 64, 7, 7), 64, 1),
    "wide256_14": ((8, 256, 14, 14), 256, 1),  # many channels: the longest sums
}
QUICK = {"quick": ((2, 8, 9, 9), 8, 1)}


def _errors(got, ref):
    err = np.abs(np.asarray(got, dtype=np.float64) - ref)
    scale = np.max(np.abs(ref))
    return dict(rel_max=float(err.max() / scale), tol_use=float(np.max(err / (RTOL * np.abs(ref) + ATOL * scale))))


def _reference(x, w, dout, padding):
    try:
        import torch
    except ImportError:
        out, cache = conv2d_forward(x, w, padding=padding)
        dx, dw, _ = conv2d_backward(dout, cache)
        return out, dx, dw
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    out = torch.nn.functional.conv2d(xt, wt, padding=padding)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def _torch_float32(x, w, dout, padding):
    try:
        import torch
    except ImportError:
        return None
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float32, requires_grad=True)
    out = torch.nn.functional.conv2d(xt, wt, padding=padding)
    out.backward(torch.tensor(dout, dtype=torch.float32))
    return out.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def measure(name, seed=0):
    shape, out_channels, padding = {**CONFIGS, **QUICK}[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((out_channels, shape[1], 3, 3)) / np.sqrt(9 * shape[1])
    out_size = tuple(n + 2 * padding - 2 for n in shape[2:])
    dout = rng.standard_normal((shape[0], out_channels, *out_size))
    refs = _reference(x, w, dout, padding)
    x32, w32, d32 = (a.astype(np.float32) for a in (x, w, dout))
    contenders = {}
    for tile in (2, 4):
        contenders[f"F({tile}x{tile},3x3)"] = (
            winograd_forward(None, x32, w32, padding, 1, tile=tile),
            winograd_input_grad(None, d32, w32, padding, 1, shape[2:], tile=tile),
            winograd_weight_grad(None, x32, d32, padding, 1, tile=tile),
        )
    out, cache = conv2d_forward(x32, w32, padding=padding)
    dx, dw, _ = conv2d_backward(d32, cache)
    contenders["im2col"] = (out, dx, dw)
    torch32 = _torch_float32(x, w, dout, padding)
    if torch32 is not None:
        contenders["torch"] = torch32
    rows = []
    for contender, results in contenders.items():
        for what, got, ref in zip(("out", "dx", "dweight"), results, refs):
            rows.append(dict(config=name, x="x".join(map(str, shape)), out_channels=out_channels, padding=padding,
                             contender=contender, result=what, **_errors(got, ref)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="smoke run: one small shape")
    parser.add_argument("--json", default="benchmarks/results/winograd_error.json",
                        help="output path, relative to the working directory")
    args = parser.parse_args(argv)
    path = Path(args.json).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [row for name in (list(QUICK) if args.quick else args.only) for row in measure(name)]
    for row in rows:
        row["rel_max"], row["tol_use"] = float(f"{row['rel_max']:.3g}"), float(f"{row['tol_use']:.3g}")
    common.print_table(rows, ["config", "x", "out_channels", "contender", "result", "rel_max", "tol_use"])
    worst = {}
    for row in rows:
        key = row["contender"]
        worst[key] = max(worst.get(key, 0.0), row["tol_use"])
    print("largest share of the float32 test tolerance used:", ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))
    common.write_json(path, dict(machine=common.machine_info(), rtol=RTOL, atol=ATOL, rows=rows, worst_tol_use=worst))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

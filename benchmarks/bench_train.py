"""Training-step throughput: the digits example's LeNet-style CNN, xpcnn against the same network in PyTorch.

    python benchmarks/bench_train.py                       # NumPy vs PyTorch CPU
    python benchmarks/bench_train.py --backend cupy        # CuPy vs PyTorch CUDA

A step is forward, cross-entropy, backward and an Adam update on one batch of 1x8x8 images. Both networks start
from the same weights; rounds of ``--steps`` steps alternate between the two, and the median images/s is reported
(and, as ``vs_torch_rounds``, the median over rounds of the speed ratio within each round).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import common  # noqa: E402
from train_digits import lenet  # noqa: E402

import xpcnn  # noqa: E402
from xpcnn import nn  # noqa: E402
from xpcnn._host import to_numpy  # noqa: E402


def torch_lenet(torch, model, device):
    tnn = torch.nn
    net = tnn.Sequential(
        tnn.Conv2d(1, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(256, 128), tnn.ReLU(), tnn.Linear(128, 10),
    )
    net.load_state_dict({k: torch.tensor(to_numpy(v)) for k, v in model.state_dict().items()})
    return net.to(device)


def bench(args):
    backend = common.Backend(args.backend, args.device)
    torch = backend.torch
    rng = np.random.default_rng(0)
    x_host = rng.random((args.batch_size, 1, 8, 8), dtype=np.float32)
    y_host = rng.integers(0, 10, args.batch_size)
    model = lenet(backend.lib, device=backend.device if backend.name == "torch" else None)
    net = torch_lenet(torch, model, backend.torch_device)
    x, y = backend.asarray(x_host), backend.asarray(y_host)
    xt, yt = backend.torch_tensor(x_host), backend.torch_tensor(y_host)
    loss_fn, optimizer = nn.CrossEntropyLoss(), xpcnn.optim.Adam(model.parameters(), lr=1e-3)
    torch_optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def ours():
        for _ in range(args.steps):
            optimizer.zero_grad()
            loss_fn(model.forward(x), y)
            model.backward(loss_fn.backward(), input_grad=False)  # as PyTorch: x needs no gradient
            optimizer.step()

    def theirs():
        for _ in range(args.steps):
            torch_optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(xt), yt).backward()
            torch_optimizer.step()

    timings = common.time_interleaved({"xpcnn": ours, "torch": theirs}, args.repeats, backend.sync,
                                      settle_s=args.settle)
    rows = []
    for name, t in timings.items():
        images = args.steps * args.batch_size
        rows.append(dict(contender=name, batch_size=args.batch_size, steps=args.steps, **t,
                         images_per_s=images / (t["median_ms"] / 1e3)))
    reference = rows[1]["images_per_s"]
    for row, t in zip(rows, timings.values()):
        row["vs_torch"] = row["images_per_s"] / reference
        row["vs_torch_rounds"] = 1.0 / common.paired_ratio(t, timings["torch"])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["numpy", "cupy", "torch"], default="numpy")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--settle", type=float, default=0.2,
                        help="seconds each contender runs untimed before its timed call in every round")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    state_before = common.machine_state()
    rows = bench(args)
    info = common.machine_info()
    info["state"] = dict(before=state_before, after=common.machine_state())
    print(f"# training step, digits LeNet, {args.backend}; {info['cores']} cores; BLAS {info['blas']}")
    state = info["state"]
    print(f"# machine state (host copy GB/s, GEMM GFLOP/s) before {state['before']}, after {state['after']}")
    common.print_table(rows, ["contender", "batch_size", "median_ms", "min_ms", "max_ms", "images_per_s", "vs_torch",
                              "vs_torch_rounds"])
    if args.json:
        common.write_json(args.json, dict(benchmark="train", backend=args.backend, machine=info, rows=rows))
    return rows


if __name__ == "__main__":
    main()

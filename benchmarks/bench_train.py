"""Training-step throughput: the examples' networks (the digits LeNet, the MNIST ResNet), xpcnn against the same
network in PyTorch.

    python benchmarks/bench_train.py                       # NumPy vs PyTorch CPU, both networks
    python benchmarks/bench_train.py --network resnet      # the ResNet alone
    python benchmarks/bench_train.py --backend cupy        # CuPy vs PyTorch CUDA

A step is forward, cross-entropy, backward and an optimizer update on one batch: for ``lenet`` (examples/
train_digits.py) 1x8x8 images and Adam, for ``resnet`` (examples/train_resnet.py: stem, three stages of basic
blocks with batch norm, global average pooling, linear) 1x28x28 images and SGD with Nesterov momentum 0.9 and
weight decay 5e-4, as in the examples. Both networks start from the same weights, and before timing one step of
each is checked to give the same loss (the comparison is of the same computation); rounds of ``--steps`` steps
alternate between the two, and the median images/s is reported (and, as ``vs_torch_rounds``, the median over
rounds of the speed ratio within each round).
"""

from __future__ import annotations

import argparse
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
from xpcnn import nn  # noqa: E402
from xpcnn._host import to_numpy  # noqa: E402
from xpcnn.functional.losses import check_class_range  # noqa: E402

NETWORKS = {
    # name: (title, image shape, default batch size, default steps per round)
    "lenet": ("digits LeNet", (1, 8, 8), 32, 20),
    "resnet": ("MNIST ResNet", (1, 28, 28), 64, 3),
}
TINY_IMAGES = {"lenet": (1, 8, 8), "resnet": (1, 12, 12)}
"""--tiny: the ResNet on 12x12 images (it ends in global average pooling, so any size from 8 up runs), batch 2,
one step a round, one round (the smoke test)."""
LOSS_RTOL = 1e-4
"""Relative tolerance of the check that one xpcnn step and one PyTorch step give the same loss (float32)."""


def load_weights(torch, net, model, device):
    """``net`` with ``model``'s state dict (parameters and buffers, by the same names), on ``device``."""
    net.load_state_dict({k: torch.tensor(to_numpy(v)) for k, v in model.state_dict().items()})
    return net.to(device)


def torch_lenet(torch, model, device):
    tnn = torch.nn
    net = tnn.Sequential(
        tnn.Conv2d(1, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(256, 128), tnn.ReLU(), tnn.Linear(128, 10),
    )
    return load_weights(torch, net, model, device)


def torch_resnet(torch, model, device, widths=(16, 32, 64), classes=10):
    """examples/train_resnet.py's ``resnet()`` in torch.nn, layer for layer, so that the state-dict names match
    (a Residual module with xpcnn's ``body``/``shortcut`` children)."""
    tnn = torch.nn

    class Residual(tnn.Module):
        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    def basic_block(cin, cout, stride):
        body = tnn.Sequential(
            tnn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU(),
            tnn.Conv2d(cout, cout, 3, padding=1, bias=False), tnn.BatchNorm2d(cout),
        )
        shortcut = None
        if stride != 1 or cin != cout:
            shortcut = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride=stride, bias=False), tnn.BatchNorm2d(cout))
        return tnn.Sequential(Residual(body, shortcut), tnn.ReLU())

    layers = [tnn.Conv2d(1, widths[0], 3, padding=1, bias=False), tnn.BatchNorm2d(widths[0]), tnn.ReLU()]
    cin = widths[0]
    for i, width in enumerate(widths):
        layers.append(basic_block(cin, width, 1 if i == 0 else 2))
        cin = width
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(cin, classes)]
    return load_weights(torch, tnn.Sequential(*layers), model, device)


def networks(network, backend):
    """The xpcnn model, the PyTorch network with its weights, and both optimizers, as the example trains them."""
    torch = backend.torch
    device = backend.device if backend.name == "torch" else None
    if network == "lenet":
        model = lenet(backend.lib, device=device)
        net = torch_lenet(torch, model, backend.torch_device)
        return (model, net, xpcnn.optim.Adam(model.parameters(), lr=1e-3),
                torch.optim.Adam(net.parameters(), lr=1e-3))
    model = resnet(backend.lib, device=device)
    net = torch_resnet(torch, model, backend.torch_device)
    # the example's optimizer; a fixed learning rate (the example's one-cycle schedule starts at 0.004)
    sgd = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return model, net, xpcnn.optim.SGD(model.parameters(), **sgd), torch.optim.SGD(net.parameters(), **sgd)


def bench(args, network="lenet"):
    backend = common.Backend(args.backend, args.device)
    torch = backend.torch
    title, image_shape, default_batch, default_steps = NETWORKS[network]
    if args.tiny:
        image_shape, default_batch, default_steps = TINY_IMAGES[network], 2, 1
    batch_size = args.batch_size or default_batch
    steps = args.steps or default_steps
    rng = np.random.default_rng(0)
    if network == "lenet":
        x_host = rng.random((batch_size, *image_shape), dtype=np.float32)
    else:  # standardised images, as the example feeds them
        x_host = rng.standard_normal((batch_size, *image_shape), dtype=np.float32)
    y_host = rng.integers(0, 10, batch_size)
    model, net, optimizer, torch_optimizer = networks(network, backend)
    x, y = backend.asarray(x_host), backend.asarray(y_host)
    xt, yt = backend.torch_tensor(x_host), backend.torch_tensor(y_host)
    # as fit trains: the targets checked once (here, once for the fixed batch), not at every step, where the
    # check's read of the targets would stop the host (a device sync on a GPU)
    check_class_range(backend.xp, y, 10)
    loss_fn = nn.CrossEntropyLoss(check_targets=False)

    def our_step():
        optimizer.zero_grad()
        loss = loss_fn(model.forward(x), y)
        model.backward(loss_fn.backward(), input_grad=False)  # as PyTorch: x needs no gradient
        optimizer.step()
        return loss

    def their_step():
        torch_optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        torch_optimizer.step()
        return loss

    # the same computation: from the same weights, the first step's loss (forward) and the second's (after one
    # backward pass and update) agree
    losses = [(float(our_step()), their_step().item()) for _ in range(2)]
    for ours, theirs in losses:
        if not abs(ours - theirs) <= LOSS_RTOL * max(1.0, abs(theirs)):
            raise RuntimeError(f"{title}: xpcnn's and PyTorch's losses differ from the same weights: {losses}")

    def ours():
        for _ in range(steps):
            our_step()

    def ours_im2col():
        with xpcnn.config.winograd(False):
            ours()

    def theirs():
        for _ in range(steps):
            their_step()

    contenders = {"xpcnn": ours, "torch": theirs}
    if args.winograd == "both":  # the same model with Winograd off, in the same rounds
        contenders["xpcnn im2col"] = ours_im2col
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    timings = common.time_interleaved(contenders, args.repeats, backend.sync, settle_s=args.settle, clock=clock)
    rows = []
    for name, t in timings.items():
        images = steps * batch_size
        rows.append(dict(network=network, contender=name, batch_size=batch_size, steps=steps, **t,
                         images_per_s=images / (t["median_ms"] / 1e3),
                         check_losses=[pair[0 if name == "xpcnn" else 1] for pair in losses]))
    reference = next(row["images_per_s"] for row in rows if row["contender"] == "torch")
    for row, t in zip(rows, timings.values()):
        row["vs_torch"] = row["images_per_s"] / reference
        row["vs_torch_rounds"] = 1.0 / common.paired_ratio(t, timings["torch"])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["numpy", "cupy", "torch"], default="numpy")
    parser.add_argument("--device", default=None)
    parser.add_argument("--network", choices=sorted(NETWORKS), action="append", default=None,
                        help="network to time (repeat for several); default: lenet, then resnet")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per step; default: 32 for lenet, 64 for resnet (the examples' batches)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed call; default: 20 for lenet, 3 for resnet")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--settle", type=float, default=0.2,
                        help="seconds each contender runs untimed before its timed call in every round")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke test: small ResNet images, batch 2, one step, one round, no settling")
    parser.add_argument("--winograd", choices=["on", "off", "both"], default="on",
                        help="off: xpcnn.config.set_winograd(False) (3x3 convolutions by im2col); both: xpcnn "
                             "with it on and off, in the same rounds")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time (steadier on a shared machine; run with one thread "
                             "per library: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import xpcnn

    xpcnn.config.set_winograd(args.winograd != "off")
    if args.tiny:
        args.repeats, args.settle = 1, 0.0
    json_path = common.output_path(args.json)  # checked (its folder made) before measuring
    chosen = list(dict.fromkeys(args.network or NETWORKS))
    state_before = common.machine_state(quick=args.tiny)
    rows = [row for network in chosen for row in bench(args, network)]
    info = common.machine_info()
    info["state"] = dict(before=state_before, after=common.machine_state(quick=args.tiny))
    titles = ", ".join(NETWORKS[n][0] for n in chosen)
    pairs = [[next(r for r in rows if r["network"] == n and r["contender"] == c) for c in ("xpcnn", "torch")]
             for n in chosen]
    checks = "; ".join(NETWORKS[o["network"]][0] + " " + ", ".join(f"{a:.6f}/{b:.6f}" for a, b in
                                                                  zip(o["check_losses"], t["check_losses"]))
                       for o, t in pairs)
    print(f"# training step, {titles}, {args.backend}, winograd {args.winograd}, {args.clock} clock; "
          f"{common.cpu_summary(info)}; BLAS {info['blas']}; PyTorch {info.get('torch_threads')} threads")
    state = info["state"]
    print(f"# machine state (host copy GB/s, GEMM GFLOP/s) before {state['before']}, after {state['after']}")
    print(f"# losses of the first two steps, xpcnn against PyTorch: {checks}")
    common.print_table(rows, ["network", "contender", "batch_size", "steps", "median_ms", "min_ms", "max_ms",
                              "images_per_s", "vs_torch", "vs_torch_rounds"])
    if json_path:
        common.write_json(json_path, dict(benchmark="train", backend=args.backend, winograd=args.winograd,
                                          clock=args.clock, machine=info, rows=rows))
    return rows


if __name__ == "__main__":
    main()

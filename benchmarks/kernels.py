"""Kernel budgets: the kernels each op pair and a whole training step issue, their bytes and FLOPs, and a roofline
model of one GPU built from them.

    python benchmarks/kernels.py                          # every op pair and the digits training step, both profiles
    python benchmarks/kernels.py --json results/kernels.json
    python benchmarks/kernels.py --launch-us 5 --bandwidth-tb-s 4.8 --peak-tflop-s 67   # the H200 model's parameters

The counts are taken on PyTorch CPU tensors through PyTorch's dispatcher (:class:`KernelCounter`, a
``TorchDispatchMode``): every ATen operator that reaches a kernel is one launch a GPU would make; views (slicing,
reshapes, transposes: metadata only) and allocations without a fill (``empty``) are not counted. Each kernel's bytes
are the sizes of the tensors it reads and writes, its FLOPs PyTorch's own count for matrix products and
convolutions (``torch.utils.flop_counter``) and one per output element for everything else.

The roofline model charges every kernel ``max(launch, bytes / bandwidth, flops / peak)`` and sums them: kernels run
one after another, none hides another's launch, none reuses another's data from a cache. It is a model, not a
measurement: it says which of launches, memory traffic and arithmetic bounds an op on that device, and how far the
op's whole kernel sequence is from its matrix products alone (``gemm_model_us``), the floor an im2col
implementation cannot go under.

Host synchronisations are recorded beside the counts: ``_local_scalar_dense`` (``float()``, ``.item()``,
``bool()`` of an array), NumPy conversions of a tensor (``__array__``, ``.numpy()``, ``.tolist()``: on a GPU a
device-to-host copy) and data arriving from the host (``lift_fresh``: a host-to-device copy, e.g.
``asarray`` of a Python tuple).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

NO_KERNEL = frozenset({"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "lift_fresh",
                       "_unsafe_view", "_record_function_enter", "_record_function_enter_new",
                       "_record_function_exit",
                       "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "is_same_size",
                       "_has_compatible_shallow_copy_type"})
"""Operators that launch nothing (allocation only, metadata) or are recorded separately (host transfers)."""

GEMMS = frozenset({"mm", "addmm", "bmm", "baddbmm", "convolution", "_convolution", "convolution_backward",
                   "_slow_conv2d_forward", "cudnn_convolution", "dot", "vdot", "mv", "addmv"})
"""Operators counted as matrix products (the ``gemm_*`` columns)."""

BUDGETS = {"conv2d (c)": 20, "max_pool2d 3x3/s1 (d)": 40, "max_pool2d 3x3/s2 (d)": 40, "avg_pool2d 3x3/s1 (d)": 40,
           "avg_pool2d 3x3/s2 (d)": 40, "digits training step": 250}
"""Kernel budgets under the accelerator profile (issue 13), guarded by tests/test_kernels.py."""


@dataclass
class Kernel:
    name: str
    bytes: int
    flops: float
    gemm: bool


@dataclass
class Counts:
    """What one piece of code issued: its kernels, and its host transfers by kind."""

    kernels: list[Kernel] = field(default_factory=list)
    syncs: collections.Counter = field(default_factory=collections.Counter)
    """``_local_scalar_dense`` and ``to_host`` (NumPy conversions): device-to-host reads that stop the host."""
    uploads: int = 0
    """Host-to-device copies (``lift_fresh``: a tensor made from host data)."""

    @property
    def count(self) -> int:
        return len(self.kernels)

    def by_name(self) -> collections.Counter:
        return collections.Counter(k.name for k in self.kernels)

    def roofline_us(self, model: "Roofline", gemms_only: bool = False) -> float:
        return sum(model.kernel_us(k) for k in self.kernels if k.gemm or not gemms_only)

    def summary(self, model: "Roofline") -> dict:
        gemms = [k for k in self.kernels if k.gemm]
        return dict(kernels=self.count, gemm_kernels=len(gemms),
                    mbytes=sum(k.bytes for k in self.kernels) / 1e6,
                    gflop=sum(k.flops for k in self.kernels) / 1e9,
                    gemm_gflop=sum(k.flops for k in gemms) / 1e9,
                    model_us=self.roofline_us(model), gemm_model_us=self.roofline_us(model, gemms_only=True),
                    syncs=sum(self.syncs.values()), uploads=self.uploads)


@dataclass(frozen=True)
class Roofline:
    """One GPU as three numbers. Defaults: an NVIDIA H200 SXM (HBM3e 4.8 TB/s; 67 TFLOP/s float32 on the CUDA
    cores: PyTorch and CuPy do not use TF32 tensor cores for float32 matmuls unless asked) and ~5 us per launch
    from Python through a library's dispatcher."""

    launch_us: float = 5.0
    bandwidth_tb_s: float = 4.8
    peak_tflop_s: float = 67.0

    def kernel_us(self, kernel: Kernel) -> float:
        return max(self.launch_us, kernel.bytes / (self.bandwidth_tb_s * 1e6), kernel.flops / (self.peak_tflop_s * 1e6))


def _copies_onto_itself(name, args) -> bool:
    """``copy_`` of a tensor onto the same memory (``a[i] += b`` then assigns the view to itself): PyTorch returns
    at once without a kernel."""
    if name != "copy_" or len(args) < 2:
        return False
    dst, src = args[:2]
    return (dst.untyped_storage().data_ptr() == src.untyped_storage().data_ptr()
            and dst.storage_offset() == src.storage_offset() and dst.stride() == src.stride()
            and dst.shape == src.shape and dst.dtype == src.dtype)


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


class KernelCounter:
    """Counts what the code run inside ``with KernelCounter() as counts:`` issues on PyTorch tensors.

    ``counts`` is a :class:`Counts`. NumPy conversions of a tensor (``np.asarray(t)``, ``t.numpy()``,
    ``t.tolist()``) are recorded as ``to_host`` syncs: they never reach the dispatcher on CPU tensors, so the
    tensor methods are wrapped while the counter is active.
    """

    def __init__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counts = self.counts = Counts()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                name = func._overloadpacket.__name__
                if name == "_local_scalar_dense":
                    counts.syncs[name] += 1
                elif name == "lift_fresh":
                    counts.uploads += 1
                elif not (func.is_view or name in NO_KERNEL or _copies_onto_itself(name, args)):
                    tensors_in = [t for t in torch.utils._pytree.tree_leaves((args, kwargs))
                                  if isinstance(t, torch.Tensor)]
                    tensors_out = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
                    moved = sum(map(_nbytes, tensors_in)) + sum(map(_nbytes, tensors_out))
                    flop_fn = flop_registry.get(func._overloadpacket)
                    if flop_fn is not None:
                        flops = float(flop_fn(*args, **kwargs, out_val=out))
                    else:
                        flops = float(sum(t.numel() for t in tensors_out))
                    counts.kernels.append(Kernel(name, moved, flops, name in GEMMS))
                return out

        self._mode = Mode()
        self._torch = torch
        self._patches = contextlib.ExitStack()

    def __enter__(self) -> Counts:
        tensor = self._torch.Tensor
        for method in ("__array__", "numpy", "tolist"):
            original = getattr(tensor, method)

            def wrapper(t, *args, _original=original, _method=method, **kwargs):
                self.counts.syncs["to_host"] += 1
                return _original(t, *args, **kwargs)

            setattr(tensor, method, wrapper)
            self._patches.callback(setattr, tensor, method, original)
        self._mode.__enter__()
        return self.counts

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        self._patches.close()
        return False


def count(fn, *args, **kwargs) -> Counts:
    """The :class:`Counts` of ``fn(*args, **kwargs)``."""
    with KernelCounter() as counts:
        fn(*args, **kwargs)
    return counts


# ---------------------------------------------------------------------------------------------------- the workloads

def _tensor(torch, rng, shape, scale=1.0):
    return torch.asarray((rng.standard_normal(shape) * scale).astype(np.float32))


def op_pairs(torch, tiny=False):
    """``{name: (xpcnn's forward + backward, PyTorch's autograd forward + backward)}`` on bench_layers' workloads
    (float32; ``tiny``: small shapes, for the smoke test)."""
    import xpcnn.functional as F

    rng = np.random.default_rng(0)
    n, c, size = (2, 4, 12) if tiny else (32, 64, 32)
    x = _tensor(torch, rng, (n, c, size, size))
    w = _tensor(torch, rng, (c, c, 3, 3), 0.1)
    b = _tensor(torch, rng, (c,))
    x_b = _tensor(torch, rng, (4 if tiny else 64, 1, 28, 28))
    w_b = _tensor(torch, rng, (6, 1, 5, 5), 0.1)
    x_e = _tensor(torch, rng, (n, c, size // 2, size // 2))
    w_e = _tensor(torch, rng, (c, c, 4, 4), 0.1)
    gamma, beta = _tensor(torch, rng, (c,)), _tensor(torch, rng, (c,))
    logits = _tensor(torch, rng, (n, 10))
    target = torch.asarray(rng.integers(0, 10, n))
    fc_x, fc_w, fc_b = _tensor(torch, rng, (n, 256)), _tensor(torch, rng, (128, 256), 0.1), _tensor(torch, rng, (128,))
    tf = torch.nn.functional

    def pair(forward, backward, *arrays, **options):
        def ours():
            out, cache = forward(*arrays, **options)
            backward(out, cache)
        return ours

    def theirs(fn, *arrays, **options):
        def run():
            leaves = [a.detach().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a
                      for a in arrays]
            out = fn(*leaves, **options)
            out.backward(out.detach() if out.ndim else None)
        return run

    pairs = {
        "conv2d (c)": (pair(F.conv2d_forward, F.conv2d_backward, x, w, b, padding=1),
                       theirs(tf.conv2d, x, w, b, padding=1)),
        "conv2d (b)": (pair(F.conv2d_forward, F.conv2d_backward, x_b, w_b),
                       theirs(tf.conv2d, x_b, w_b)),
        "conv_transpose2d (e)": (pair(F.conv_transpose2d_forward, F.conv_transpose2d_backward, x_e, w_e, b,
                                      stride=2, padding=1),
                                 theirs(tf.conv_transpose2d, x_e, w_e, b, stride=2, padding=1)),
    }
    for kind, fwd, bwd, ref in (("max", F.max_pool2d_forward, F.max_pool2d_backward, tf.max_pool2d),
                                ("avg", F.avg_pool2d_forward, F.avg_pool2d_backward, tf.avg_pool2d)):
        pairs[f"{kind}_pool2d 2x2/s2 (c)"] = (pair(fwd, bwd, x, 2), theirs(ref, x, 2))
        for stride in (1, 2):
            pairs[f"{kind}_pool2d 3x3/s{stride} (d)"] = (pair(fwd, bwd, x, 3, stride=stride, padding=1),
                                                         theirs(ref, x, 3, stride=stride, padding=1))
    pairs["adaptive_avg_pool2d 1 (g)"] = (pair(F.adaptive_avg_pool2d_forward, F.adaptive_avg_pool2d_backward, x, 1),
                                          theirs(tf.adaptive_avg_pool2d, x, 1))
    pairs["relu (c)"] = (pair(F.relu_forward, F.relu_backward, x), theirs(tf.relu, x))
    pairs["batch_norm2d (c)"] = (pair(F.batch_norm2d_forward, F.batch_norm2d_backward, x, gamma, beta),
                                 theirs(lambda x, g, b: tf.batch_norm(x, None, None, g, b, training=True),
                                        x, gamma, beta))
    pairs["linear 256->128"] = (pair(F.linear_forward, F.linear_backward, fc_x, fc_w, fc_b),
                                theirs(tf.linear, fc_x, fc_w, fc_b))

    def ours_ce(check_targets):
        def run():
            loss, cache = F.softmax_cross_entropy_forward(logits, target, check_targets=check_targets)
            F.softmax_cross_entropy_backward(1.0, cache)
        return run

    def theirs_ce():
        leaf = logits.detach().requires_grad_(True)
        tf.cross_entropy(leaf, target).backward()

    pairs["softmax_cross_entropy"] = (ours_ce(False), theirs_ce)  # as fit calls it: targets checked once, before
    pairs["softmax_cross_entropy, targets checked"] = (ours_ce(True), theirs_ce)  # the default: one sync
    return pairs


def digits_step(torch, batch_size=32):
    """(xpcnn's, PyTorch's) digits LeNet training step on float32 CPU tensors: zero_grad, forward, cross-entropy,
    backward, Adam, as examples/train_digits.py trains it; each already run once (Adam's state exists)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    import bench_train
    import xpcnn
    from train_digits import lenet
    from xpcnn import nn

    rng = np.random.default_rng(0)
    x = torch.asarray(rng.random((batch_size, 1, 8, 8), dtype=np.float32))
    y = torch.asarray(rng.integers(0, 10, batch_size))
    model = lenet(torch)
    net = bench_train.torch_lenet(torch, model, "cpu")
    optimizer, torch_optimizer = xpcnn.optim.Adam(model.parameters(), lr=1e-3), torch.optim.Adam(net.parameters())
    loss_fn = nn.CrossEntropyLoss(check_targets=False)  # fit checks the targets once, not at every step

    def ours():
        optimizer.zero_grad()
        loss = loss_fn(model.forward(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()

    def theirs():
        torch_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        torch_optimizer.step()

    ours(), theirs()
    return ours, theirs


def measure(tiny=False, model=Roofline()):
    """Rows of the table: every op pair and the digits step, xpcnn under each profile and PyTorch."""
    import torch

    import xpcnn

    torch.set_num_threads(1)
    pairs = op_pairs(torch, tiny)
    pairs["digits training step"] = digits_step(torch, 4 if tiny else 32)
    rows = []
    for name, (ours, theirs) in pairs.items():
        row = dict(op=name, budget=BUDGETS.get(name))
        for profile in ("host", "accelerator"):
            with xpcnn.config.device_profile(profile):
                ours()  # index arrays and other per-geometry caches are built on the first call
                counts = count(ours)
            summary = counts.summary(model)
            row[profile] = dict(summary, by_name=dict(counts.by_name().most_common()))
        theirs()
        row["torch"] = count(theirs).summary(model)
        rows.append(row)
    return rows


def table_rows(rows):
    flat = []
    for row in rows:
        host, acc, ref = row["host"], row["accelerator"], row["torch"]
        met = None if row["budget"] is None else ("yes" if acc["kernels"] <= row["budget"] else "NO")
        flat.append({"op (forward + backward)": row["op"], "host": host["kernels"], "accelerator": acc["kernels"],
                     "budget": row["budget"], "met": met, "torch": ref["kernels"],
                     "MB moved (acc.)": acc["mbytes"], "GFLOP (acc.)": acc["gflop"],
                     "model us (acc.)": acc["model_us"], "GEMMs alone us": acc["gemm_model_us"],
                     "torch model us": ref["model_us"], "syncs": acc["syncs"], "uploads": acc["uploads"]})
    return flat


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes (smoke test)")
    parser.add_argument("--launch-us", type=float, default=Roofline.launch_us, help="model: microseconds a launch")
    parser.add_argument("--bandwidth-tb-s", type=float, default=Roofline.bandwidth_tb_s, help="model: TB/s")
    parser.add_argument("--peak-tflop-s", type=float, default=Roofline.peak_tflop_s, help="model: TFLOP/s")
    parser.add_argument("--json", type=Path, default=None, help="write the rows (with kernels by name) here")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    json_path = common.output_path(args.json)
    model = Roofline(args.launch_us, args.bandwidth_tb_s, args.peak_tflop_s)
    rows = measure(args.tiny, model)
    info = common.machine_info()
    print(f"# kernels on PyTorch CPU tensors through the dispatcher (views not counted), float32; roofline MODEL of "
          f"one GPU: {model.launch_us} us a launch, {model.bandwidth_tb_s} TB/s, {model.peak_tflop_s} TFLOP/s")
    print(f"# {common.cpu_summary(info)}")
    columns = list(table_rows(rows)[0])
    (common.print_markdown if args.markdown else common.print_table)(table_rows(rows), columns)
    if json_path:
        common.write_json(json_path, dict(benchmark="kernels", model=vars(model), tiny=args.tiny, machine=info,
                                          rows=rows))
    return rows


if __name__ == "__main__":
    main()

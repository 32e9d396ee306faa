"""Layer benchmarks: xpcnn against PyTorch (same device), the seed-style NumPy loops and the GEMM limit.

    python benchmarks/bench_layers.py                                  # NumPy, float32, all workloads
    python benchmarks/bench_layers.py --dtype float64 --json f64.json
    python benchmarks/bench_layers.py --backend cupy                   # GPU; PyTorch CUDA as the reference
    python benchmarks/bench_layers.py --workload c --repeats 15

For each workload, op and pass (forward, forward+backward) it prints the median time with min and max over
``--repeats`` rounds (contenders interleaved in every round, after a warm-up), the ratio to PyTorch (of the medians,
and the median of the ratios within each round), GFLOP/s, the
share of the GEMM limit (the matrix products an im2col convolution of that shape needs, timed alone) and peak
memory (NumPy: tracemalloc; CUDA: the allocators' peaks), also as a multiple of input + output + weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

import xpcnn.functional as F  # noqa: E402

GLOBAL = ("global_avg", None, None, None)  # adaptive_avg_pool2d(x, 1), against xp.mean and PyTorch

# name: (x shape, weight shape, conv options, pooling ops after the convolution) -- NCHW
WORKLOADS = {
    "a": dict(x=(2, 1, 6, 6), w=(1, 1, 3, 3), conv=dict(), pools=[("max", 2, 2, 0)], seed=True),
    "b": dict(x=(64, 1, 28, 28), w=(6, 1, 5, 5), conv=dict(), pools=[("max", 2, 2, 0)], seed=True),
    "c": dict(x=(32, 64, 32, 32), w=(64, 64, 3, 3), conv=dict(padding=1),
              pools=[("max", 2, 2, 0), ("avg", 2, 2, 0)], seed=True),
    "d": dict(x=(32, 64, 32, 32), w=None, conv=None,
              pools=[("max", 3, 1, 1), ("max", 3, 2, 1), ("avg", 3, 1, 1), ("avg", 3, 2, 1)], seed=False),
    # transposed convolution, x 32x64x16x16 -> 32x64x32x32 (weight: in, out, kh, kw), beside xpcnn's conv2d of the
    # mirrored shape, 32x64x32x32 -> 32x64x16x16: the same matrix products
    "e": dict(x=(32, 64, 16, 16), w=(64, 64, 4, 4), conv=None, transposed=dict(stride=2, padding=1), pools=[],
              seed=False),
    # global average pooling (adaptive_avg_pool2d to 1x1): a ResNet's last feature map, and a larger one
    "f": dict(x=(32, 512, 7, 7), w=None, conv=None, pools=[GLOBAL], seed=False),
    "g": dict(x=(32, 64, 32, 32), w=None, conv=None, pools=[GLOBAL], seed=False),
}
TINY = dict(a=(2, 1, 6, 6), b=(4, 1, 28, 28), c=(2, 4, 12, 12), d=(2, 4, 12, 12), e=(2, 4, 6, 6), f=(2, 8, 7, 7),
            g=(2, 4, 12, 12))


def conv_flops(x_shape, w_shape, out_shape):
    o, cg, kh, kw = w_shape
    return 2.0 * out_shape[0] * o * cg * kh * kw * out_shape[2] * out_shape[3]


class Workload:
    """Inputs of one workload on the backend, on PyTorch's device, and on the host for the seed-style loops."""

    def __init__(self, name, spec, backend, dtype, tiny):
        rng = np.random.default_rng(0)
        x_shape = TINY[name] if tiny else spec["x"]
        self.name, self.spec, self.backend = name, spec, backend
        self.x_host = rng.standard_normal(x_shape).astype(dtype)
        self.x = backend.asarray(self.x_host)
        self.x_torch = backend.torch_tensor(self.x_host, requires_grad=True)
        if spec.get("transposed") is not None:
            w_shape = (x_shape[1], x_shape[1], *spec["w"][2:]) if tiny else spec["w"]
            self.w_host = (rng.standard_normal(w_shape) * 0.1).astype(dtype)
            self.b_host = np.zeros(w_shape[1], dtype=dtype)
            self.w, self.b = backend.asarray(self.w_host), backend.asarray(self.b_host)
            self.w_torch = backend.torch_tensor(self.w_host, requires_grad=True)
            self.b_torch = backend.torch_tensor(self.b_host, requires_grad=True)
            out_host = F.conv_transpose2d_forward(self.x_host, self.w_host, **spec["transposed"])[0]
            self.mirror_x = backend.asarray(rng.standard_normal(out_host.shape).astype(dtype))
            self.mirror_w = backend.asarray((rng.standard_normal(w_shape) * 0.1).astype(dtype))  # (out, in, kh, kw)
            self.mirror_b = backend.asarray(np.zeros(w_shape[0], dtype=dtype))
        if spec["conv"] is not None:
            w_shape = (min(spec["w"][0], x_shape[1] * 16), x_shape[1], *spec["w"][2:]) if tiny else spec["w"]
            self.w_host = (rng.standard_normal(w_shape) * 0.1).astype(dtype)
            self.b_host = np.zeros(w_shape[0], dtype=dtype)
            self.w, self.b = backend.asarray(self.w_host), backend.asarray(self.b_host)
            self.w_torch = backend.torch_tensor(self.w_host, requires_grad=True)
            self.b_torch = backend.torch_tensor(self.b_host, requires_grad=True)


def conv_contenders(work, with_backward):
    be, opts = work.backend, work.spec["conv"]
    torch_f = be.torch.nn.functional

    def ours():
        out, cache = F.conv2d_forward(work.x, work.w, work.b, **opts)
        if with_backward:
            F.conv2d_backward(out, cache)

    def theirs():
        out = torch_f.conv2d(work.x_torch, work.w_torch, work.b_torch, **opts)
        if with_backward:
            out.backward(out.detach())

    contenders = {"xpcnn": ours, "torch": theirs, "gemm-limit": gemm_limit(work, with_backward)}
    if work.spec["seed"] and be.name == "numpy":
        contenders["seed-style"] = lambda: seed_conv(work.x_host, work.w_host, opts.get("padding", 0), with_backward)
    return contenders


def conv_transpose_contenders(work, with_backward):
    """conv_transpose2d in xpcnn and PyTorch, and xpcnn's conv2d of the mirrored shape (its input the size of the
    transposed convolution's output): the same products, read the other way round."""
    opts = work.spec["transposed"]
    torch_f = work.backend.torch.nn.functional

    def ours():
        out, cache = F.conv_transpose2d_forward(work.x, work.w, work.b, **opts)
        if with_backward:
            F.conv_transpose2d_backward(out, cache)

    def theirs():
        out = torch_f.conv_transpose2d(work.x_torch, work.w_torch, work.b_torch, **opts)
        if with_backward:
            out.backward(out.detach())

    def mirror():
        out, cache = F.conv2d_forward(work.mirror_x, work.mirror_w, work.mirror_b, **opts)
        if with_backward:
            F.conv2d_backward(out, cache)

    return {"xpcnn": ours, "torch": theirs, "xpcnn-conv2d-mirror": mirror}


def gemm_limit(work, with_backward):
    """The matrix products of an im2col convolution of this shape, on prepared operands, timed alone."""
    xp = work.backend.xp
    n, c, h, w = work.x_host.shape
    o, cg, kh, kw = work.w_host.shape
    out_shape = F.conv2d_forward(work.x_host[:1], work.w_host, **work.spec["conv"])[0].shape
    p = out_shape[2] * out_shape[3]
    rng = np.random.default_rng(1)
    make = lambda *shape: work.backend.asarray(rng.standard_normal(shape).astype(work.x_host.dtype))  # noqa: E731
    weight, cols, dout = make(o, cg * kh * kw), make(n, cg * kh * kw, p), make(n, o, p)

    def run():
        xp.matmul(weight, cols)
        if with_backward:
            xp.sum(xp.matmul(dout, xp.matrix_transpose(cols)), axis=0)
            xp.matmul(xp.matrix_transpose(weight), dout)

    return run


def global_pool_contenders(work, with_backward):
    """Global average pooling: xpcnn's adaptive_avg_pool2d(x, 1), PyTorch's, and the floor: ``xp.mean`` over H and
    W (and for the backward pass, ``dout / (H * W)`` broadcast into a new array)."""
    be, x, x_torch = work.backend, work.x, work.x_torch
    xp, (height, width) = be.xp, work.x_host.shape[2:]

    def ours():
        out, cache = F.adaptive_avg_pool2d_forward(x, 1)
        if with_backward:
            F.adaptive_avg_pool2d_backward(out, cache)

    def theirs():
        out = be.torch.nn.functional.adaptive_avg_pool2d(x_torch, 1)
        if with_backward:
            out.backward(out.detach())

    def mean():
        out = xp.mean(x, axis=(2, 3), keepdims=True)
        if with_backward:
            xp.asarray(xp.broadcast_to(out / (height * width), x.shape), copy=True)

    return {"xpcnn": ours, "torch": theirs, "xp.mean": mean}


def pool_contenders(work, kind, kernel, stride, padding, with_backward, source):
    be = work.backend
    forward = F.max_pool2d_forward if kind == "max" else F.avg_pool2d_forward
    backward = F.max_pool2d_backward if kind == "max" else F.avg_pool2d_backward
    torch_pool = be.torch.nn.functional.max_pool2d if kind == "max" else be.torch.nn.functional.avg_pool2d
    x, x_torch, x_host = source

    def ours():
        out, cache = forward(x, kernel, stride=stride, padding=padding)
        if with_backward:
            backward(out, cache)

    def theirs():
        out = torch_pool(x_torch, kernel, stride, padding)
        if with_backward:
            out.backward(out.detach())

    contenders = {"xpcnn": ours, "torch": theirs}
    if work.spec["seed"] and be.name == "numpy" and stride == kernel and padding == 0:
        contenders["seed-style"] = lambda: seed_pool(kind, x_host, kernel, with_backward)
    return contenders


def seed_conv(x, w, padding, with_backward):
    """The tutorials' convolution: per sample, per output and input channel, scipy.signal loops."""
    from scipy.signal import convolve2d, correlate2d

    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, c = x.shape[:2]
    o = w.shape[0]
    out = np.stack([np.stack([sum(correlate2d(xp[i, ci], w[oi, ci], mode="valid") for ci in range(c))
                              for oi in range(o)]) for i in range(n)])
    if with_backward:
        dout = out
        dw = np.zeros_like(w)
        dxp = np.zeros_like(xp)
        for i in range(n):
            for oi in range(o):
                for ci in range(c):
                    dw[oi, ci] += correlate2d(xp[i, ci], dout[i, oi], mode="valid")
                    dxp[i, ci] += convolve2d(dout[i, oi], w[oi, ci], mode="full")
    return out


def seed_pool(kind, a, k, with_backward):
    """The tutorials' pooling: skimage's block_reduce, and for max pooling an equality mask with np.repeat."""
    from skimage.measure import block_reduce

    pooled = block_reduce(a, (1, 1, k, k), np.max if kind == "max" else np.mean)
    if with_backward:
        up = pooled.repeat(k, axis=2).repeat(k, axis=3)
        h, w = (a.shape[2] // k) * k, (a.shape[3] // k) * k
        if kind == "max":
            return (a[..., :h, :w] == up[..., :h, :w]) * up[..., :h, :w]
        return up / (k * k)
    return pooled


def seed_conv_pool(work, kind, with_backward):
    def run():
        out = seed_conv(work.x_host, work.w_host, work.spec["conv"].get("padding", 0), with_backward)
        seed_pool(kind, out, 2, with_backward)

    return run


def bench(args):
    if args.backend == "numpy":  # the seed-style contenders' libraries, imported before any timing
        import scipy.signal  # noqa: F401
        import skimage.measure  # noqa: F401
    dtype = np.dtype(args.dtype)
    backend = common.Backend(args.backend, args.device, args.dtype)
    rows = []
    for name in args.workload:
        spec = WORKLOADS[name]
        work = Workload(name, spec, backend, dtype, args.tiny)
        cases = []
        if spec.get("transposed") is not None:
            flops = conv_flops(None, work.w_host.shape, work.x_host.shape)  # the mirrored conv2d's output is x's size
            for with_backward in (False, True):
                cases.append(("conv_transpose2d", with_backward, conv_transpose_contenders(work, with_backward),
                              flops * (3 if with_backward else 1)))
        if spec["conv"] is not None:
            conv_out = F.conv2d_forward(work.x_host, work.w_host, **spec["conv"])[0]
            flops = conv_flops(work.x_host.shape, work.w_host.shape, conv_out.shape)
            for with_backward in (False, True):
                cases.append(("conv2d", with_backward, conv_contenders(work, with_backward), flops * (3 if with_backward else 1)))
            pool_source = (backend.asarray(conv_out), backend.torch_tensor(conv_out, requires_grad=True), conv_out)
            if spec["seed"] and backend.name == "numpy":
                for kind in {p[0] for p in spec["pools"]}:
                    for with_backward in (False, True):
                        cases.append((f"conv2d+{kind}_pool", with_backward, conv_pool_contenders(work, kind, with_backward), None))
        else:
            pool_source = (work.x, work.x_torch, work.x_host)
        for kind, kernel, stride, padding in spec["pools"]:
            for with_backward in (False, True):
                if kind == "global_avg":
                    cases.append(("global_avg_pool", with_backward, global_pool_contenders(work, with_backward), None))
                    continue
                op = f"{kind}_pool{kernel}x{kernel}/s{stride}/p{padding}"
                cases.append((op, with_backward, pool_contenders(work, kind, kernel, stride, padding, with_backward, pool_source), None))
        for op, with_backward, contenders, flops in cases:
            slow = {k: v for k, v in contenders.items() if k == "seed-style"}
            fast = {k: v for k, v in contenders.items() if k != "seed-style"}
            timings = common.time_interleaved(fast, args.repeats, backend.sync, settle_s=args.settle)
            if slow:  # the tutorials' loops: one cold run on the large workload (c), else as the others
                large = name == "c" and not args.tiny
                timings.update(common.time_interleaved(slow, 1 if large else args.repeats, backend.sync,
                                                       warmup=0 if large else 1, settle_s=args.settle))
            reference = timings["torch"]["median_ms"] if "torch" in timings else None
            mirror = timings.get("xpcnn-conv2d-mirror")
            limit = timings.get("gemm-limit", {}).get("median_ms")
            base = _base_bytes(work, op)
            for contender, t in timings.items():
                row = dict(workload=name, op=op, **{"pass": "fwd+bwd" if with_backward else "fwd"},
                           contender=contender, **t)
                row["vs_torch"] = t["median_ms"] / reference if reference else None
                paired = reference and contender in fast  # timed in the same rounds as PyTorch
                row["vs_torch_rounds"] = common.paired_ratio(t, timings["torch"]) if paired else None
                row["gflops"] = flops / t["median_ms"] / 1e6 if flops else None
                if contender == "xpcnn" and limit:
                    row["gemm_share"] = limit / t["median_ms"]
                if contender == "xpcnn" and mirror:  # against xpcnn's conv2d of the mirrored shape
                    row["vs_mirror"] = t["median_ms"] / mirror["median_ms"]
                    row["vs_mirror_rounds"] = common.paired_ratio(t, mirror)
                if contender in ("xpcnn", "torch", "xpcnn-conv2d-mirror") and not args.no_memory:
                    library = "torch" if contender == "torch" else backend.name
                    peak = backend.peak_memory_mb(contenders[contender], library)
                    row["peak_mb"] = peak
                    row["peak_vs_io"] = peak / base if peak is not None else None
                rows.append(row)
    return rows


def conv_pool_contenders(work, kind, with_backward):
    be, opts = work.backend, work.spec["conv"]
    forward = F.max_pool2d_forward if kind == "max" else F.avg_pool2d_forward
    backward = F.max_pool2d_backward if kind == "max" else F.avg_pool2d_backward

    def ours():
        out, conv_cache = F.conv2d_forward(work.x, work.w, work.b, **opts)
        pooled, pool_cache = forward(out, 2)
        if with_backward:
            F.conv2d_backward(backward(pooled, pool_cache), conv_cache)

    return {"xpcnn": ours, "seed-style": seed_conv_pool(work, kind, with_backward)}


def _base_bytes(work, op):
    """Input + output + weights in MiB: what the peak memory is compared with."""
    x = work.x_host.nbytes
    if op == "conv_transpose2d":  # x is as large as the output of the mirrored conv2d, and the other way round
        out = F.conv_transpose2d_forward(work.x_host[:1], work.w_host, **work.spec["transposed"])[0]
        return (x + out.nbytes * work.x_host.shape[0] + work.w_host.nbytes + work.b_host.nbytes) / 2**20
    if op == "conv2d":
        out = F.conv2d_forward(work.x_host[:1], work.w_host, **work.spec["conv"])[0].nbytes * work.x_host.shape[0]
        return (x + out + work.w_host.nbytes + work.b_host.nbytes) / 2**20
    return 2 * x / 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["numpy", "cupy", "torch"], default="numpy")
    parser.add_argument("--device", default=None, help="PyTorch device for --backend torch (cpu, cuda)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--workload", nargs="+", choices=sorted(WORKLOADS), default=sorted(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 7; 3 with --tiny)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds each contender runs untimed before its timed call in every round "
                             "(default 0.2; 0.05 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: every code path in about a minute")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    json_path = common.output_path(args.json)  # checked (its folder made) before measuring
    if args.repeats is None:
        args.repeats = 3 if args.tiny else 7
    if args.settle is None:
        args.settle = 0.05 if args.tiny else 0.2
    state_before = common.machine_state(quick=args.tiny)
    rows = bench(args)
    info = common.machine_info()
    info["state"] = dict(before=state_before, after=common.machine_state(quick=args.tiny))
    print(f"# {args.backend} {args.dtype}; {common.cpu_summary(info)}; BLAS {info['blas']}; torch {info.get('torch')}")
    state = info["state"]
    print(f"# machine state (host copy GB/s, GEMM GFLOP/s) before {state['before']}, after {state['after']}")
    common.print_table(rows, ["workload", "op", "pass", "contender", "median_ms", "min_ms", "max_ms", "vs_torch",
                              "vs_torch_rounds", "vs_mirror", "vs_mirror_rounds", "gflops", "gemm_share", "peak_mb",
                              "peak_vs_io"])
    if json_path:
        common.write_json(json_path, dict(benchmark="layers", backend=args.backend, dtype=args.dtype,
                                          machine=info, rows=rows))
    return rows


if __name__ == "__main__":
    main()

"""Differential fuzzing of xpcnn.nn against torch.nn: random layers (Conv2d, ConvTranspose2d, the pools, the norms,
Upsample, activations, Dropout(0)) with random constructor arguments, and containers (Sequential, Residual with and
without a shortcut, Concat along a positive or negative dim) nesting them, NCHW or (single layers) NHWC, training
or evaluation, float32 or float64. The torch model's random parameters and buffers (running statistics,
num_batches_tracked) are loaded with :func:`xpcnn.interop.torch.load_torch_state_dict`; one or two steps compare
the output, the input gradient, every parameter gradient and every buffer afterwards. tests/test_fuzz.py runs a
seeded sample; a deep campaign: ``PYTHONPATH=. python -m tests.differential_nn 3000 SEED``.
"""
from __future__ import annotations

import collections
import random
import sys
import traceback
import warnings

import numpy as np
import torch

from xpcnn import nn
from xpcnn.interop.torch import load_torch_state_dict

from tests.differential import Mismatch, as2, compare, pair, variant

TN = torch.nn


META = {}


class TResidual(TN.Module):
    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class TConcat(TN.Module):
    def __init__(self, *branches, dim=1):
        super().__init__()
        for i, b in enumerate(branches):
            self.add_module(str(i), b)
        self.dim = dim

    def forward(self, x):
        return torch.cat([m(x) for m in self._modules.values()], self.dim)


# Each builder: (r, C, H, W) -> (xp_module, torch_module, C_out, H_out, W_out) keeping NCHW; fmt per layer
def b_conv(r, C, H, W, fmt="NCHW"):
    g = r.choice([g for g in (1, 2, 3) if C % g == 0])
    cout = g * r.randint(1, 3)
    k = pair(r, [1, 2, 3])
    stride, dil = pair(r, [1, 1, 2]), pair(r, [1, 1, 2])
    padding = r.choice([0, 1, (1, 0), "valid"] + (["same"] if as2(stride) == (1, 1) else []))
    bias = r.random() < 0.7
    kw = dict(stride=stride, padding=padding, dilation=dil, groups=g, bias=bias)
    t = TN.Conv2d(C, cout, k, **kw).double()
    x = nn.Conv2d(C, cout, k, **kw, data_format=fmt, algorithm=r.choice(["auto", "im2col"]))
    return x, t


def b_convt(r, C, H, W, fmt="NCHW"):
    g = r.choice([g for g in (1, 2, 3) if C % g == 0])
    cout = g * r.randint(1, 3)
    k = pair(r, [1, 2, 3])
    stride, dil = pair(r, [1, 1, 2]), pair(r, [1, 1, 2])
    s, d = as2(stride), as2(dil)
    op = tuple(r.randint(0, max(a, b) - 1) for a, b in zip(s, d))
    kw = dict(stride=stride, padding=r.choice([0, 1]), output_padding=op, groups=g, bias=r.random() < 0.7,
              dilation=dil)
    return nn.ConvTranspose2d(C, cout, k, **kw, data_format=fmt), TN.ConvTranspose2d(C, cout, k, **kw).double()


def b_maxpool(r, C, H, W, fmt="NCHW"):
    k = pair(r, [1, 2, 3])
    kk = as2(k)
    kw = dict(stride=r.choice([None, 1, 2]), padding=(r.randint(0, kk[0] // 2), r.randint(0, kk[1] // 2)),
              dilation=pair(r, [1, 2]), ceil_mode=r.random() < 0.5)
    if as2(kw["dilation"]) != (1, 1):  # all-padding windows: torch's backward writes out of bounds (crashes)
        kw["padding"] = 0
    return nn.MaxPool2d(k, **kw, data_format=fmt), TN.MaxPool2d(k, **kw)


def b_avgpool(r, C, H, W, fmt="NCHW"):
    k = pair(r, [1, 2, 3])
    kk = as2(k)
    kw = dict(stride=r.choice([None, 1, 2]), padding=(r.randint(0, kk[0] // 2), r.randint(0, kk[1] // 2)),
              ceil_mode=r.random() < 0.5, count_include_pad=r.random() < 0.5,
              divisor_override=r.choice([None, None, 2, 5]))
    return nn.AvgPool2d(k, **kw, data_format=fmt), TN.AvgPool2d(k, **kw)


def b_adaptive(r, C, H, W, fmt="NCHW"):
    size = r.choice([1, 2, 3, (2, None), (None, 3), (5, 4)])
    if r.random() < 0.5:
        return nn.AdaptiveAvgPool2d(size, data_format=fmt), TN.AdaptiveAvgPool2d(size)
    return nn.AdaptiveMaxPool2d(size, data_format=fmt), TN.AdaptiveMaxPool2d(size)


def b_bn(r, C, H, W, fmt="NCHW"):
    kw = dict(eps=r.choice([1e-5, 1e-3]), momentum=r.choice([0.1, 0.3, None]), affine=r.random() < 0.7,
              track_running_stats=r.random() < 0.8)
    return nn.BatchNorm2d(C, **kw, data_format=fmt), TN.BatchNorm2d(C, **kw).double()


def b_gn(r, C, H, W, fmt="NCHW"):
    G = r.choice([g for g in (1, 2, 3) if C % g == 0])
    kw = dict(eps=r.choice([1e-5, 1e-3]), affine=r.random() < 0.7)
    return nn.GroupNorm(G, C, **kw, data_format=fmt), TN.GroupNorm(G, C, **kw).double()


def b_ln(r, C, H, W, fmt="NCHW"):
    shape = r.choice([(W,), (H, W), (C, H, W)])
    kw = dict(eps=r.choice([1e-5, 1e-3]), elementwise_affine=r.random() < 0.7)
    if kw["elementwise_affine"]:
        kw["bias"] = r.random() < 0.7
    return nn.LayerNorm(shape, **kw), TN.LayerNorm(shape, **kw).double()


def b_upsample(r, C, H, W, fmt="NCHW"):
    mode = r.choice(["nearest", "nearest-exact", "bilinear"])
    kw = dict(mode=mode)
    if mode == "bilinear":
        kw["align_corners"] = r.choice([False, True])
    if r.random() < 0.5:
        kw["scale_factor"] = r.choice([2, 1.5, 0.5, (2, 1.3), 2.2])
    else:
        kw["size"] = r.choice([(3, 5), 4, (1, 7)])
    return nn.Upsample(**kw, data_format=fmt), TN.Upsample(**kw)


def b_act(r, C, H, W, fmt="NCHW"):
    name = r.choice(["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "SiLU", "ELU", "Identity", "Dropout"])
    if name == "LeakyReLU":
        s = r.choice([0.01, 0.3])
        return nn.LeakyReLU(s), TN.LeakyReLU(s)
    if name == "GELU":
        a = r.choice(["none", "tanh"])
        return nn.GELU(a), TN.GELU(a)
    if name == "ELU":
        a = r.choice([1.0, 0.5])
        return nn.ELU(a), TN.ELU(a)
    if name == "Dropout":
        return nn.Dropout(0.0), TN.Dropout(0.0)
    return getattr(nn, name)(), getattr(TN, name)()


SPATIAL = {"conv": b_conv, "convt": b_convt, "maxpool": b_maxpool, "avgpool": b_avgpool, "adaptive": b_adaptive,
           "bn": b_bn, "gn": b_gn, "upsample": b_upsample}
ANY = {**SPATIAL, "ln": b_ln, "act": b_act}


def shape_after(t, shape):
    with torch.no_grad():
        return tuple(t(torch.zeros(shape, dtype=torch.float64)).shape)


def build(r, kind, shape, depth=0):
    """A pair (xp, torch) that maps NCHW `shape`; containers recurse."""
    N, C, H, W = shape
    c = r.random()
    if depth < 2 and c < 0.15:  # Sequential
        xs, ts, s = [], [], shape
        for _ in range(r.randint(1, 3)):
            x, t = build(r, r.choice(list(ANY)), s, depth + 1)
            s = shape_after(t, s)
            xs.append(x)
            ts.append(t)
        return nn.Sequential(*xs), TN.Sequential(*ts)
    if depth < 2 and c < 0.3:  # Residual: a shape-keeping body
        body_kind = r.choice(["act", "bn", "gn", "conv_same"])
        if body_kind == "conv_same":
            kw = dict(padding="same", dilation=r.choice([1, 2]), bias=r.random() < 0.5)
            k = r.choice([1, 3, (3, 1), 2])
            xb, tb = nn.Conv2d(C, C, k, **kw), TN.Conv2d(C, C, k, **kw).double()
        else:
            xb, tb = ANY[body_kind](r, C, H, W)
        if r.random() < 0.5:
            xs_, ts_ = nn.Conv2d(C, C, 1, bias=False), TN.Conv2d(C, C, 1, bias=False).double()
            return nn.Residual(xb, xs_), TResidual(tb, ts_)
        return nn.Residual(xb), TResidual(tb)
    if depth < 2 and c < 0.45:  # Concat along channels (or a negative dim)
        branches = []
        for _ in range(r.randint(1, 3)):
            bk = r.choice(["act", "bn", "conv1"])
            if bk == "conv1":
                co = r.randint(1, 3)
                branches.append((nn.Conv2d(C, co, 1), TN.Conv2d(C, co, 1).double()))
            else:
                branches.append(ANY[bk](r, C, H, W))
        dim = r.choice([1, -3])
        return nn.Concat(*[b[0] for b in branches], dim=dim), TConcat(*[b[1] for b in branches], dim=dim)
    return ANY[kind](r, C, H, W)


def run(r, n_fmt):
    """One random model and input from ``r``: "ok", "both_reject" or "build_reject"; a Mismatch says what differs."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return _run(r, n_fmt)


def _run(r, n_fmt):
    N, C, H, W = r.choice([1, 2, 3]), r.randint(1, 4), r.randint(1, 7), r.randint(1, 7)
    if n_fmt == "NHWC":
        kind = r.choice(list(SPATIAL))
        xm, tm = SPATIAL[kind](r, C, H, W, fmt="NHWC")
    else:
        kind = r.choice(list(ANY))
        try:
            xm, tm = build(r, kind, (N, C, H, W))
        except (RuntimeError, ValueError):
            META.update(kind=kind)
            return META, "build_reject"
    dtype = r.choice([np.float64, np.float64, np.float32])
    training = r.random() < 0.6
    tm.train(training)
    xm.train(training)
    # random buffers: running stats not the defaults, batches tracked
    with torch.no_grad():
        for name, b in tm.named_buffers():
            if "running_mean" in name:
                b.copy_(torch.randn_like(b))
            elif "running_var" in name:
                b.copy_(torch.rand_like(b) + 0.5)
            elif "num_batches_tracked" in name:
                b.fill_(r.randint(0, 3))
        for p in tm.parameters():
            p.copy_(torch.randn_like(p))
    META.clear()
    META.update(kind=kind, shape=(N, C, H, W), fmt=n_fmt, training=training, dtype=np.dtype(dtype).name,
                model=repr(xm))
    xm.to(np, dtype=dtype)
    sd = {k: v.to(torch.float32) if dtype == np.float32 and v.is_floating_point() else v
          for k, v in tm.state_dict().items()}
    try:
        load_torch_state_dict(xm, sd)
    except Exception as e:
        raise Mismatch(f"load_torch_state_dict: {type(e).__name__}: {e}")
    meta = META
    steps = r.randint(1, 2)
    for step in range(steps):
        x = np.random.default_rng(r.randrange(2**32)).standard_normal((N, C, H, W)).astype(dtype)
        tx = torch.tensor(x.astype(np.float64), requires_grad=True)
        tm_ = tm
        try:
            tout = tm_(tx)
        except (RuntimeError, ValueError) as e:
            try:
                xm.forward(variant(r, np.moveaxis(x, 1, -1) if n_fmt == "NHWC" else x))
            except (ValueError, TypeError):
                return meta, "both_reject"
            if "more than 1 value per channel" in str(e) and "GroupNorm" in repr(xm):
                return meta, "documented"  # semantics.md groupnorm-one-value: xpcnn gives the bias
            raise Mismatch(f"torch rejects ({str(e)[:100]}), xpcnn accepts")
        xin = variant(r, np.ascontiguousarray(np.moveaxis(x, 1, -1)) if n_fmt == "NHWC" else x)
        try:
            out = xm.forward(xin)
        except Exception as e:
            raise Mismatch(f"torch accepts, xpcnn raises {type(e).__name__}: {e}")
        if n_fmt == "NHWC":
            out = np.moveaxis(out, -1, 1)
        tol = 1e-9 if dtype == np.float64 else 3e-4
        compare(f"step{step} out", out, tout.detach().numpy(), tol)
        dout = np.random.default_rng(r.randrange(2**32)).standard_normal(tout.shape).astype(dtype)
        xm.zero_grad()
        tm.zero_grad()
        if tout.requires_grad:
            tout.backward(torch.tensor(dout.astype(np.float64)))
        dx = xm.backward(variant(r, np.ascontiguousarray(np.moveaxis(dout, 1, -1)) if n_fmt == "NHWC" else dout))
        if n_fmt == "NHWC":
            dx = np.moveaxis(dx, -1, 1)
        if tx.grad is not None:
            compare(f"step{step} dx", dx, tx.grad.numpy(), tol)
        tparams = dict(tm.named_parameters())
        for name, p in xm.named_parameters():
            if name not in tparams:
                raise Mismatch(f"parameter {name} not in torch's")
            tg = tparams[name].grad
            if tg is None:
                continue
            if p.grad is None:
                raise Mismatch(f"{name}: no gradient")
            compare(f"step{step} d{name}", p.grad, tg.numpy(), tol)
        tbuf = dict(tm.named_buffers())
        for name, b in xm.named_buffers():
            if name in tbuf and tbuf[name] is not None:
                compare(f"step{step} buffer {name}", np.asarray(b), tbuf[name].numpy(), tol)
    return meta, "ok"


def main():
    torch.set_num_threads(1)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    stats = collections.Counter()
    fails = []
    for i in range(n):
        r = random.Random(f"nn-{seed}-{i}")
        fmt = "NHWC" if r.random() < 0.3 else "NCHW"
        meta = None
        try:
            meta, status = run(r, fmt)
            stats[status] += 1
            stats["kind:" + meta["kind"]] += 1
        except Mismatch as e:
            stats["FAIL"] += 1
            fails.append((i, str(e)[:400], dict(META)))
        except Exception as e:
            stats["CRASH"] += 1
            fails.append((i, "crash " + "".join(traceback.format_exception(e))[-600:], dict(META)))
    print(dict(stats))
    seen = collections.Counter()
    for i, msg, meta in fails:
        key = msg[:50]
        seen[key] += 1
        if seen[key] <= 3:
            print(f"[{i}] {msg}\n    {meta}")
    print(dict(seen))


if __name__ == "__main__":
    main()

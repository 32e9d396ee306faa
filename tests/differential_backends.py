"""tests/differential.py's configurations on the other backends (array-api-strict on device1, PyTorch tensors, JAX,
Dask) and under the accelerator profile (NumPy and array-api-strict), against the NumPy host result: values,
gradients, max-pool indices and running statistics, and each result's namespace, device and dtype. Slow (JAX and
Dask build per shape); a campaign, not a test::

    PYTHONPATH=. BACKENDS=dask,jax python -m tests.differential_backends N_PER_OP [SEED] [op,op,...]
"""
from __future__ import annotations

import collections
import os
import random
import sys
import traceback
import warnings

import numpy as np

import xpcnn
from tests.differential import GENS, Mismatch, compare
from xpcnn.testing.backends import available_backends, configure_array_api_strict, numpy_backend

WANTED = os.environ.get("BACKENDS", "array_api_strict-device1,torch,jax,dask").split(",")
TOL = {np.float64: 1e-10, np.float32: 2e-5}


def host_run(case, dtype, xp, dout, profile=None):
    arrays = {k: xp.asarray(v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in case.inputs.items()}
    ctx = xpcnn.config.device_profile(profile) if profile else _null()
    with ctx:
        out, cache = case.fwd(**arrays)
        extra = case.extra(None, out, cache) if case.extra and case.meta.get("extra_ok", True) else []
        d = xp.asarray(dout.astype(dtype)) if dout.ndim else xp.asarray(dout.astype(dtype))
        grads = case.bwd(d, cache)
    return out, extra, grads


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main():
    warnings.simplefilter("ignore")
    configure_array_api_strict()
    backends = {b.name: b for b in available_backends(jax_jit=False, cupy=False)}
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    ops = sys.argv[3].split(",") if len(sys.argv) > 3 else list(GENS)
    stats = collections.Counter()
    fails = []
    for op in ops:
        for i in range(n):
            r = random.Random(f"be-{seed}-{op}-{i}")
            dtype = r.choice([np.float64, np.float32])
            case = GENS[op](r)
            try:
                ref_out, ref_cache = case.fwd(**{k: v.astype(dtype) if v.dtype.kind == "f" else v
                                                 for k, v in case.inputs.items()})
            except (ValueError, TypeError):
                stats[op, "invalid"] += 1
                continue
            dout = np.random.default_rng(i).standard_normal(np.shape(ref_out))
            try:
                href = host_run(case, dtype, numpy_backend(), dout)
            except (ValueError, TypeError):
                stats[op, "invalid"] += 1
                continue
            targets = [(name, backends[name], None) for name in WANTED if name in backends]
            targets.append(("numpy-accelerator", numpy_backend(), "accelerator"))
            if r.random() < 0.5:
                targets.append(("strict-accelerator", backends["array_api_strict-device1"], "accelerator"))
            for name, b, profile in targets:
                if name == "dask" and case.meta.get("x", (0,))[0:1] == ():
                    continue
                try:
                    out, extra, grads = host_run(case, dtype, b, dout, profile)
                    tol = TOL[dtype]
                    b.assert_on_backend(out, np.dtype(dtype).name)
                    compare("out", out, np.asarray(href[0]), tol)
                    for (en, ev, _), (_, hv, _) in zip(extra, href[1]):
                        compare(en, ev, hv, tol)
                    for k in case.grads:
                        g, hg = grads.get(k), href[2].get(k)
                        if hg is None:
                            continue
                        b.assert_on_backend(g, np.dtype(dtype).name)
                        compare("d" + k, g, hg, tol)
                    stats[op, "ok"] += 1
                except (Mismatch, AssertionError) as e:
                    stats[op, "FAIL"] += 1
                    fails.append((op, i, name, np.dtype(dtype).name, str(e)[:300], case.meta))
                except Exception as e:
                    stats[op, "FAIL"] += 1
                    fails.append((op, i, name, np.dtype(dtype).name,
                                  "raises " + "".join(traceback.format_exception(e))[-500:], case.meta))
    for op in ops:
        print(f"{op:22s} runs_ok={stats[op, 'ok']:4d} invalid={stats[op, 'invalid']:3d} FAIL={stats[op, 'FAIL']}")
    seen = collections.Counter()
    for op, i, name, dt, msg, meta in fails:
        key = (op, name, msg[:40])
        seen[key] += 1
        if seen[key] <= 2:
            print(f"[{op} {i} {name} {dt}] {msg}\n    {meta}")
    print(dict(seen))


if __name__ == "__main__":
    main()

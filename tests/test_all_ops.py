"""Properties every public op has: inputs are never written, results are bitwise reproducible on every backend,
ops compile under jax.jit and stay lazy on Dask."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn.functional as F
from tests.ops import OPS, run

IDS = [op.name for op in OPS]


def _cast(xp, arrays, dtype):
    return {k: xp.asarray(v, dtype if np.issubdtype(v.dtype, np.floating) else None) for k, v in arrays.items()}


def test_registry_covers_every_public_op():
    covered = {f.__name__ for op in OPS for f in (op.forward, op.backward)}
    public = {name for name in F.__all__ if name.endswith(("_forward", "_backward"))}
    assert covered == public


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_read_only_inputs_are_never_written(op):
    rng = np.random.default_rng(0)
    arrays = op.inputs(rng)
    copies = {k: v.copy() for k, v in arrays.items()}
    for v in arrays.values():
        v.flags.writeable = False
    douts = []

    def read_only_dout(out):
        dout = rng.standard_normal(out.shape).astype(out.dtype)
        dout.flags.writeable = False
        douts.append((dout, dout.copy()))
        return dout

    run(op, arrays, read_only_dout)
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, copies[k])
    for dout, copy in douts:
        np.testing.assert_array_equal(dout, copy)


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_bitwise_deterministic(xp, op):
    """Forward and backward twice on the same inputs give the same bits (overlapping max-pool windows included:
    every gradient is added back by offset, without atomics)."""
    rng = np.random.default_rng(1)
    dtype = xp.float_dtypes()[-1][0]
    arrays = _cast(xp, op.inputs(rng), dtype)
    dout = rng.standard_normal((64,))
    dout_from = lambda out: xp.asarray(np.resize(dout, tuple(out.shape)), dtype)  # noqa: E731
    first = [xp.to_numpy(a) for a in run(op, arrays, dout_from)]
    second = [xp.to_numpy(a) for a in run(op, arrays, dout_from)]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_under_jax_jit(op):
    """The whole forward+backward compiles under jax.jit (shapes and parameters static) and equals NumPy."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(2)
    arrays = op.inputs(rng)
    expected = run(op, arrays, lambda out: np.ones(out.shape))
    compiled = jax.jit(lambda arrays: run(op, arrays, lambda out: jax.numpy.ones(out.shape, dtype=out.dtype)))
    results = compiled({k: jax.numpy.asarray(v) for k, v in arrays.items()})
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


def test_cross_entropy_out_of_range_target_under_jit_gives_nan():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    logits, target = jax.numpy.zeros((3, 4)), jax.numpy.asarray([0, 7, 2])

    def loss_and_grad(logits, target):
        loss, cache = F.softmax_cross_entropy_forward(logits, target, reduction="none")
        return loss, F.softmax_cross_entropy_backward(jax.numpy.ones(3), cache)

    loss, grad = jax.jit(loss_and_grad)(logits, target)
    assert np.isnan(np.asarray(loss)).tolist() == [False, True, False]
    assert np.isnan(np.asarray(grad)).all(axis=1).tolist() == [False, True, False]


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_dask_stays_lazy(op):
    """Forward and backward on batch-chunked Dask arrays build a graph without computing anything; computing it
    gives NumPy's values."""
    dask = pytest.importorskip("dask")
    import dask.array as da

    rng = np.random.default_rng(3)
    arrays = op.inputs(rng)
    expected = run(op, arrays, lambda out: np.ones(out.shape))
    lazy = {k: da.from_array(v, chunks=(1,) + v.shape[1:]) for k, v in arrays.items()}

    def refuse(*args, **kwargs):
        raise AssertionError("an op computed a Dask graph")

    with dask.config.set(scheduler=refuse):
        results = run(op, lazy, lambda out: da.ones(out.shape, dtype=out.dtype, chunks=(1,) + out.shape[1:]))
    for got, want in zip(results, expected, strict=True):
        assert isinstance(got, da.Array)
        np.testing.assert_allclose(got.compute(), want, rtol=1e-12, atol=1e-12)

"""xpcnn._special.erf: within 1 ulp (float64) and 2 ulp (float32) of mpmath, equal to PyTorch's on every backend,
and exact at the special values."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn._special import erf


def _points(rng):
    """Both ranges of the approximation and the joins (|x| = 1, the clamp at 6), tiny and huge values, both signs."""
    dense = np.linspace(-7.0, 7.0, 2801)
    joins = np.concatenate([np.nextafter(v, [-np.inf, np.inf]) for v in (-6.0, -1.0, 1.0, 6.0)])
    tiny = 10.0 ** rng.uniform(-300, -1, 400) * rng.choice([-1.0, 1.0], 400)
    return np.concatenate([dense, joins, tiny, rng.uniform(-6.5, 6.5, 2000), [1e10, -1e30, 5e-324, -5e-324]])


@pytest.mark.parametrize("np_dtype, max_ulp", [(np.float64, 1.0), (np.float32, 2.0)])
def test_erf_is_accurate_in_ulps(np_dtype, max_ulp):
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    x = _points(np.random.default_rng(0)).astype(np_dtype)
    x = x[np.abs(x) >= np.finfo(np_dtype).smallest_normal]  # subnormal erf values have fewer digits
    exact = np.array([float(mp.erf(mp.mpf(float(v)))) for v in x])
    got = erf(np, x)
    assert got.dtype == np_dtype
    ulp = np.spacing(np.abs(exact.astype(np_dtype))).astype(np.float64)
    assert np.max(np.abs(got.astype(np.float64) - exact) / ulp) <= max_ulp


@pytest.mark.torch_reference
def test_erf_matches_torch(xp, torch):
    """float64: within 2 ulp of torch.special.erf (each within 1 ulp of exact); float32 within 3e-7 of float64."""
    points = _points(np.random.default_rng(1))
    x = np.resize(points, (8, -(-points.size // 8)))  # 8 rows: Dask chunks the first axis by 1
    expected = torch.special.erf(torch.tensor(x)).numpy()
    for dtype, np_dtype in xp.float_dtypes():
        got = erf(xp.namespace, xp.asarray(x, dtype))
        xp.assert_on_backend(got, dtype)
        tiny = np.finfo(np_dtype).smallest_normal  # XLA flushes subnormals to 0
        rtol = 4.5e-16 if np_dtype == np.float64 else 3e-7
        np.testing.assert_allclose(xp.to_numpy(got), expected.astype(np_dtype), rtol=rtol, atol=tiny)


def test_erf_special_values(xp):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 6.0, -6.0, 1e30])
    for dtype, np_dtype in xp.float_dtypes():
        with np.errstate(all="raise", under="ignore"):
            got = xp.to_numpy(erf(xp.namespace, xp.asarray(x, dtype)))
        np.testing.assert_array_equal(got, [0.0, -0.0, 1.0, -1.0, np.nan, 1.0, -1.0, 1.0])
        assert np.signbit(got[1]) and not np.signbit(got[0])

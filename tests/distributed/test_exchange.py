"""The driver's reductions: the merge of per-shard batch norm moments against the single-process two-pass moments."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("distributed")

from xpcnn.distributed._exchange import merge_moments, ordered_sum  # noqa: E402
from xpcnn.functional.normalization import _moments  # noqa: E402


def shard_moments(x, bounds):
    """``(count, mean, var, residual)`` of each row range of x (N, C), as a synchronised batch norm contributes them."""
    parts = []
    for lo, hi in bounds:
        mean, centred, var = _moments(np, x[lo:hi], (0,), hi - lo)
        parts.append((hi - lo, mean[0], var[0], np.sum(centred, axis=0)))
    return parts


def test_a_shard_that_is_the_whole_batch_keeps_its_bits():
    x = np.random.default_rng(0).standard_normal((7, 3)) * 3 + 1
    mean, _, var = _moments(np, x, (0,), 7)
    for bounds in [[(0, 7)], [(0, 0), (0, 7), (7, 7)], [(0, 7), (7, 7)]]:
        count, m, v = merge_moments(shard_moments(x, bounds))
        assert count == 7 and np.array_equal(m, mean[0]) and np.array_equal(v, var[0])


def test_shards_of_one_sample_give_the_single_process_bits():
    x = np.random.default_rng(1).standard_normal((2, 5)) + 10.0
    mean, _, var = _moments(np, x, (0,), 2)
    count, m, v = merge_moments(shard_moments(x, [(0, 1), (1, 2), (2, 2)]))
    assert count == 2 and np.array_equal(m, mean[0]) and np.array_equal(v, var[0])


def exact_moments(x):
    """Mean and biased variance per column, in exact rational arithmetic, rounded once."""
    from fractions import Fraction

    means, variances = [], []
    for column in x.T:
        values = [Fraction(float(v)) for v in column]
        mean = sum(values) / len(values)
        means.append(float(mean))
        variances.append(float(sum((v - mean) ** 2 for v in values) / len(values)))
    return np.array(means), np.array(variances)


@pytest.mark.parametrize("bounds", [[(0, 30), (30, 61)], [(0, 21), (21, 41), (41, 61)], [(0, 60), (60, 61), (61, 61)]])
def test_uneven_shards_are_as_accurate_as_the_two_pass_moments(bounds):
    """A mean 1e4 standard deviations away from 0: the merge loses no more than the single-process two passes."""
    x = np.random.default_rng(2).standard_normal((61, 4)) * 1e-3 + 10.0
    exact_mean, exact_var = exact_moments(x)
    mean, _, var = _moments(np, x, (0,), 61)
    count, m, v = merge_moments(shard_moments(x, bounds))
    assert count == 61
    np.testing.assert_allclose(m, exact_mean, rtol=4e-16)
    np.testing.assert_allclose(mean[0], exact_mean, rtol=4e-16)
    np.testing.assert_allclose(v, exact_var, rtol=1e-15)  # without the residuals: 4e-13
    np.testing.assert_allclose(var[0], exact_var, rtol=1e-15)


def test_an_empty_batch_has_zero_moments():
    count, m, v = merge_moments([(0, np.zeros(3), np.zeros(3), None)] * 2)
    assert count == 0 and not m.any() and not v.any()


def test_ordered_sum_adds_in_rank_order_and_skips_none():
    a, b, c = np.array([1e16]), np.array([1.0]), np.array([-1e16])
    assert ordered_sum([a, None, b, c])[0] == 0.0  # ((a + b) + c): b is lost in a
    assert ordered_sum([None, None]) is None

"""The cost model: profiles chosen per device kind, forced by ``xpcnn.config.device_profile``, same results."""

import numpy as np
import pytest

import xpcnn
from xpcnn import _tuning, config
from xpcnn.functional import conv2d_backward, conv2d_forward, max_pool2d_backward, max_pool2d_forward


def test_host_arrays_get_the_host_profile():
    assert _tuning.profile_for(np.zeros(3)) is _tuning.HOST
    torch = pytest.importorskip("torch")
    assert _tuning.profile_for(torch.zeros(3)) is _tuning.HOST


def test_device_profile_forces_and_restores():
    x = np.zeros(3)
    with config.device_profile("accelerator") as profile:
        assert profile is _tuning.ACCELERATOR
        assert _tuning.profile_for(x) is _tuning.ACCELERATOR
        assert config.resolve_workspace_limit(None, x) == _tuning.ACCELERATOR.workspace_limit
    assert _tuning.profile_for(x) is _tuning.HOST


def test_device_profile_refuses_unknown_names():
    with pytest.raises(ValueError, match="device_profile must be one of"):
        with config.device_profile("gpu"):
            pass


def test_global_workspace_limit_overrides_the_profile():
    x = np.zeros(3)
    with xpcnn.workspace_limit(12345):
        with config.device_profile("accelerator"):
            assert config.resolve_workspace_limit(None, x) == 12345
    assert config.get_workspace_limit() is None


def test_results_equal_under_both_profiles():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 9, 9))
    w = rng.standard_normal((4, 3, 3, 3))
    dout = rng.standard_normal((5, 4, 9, 9))
    results = []
    for name in ("host", "accelerator"):
        with config.device_profile(name):
            out, cache = conv2d_forward(x, w, padding=1)
            grads = conv2d_backward(dout, cache)
            pooled, pcache = max_pool2d_forward(x, 3, stride=2, padding=1)
            dpool = max_pool2d_backward(np.ones_like(pooled), pcache)
        results.append((out, *grads[:2], pooled, dpool))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


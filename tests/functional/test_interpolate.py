"""interpolate: PyTorch autograd on random configurations (modes nearest, nearest-exact, bilinear with and without
align_corners; sizes and scale factors, integer or not, as numbers or pairs), PyTorch's exact source positions and
weights, float16/bfloat16, finite differences, backends, bad input."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from xpcnn.functional import interpolate_backward, interpolate_forward, max_pool2d_forward
from xpcnn.functional.interpolate import axis_taps
from tests.helpers import assert_close, config_id, numerical_gradient, torch_reference

SCALES = [0.5, 0.75, 1.5, 1.7, 2, 2.5, 3, 1 / 3, 0.3, 1.1, 4, 2.25]


def interpolate_configs(count, seed):
    """Random legal configurations: sizes 1-9, output sizes 1-17 or scale factors (floats and ints, one or a pair),
    every mode, align_corners None/False/True for bilinear."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        size = (rng.randint(1, 9), rng.randint(1, 9))
        mode = rng.choice(["nearest", "nearest-exact", "bilinear", "bilinear"])
        options = dict(mode=mode)
        if mode == "bilinear":
            options["align_corners"] = rng.choice([None, False, True])
        if rng.random() < 0.5:
            options["size"] = rng.choice([rng.randint(1, 17), (rng.randint(1, 17), rng.randint(1, 17))])
        else:
            factor = rng.choice([rng.choice(SCALES), (rng.choice(SCALES), rng.choice(SCALES))])
            factors = factor if isinstance(factor, tuple) else (factor, factor)
            if min(math.floor(n * s) for n, s in zip(size, factors)) < 1:
                continue
            options["scale_factor"] = factor
        configs.append(dict(x_shape=(rng.randint(1, 2), rng.randint(1, 3), *size), **options))
    return configs


CONFIGS = interpolate_configs(60, seed=7)


def _options(config):
    return {k: v for k, v in config.items() if k != "x_shape"}


@pytest.mark.torch_reference
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_interpolate_matches_torch(xp, torch, config):
    rng = np.random.default_rng(CONFIGS.index(config))
    x = rng.standard_normal(config["x_shape"])
    options = _options(config)
    out_ref, grads, dout = torch_reference(torch, lambda x: torch.nn.functional.interpolate(x, **options),
                                           dict(x=x), rng)
    for dtype, np_dtype in xp.float_dtypes():
        out, cache = interpolate_forward(xp.asarray(x, dtype), **options)
        assert_close(xp, out, out_ref, np_dtype)
        assert_close(xp, interpolate_backward(xp.asarray(dout, dtype), cache), grads["x"], np_dtype)


def test_configurations_cover_every_mode_and_shortcut():
    seen = set()
    for c in CONFIGS:
        seen.add((c["mode"], c.get("align_corners"), "size" in c))
    assert {(m, a, s) for m, a, s in seen} >= {
        ("nearest", None, True), ("nearest", None, False), ("nearest-exact", None, True),
        ("nearest-exact", None, False), ("bilinear", None, False), ("bilinear", False, True), ("bilinear", True, True),
        ("bilinear", True, False),
    }
    maps = [axis_taps("nearest", n, math.floor(n * s), s, None, 53) for n in range(1, 9) for s in (2, 3)]
    assert all(m.repeats for m in maps) and all(m.transposed.blocks for m in maps)


def _grid(float32_only: bool):
    """(n, size) and (n, scale_factor) along one axis, with the sizes and scales PyTorch special-cases."""
    cases = [(n, out, None) for n in range(1, 13) for out in range(1, 30)]
    rng = random.Random(3)
    for _ in range(400):
        n = rng.randint(1, 40)
        s = rng.choice([rng.uniform(0.05, 6), rng.randint(1, 40) / rng.randint(1, 40), rng.choice(SCALES)])
        if math.floor(n * s) >= 1:
            cases.append((n, None, s))
    if float32_only:
        cases += [(36, None, 3.7), (40, None, 3.2857142857142856), (21, None, 7.4)]  # float32 rounds i * scale down
    return cases


def _resize_height(torch, x, n_out, scale, **options):
    if scale is None:
        return torch.nn.functional.interpolate(x, size=(n_out, x.shape[3]), **options)
    return torch.nn.functional.interpolate(x, scale_factor=(scale, 1.0), **options)


def _ours_height(x, n_out, scale, **options):
    if scale is None:
        return interpolate_forward(x, size=(n_out, x.shape[3]), **options)[0]
    return interpolate_forward(x, scale_factor=(scale, 1.0), **options)[0]


@pytest.mark.torch_reference
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_nearest_source_positions_equal_torch(torch, mode):
    """The source of every output, float32 (and 16-bit, computed alike): identical to PyTorch's, knife edges
    (``scale_factor=3.7``: ``111 * float32(1 / 3.7)`` just below 30) included."""
    for n, n_out, scale in _grid(float32_only=True):
        x = np.arange(n, dtype=np.float32).reshape(1, 1, n, 1)
        ref = _resize_height(torch, torch.tensor(x), n_out, scale, mode=mode).numpy()
        np.testing.assert_array_equal(_ours_height(x, n_out, scale, mode=mode), ref, err_msg=f"{n} {n_out} {scale}")


@pytest.mark.torch_reference
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_nearest_1d_source_positions_equal_torch(torch, mode):
    """A 3-D x (a batch of 1-D signals) by a scale_factor: PyTorch's 1-D kernel has no shortcut for an unchanged or
    doubled size (3 values by 2.2 read [0, 0, 0, 1, 1, 2], not i // 2; 3 by 1.05 read [0, 0, 1], not a copy).
    The fuzzer found xpcnn taking the 2-D kernel's shortcuts there."""
    for n, _, scale in _grid(float32_only=True) + [(3, None, 2.2), (3, None, 1.05), (5, None, 2.1), (7, None, 1.1)]:
        if scale is None:
            continue
        x = np.arange(n, dtype=np.float32).reshape(1, 1, n)
        ref = torch.nn.functional.interpolate(torch.tensor(x), scale_factor=scale, mode=mode).numpy()
        np.testing.assert_array_equal(interpolate_forward(x, scale_factor=scale, mode=mode)[0], ref,
                                      err_msg=f"{n} {scale}")


@pytest.mark.torch_reference
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_weights_equal_torch(torch, dtype, align_corners):
    """Every output's neighbours and weights, bit for bit: resizing the rows of an identity matrix gives them."""
    for n, n_out, scale in _grid(float32_only=False):
        eye = np.eye(n, dtype=dtype).reshape(1, n, n, 1)  # channel c: a one at row c
        options = dict(mode="bilinear", align_corners=align_corners)
        ref = _resize_height(torch, torch.tensor(eye), n_out, scale, **options).numpy()
        np.testing.assert_array_equal(_ours_height(eye, n_out, scale, **options), ref, err_msg=f"{n} {n_out} {scale}")


LOW_PRECISION_ULPS = 2


@pytest.mark.torch_reference
@pytest.mark.parametrize("lib, dtype", [("numpy", "float16"), ("torch", "float16"), ("torch", "bfloat16")])
def test_low_precision_matches_torch(torch, lib, dtype):
    """16-bit inputs are computed in float32 and rounded once: values and gradients within a few units in the last
    place of PyTorch's own 16-bit results."""
    eps = float(torch.finfo(getattr(torch, dtype)).eps)
    for i, config in enumerate(CONFIGS[:24]):
        rng = np.random.default_rng(i)
        options = _options(config)
        x = rng.standard_normal(config["x_shape"]).astype(np.float32)
        x_ref = torch.tensor(x).to(getattr(torch, dtype)).requires_grad_(True)
        out_ref = torch.nn.functional.interpolate(x_ref, **options)
        dout = torch.tensor(rng.standard_normal(tuple(out_ref.shape)).astype(np.float32)).to(out_ref.dtype)
        out_ref.backward(dout)
        def as_input(t):
            return t.detach().float().numpy().astype(np.float16) if lib == "numpy" else t.detach()

        out, cache = interpolate_forward(as_input(x_ref), **options)
        dx = interpolate_backward(as_input(dout), cache)
        assert str(out.dtype).endswith(dtype) and str(dx.dtype).endswith(dtype)
        for got, want in ((out, out_ref), (dx, x_ref.grad)):
            got = np.asarray(got, dtype=np.float32) if lib == "numpy" else got.float().numpy()
            want = want.detach().float().numpy()
            scale = max(1.0, float(np.abs(want).max(initial=0.0)))
            np.testing.assert_allclose(got, want, rtol=LOW_PRECISION_ULPS * eps, atol=LOW_PRECISION_ULPS * eps * scale,
                                       err_msg=str(config))


@pytest.mark.eager_only
@pytest.mark.parametrize(
    "options",
    [dict(scale_factor=2), dict(size=(3, 7), mode="nearest-exact"), dict(scale_factor=(1.5, 0.7), mode="bilinear"),
     dict(size=(7, 4), mode="bilinear", align_corners=True)],
    ids=str,
)
def test_gradients_match_finite_differences(xp, options):
    if not xp.float64:
        pytest.skip("float64 finite differences")
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 5))

    def run(v):
        return xp.to_numpy(interpolate_forward(xp.asarray(v), **options)[0])

    dout = np.random.default_rng(1).standard_normal(run(x).shape)
    dx = xp.to_numpy(interpolate_backward(xp.asarray(dout), interpolate_forward(xp.asarray(x), **options)[1]))
    np.testing.assert_allclose(dx, numerical_gradient(run, x, dout), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "options",
    [dict(scale_factor=2), dict(size=(3, 3)), dict(size=(5, 2), mode="nearest-exact"),
     dict(scale_factor=0.5, mode="bilinear", align_corners=True)],
    ids=str,
)
def test_keeps_backend_device_and_dtype(xp, options):
    for batch in (0, 2):
        for dtype, _ in xp.float_dtypes():
            x = xp.asarray(np.random.default_rng(0).standard_normal((batch, 2, 3, 4)), dtype)
            out, cache = interpolate_forward(x, **options)
            xp.assert_on_backend(out, dtype)
            xp.assert_on_backend(interpolate_backward(out, cache), dtype)


X = np.zeros((1, 2, 5, 5))


@pytest.mark.parametrize(
    "kwargs, error, word",
    [
        (dict(), ValueError, "either size or scale_factor"),
        (dict(size=3, scale_factor=2), ValueError, "only one of size or scale_factor"),
        (dict(scale_factor=2, mode="bicubic"), ValueError, "mode must be one of"),
        (dict(scale_factor=2, mode="linear"), ValueError, "mode must be one of"),
        (dict(scale_factor=2, align_corners=False), ValueError, "align_corners option"),
        (dict(scale_factor=2, mode="nearest-exact", align_corners=True), ValueError, "align_corners option"),
        (dict(scale_factor=2, mode="bilinear", align_corners=1), TypeError, "align_corners must be True or False"),
        (dict(size=(2, 2, 2)), ValueError, "size must be an int or a tuple"),
        (dict(scale_factor=(2,)), ValueError, "scale_factor must have one value per resized axis"),
        (dict(size=0), ValueError, "size must be >= 1"),
        (dict(size=(3, -1)), ValueError, "size must be >= 1"),
        (dict(size=2.0), TypeError, "size must be an int"),
        (dict(size=(2, None)), TypeError, "size must be an int"),
        (dict(size=True), TypeError, "size must be an int, got bool"),
        (dict(scale_factor=0.1), ValueError, "output size must be >= 1"),
        (dict(scale_factor=0.0), ValueError, "scale_factor must be > 0"),
        (dict(scale_factor=-2), ValueError, "scale_factor must be > 0"),
        (dict(scale_factor=math.inf), ValueError, "scale_factor must be a finite number"),
        (dict(scale_factor=math.nan), ValueError, "scale_factor must be a finite number"),
        (dict(scale_factor="2"), TypeError, "scale_factor must be a real number"),
        (dict(scale_factor=True), TypeError, "scale_factor must be a real number"),
    ],
)
def test_bad_options(kwargs, error, word):
    with pytest.raises(error, match=word):
        interpolate_forward(X, **kwargs)


@pytest.mark.parametrize(
    "x, error, word",
    [
        (np.zeros((5, 5)), ValueError, "4-D"),
        (np.zeros((1, 2, 5, 5, 5)), ValueError, "4-D"),
        (np.zeros((1, 0, 5, 5)), ValueError, "non-empty channel, height and width"),
        (np.zeros((1, 2, 0, 5)), ValueError, "non-empty channel, height and width"),
        (np.zeros((1, 2, 5, 5), dtype=np.int64), TypeError, "floating"),
        (np.zeros((1, 2, 5, 5)).tolist(), TypeError, "x must be an array"),
    ],
)
def test_bad_input(x, error, word):
    with pytest.raises(error, match=word):
        interpolate_forward(x, scale_factor=2)


@pytest.mark.parametrize("options", [dict(scale_factor=2), dict(size=(3, 7), mode="bilinear")], ids=str)
def test_bad_dout_and_cache(options):
    out, cache = interpolate_forward(X, **options)
    with pytest.raises(ValueError, match="dout must have shape"):
        interpolate_backward(np.zeros((1, 2, 5, 5)), cache)
    with pytest.raises(TypeError, match="dtype"):
        interpolate_backward(out.astype(np.float32), cache)
    with pytest.raises(TypeError, match="cache must be the cache that interpolate_forward returned"):
        interpolate_backward(out, max_pool2d_forward(X, 2)[1])


@pytest.mark.parametrize("size", [(4, 1), (1, 5), (1, 1)])
def test_one_output_on_an_axis_on_dask(size):
    """An axis interpolated to one output reads one position: a slice, not a gather (Dask's take of a single index
    misreported the shape it computes, and the reshape after it failed)."""
    da = pytest.importorskip("dask.array")
    x = np.random.default_rng(0).random((1, 3, 2, 7))
    for mode in ("nearest", "nearest-exact", "bilinear"):
        out, cache = interpolate_forward(da.from_array(x), size=size, mode=mode)
        expected, expected_cache = interpolate_forward(x, size=size, mode=mode)
        np.testing.assert_allclose(np.asarray(out), expected)
        dout = np.ones(expected.shape)
        np.testing.assert_allclose(np.asarray(interpolate_backward(da.from_array(dout), cache)),
                                   interpolate_backward(dout, expected_cache))

"""batch_norm, batch_norm2d, layer_norm, group_norm: PyTorch autograd on random configurations (values, every
gradient, the updated running statistics), float16/bfloat16 against PyTorch's own 16-bit kernels, empty batches,
finite differences, caches handed to the wrong op, bad input."""

from __future__ import annotations

import random

import numpy as np
import pytest

from xpcnn import functional as F
from tests.helpers import assert_close, config_id, numerical_gradient

# -- random legal configurations ----------------------------------------------------------------------------------


def batch_norm_configs(count, seed=0):
    """(N, C, *) of 2 to 5 axes, more than one value per channel, training or evaluation, with or without weight,
    bias and running statistics (always with them in evaluation), momentum None too."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        shape = (rng.randint(1, 4), rng.randint(1, 4), *(rng.randint(1, 4) for _ in range(rng.randint(0, 3))))
        if shape[0] * int(np.prod(shape[2:])) < 2:
            continue
        training = rng.random() < 0.7
        running = not training or rng.random() < 0.7
        configs.append(dict(
            x_shape=shape, weight=rng.random() < 0.7, bias=rng.random() < 0.7, training=training, running=running,
            momentum=rng.choice([0.1, 0.3, 1.0, 0.0, None]) if running and training else 0.1,
            num_batches_tracked=rng.randint(1, 5), eps=rng.choice([1e-5, 1e-3, 0.5]),
        ))
    return configs


def layer_norm_configs(count, seed=0):
    """x of 1 to 4 axes normalised over its last 1 to 3 (all of them too), normalized_shape as an int or a tuple."""
    rng = random.Random(seed)
    configs = []
    for _ in range(count):
        shape = tuple(rng.randint(1, 4) for _ in range(rng.randint(1, 4)))
        k = rng.randint(1, min(3, len(shape)))
        normalized = shape[len(shape) - k:]
        normalized = normalized[0] if k == 1 and rng.random() < 0.5 else normalized
        configs.append(dict(x_shape=shape, normalized_shape=normalized, weight=rng.random() < 0.7,
                            bias=rng.random() < 0.7, eps=rng.choice([1e-5, 1e-3, 0.5])))
    return configs


def group_norm_configs(count, seed=0):
    """(N, C, *) of 2 to 4 axes, every number of groups from 1 to C that divides C."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        channels = rng.randint(1, 6)
        shape = (rng.randint(1, 3), channels, *(rng.randint(1, 4) for _ in range(rng.randint(0, 2))))
        groups = rng.choice([g for g in range(1, channels + 1) if channels % g == 0])
        if shape[0] * channels // groups * int(np.prod(shape[2:])) == 1:
            continue  # PyTorch refuses one sample of one-value groups (see test_group_norm_of_one_value_groups)
        configs.append(dict(x_shape=shape, num_groups=groups, weight=rng.random() < 0.7, bias=rng.random() < 0.7,
                            eps=rng.choice([1e-5, 1e-3, 0.5])))
    return configs


BN_CONFIGS = batch_norm_configs(40, seed=11)
LN_CONFIGS = layer_norm_configs(30, seed=12)
GN_CONFIGS = group_norm_configs(30, seed=13)


def _channels(config):
    return config["x_shape"][1]


def _ln_shape(config):
    n = config["normalized_shape"]
    return (n,) if isinstance(n, int) else tuple(n)


def _inputs(config, param_shape, rng):
    """x (a mean and a scale away from 0 and 1), weight, bias, running statistics as float64 NumPy (or None)."""
    x = rng.standard_normal(config["x_shape"]) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)
    arrays = dict(x=x, weight=rng.standard_normal(param_shape) if config["weight"] else None,
                  bias=rng.standard_normal(param_shape) if config["bias"] else None)
    if config.get("running"):
        arrays.update(running_mean=rng.standard_normal(param_shape), running_var=rng.random(param_shape) + 0.5)
    return arrays


# -- the PyTorch reference ----------------------------------------------------------------------------------------


def _torch_run(torch, name, config, arrays, dout, dtype):
    """PyTorch's output, gradients {x, weight, bias} and updated running statistics, on ``dtype`` tensors made from
    ``arrays`` (rounded to dtype); dout is given (float64, rounded likewise)."""
    tf = torch.nn.functional
    leaves = {k: None if arrays.get(k) is None else torch.tensor(arrays[k]).to(dtype).requires_grad_()
              for k in ("x", "weight", "bias")}
    x, w, b = leaves["x"], leaves["weight"], leaves["bias"]
    running = {}
    if name == "batch_norm":
        rm, rv = (None if arrays.get(k) is None else torch.tensor(arrays[k]).to(dtype)
                  for k in ("running_mean", "running_var"))
        momentum = config["momentum"]
        momentum = 1.0 / config["num_batches_tracked"] if momentum is None else momentum
        out = tf.batch_norm(x, rm, rv, w, b, config["training"], momentum, config["eps"])
        running = dict(running_mean=rm, running_var=rv)
    elif name == "layer_norm":
        out = tf.layer_norm(x, _ln_shape(config), w, b, config["eps"])
    elif w is None and b is not None:  # PyTorch's group_norm backward fails there ("tensor does not have a device")
        out = tf.group_norm(x, config["num_groups"], None, None, config["eps"])
        out = out + b.reshape((1, -1) + (1,) * (x.ndim - 2))
    else:
        out = tf.group_norm(x, config["num_groups"], w, b, config["eps"])
    out.backward(torch.tensor(dout).to(dtype))
    grads = {k: None if t is None else t.grad for k, t in leaves.items()}
    return out.detach(), grads, running


def _call(xp, name, config, arrays):
    """xpcnn's forward pass on backend arrays (None kept)."""
    if name == "batch_norm":
        extra = {}
        if config["momentum"] is None:
            extra["num_batches_tracked"] = xp.asarray(np.asarray(config["num_batches_tracked"]), xp.int64)
        return F.batch_norm_forward(arrays["x"], arrays["weight"], arrays["bias"],
                                    running_mean=arrays.get("running_mean"), running_var=arrays.get("running_var"),
                                    training=config["training"], momentum=config["momentum"], eps=config["eps"],
                                    **extra)
    if name == "layer_norm":
        return F.layer_norm_forward(arrays["x"], config["normalized_shape"], arrays["weight"], arrays["bias"],
                                    eps=config["eps"])
    return F.group_norm_forward(arrays["x"], config["num_groups"], arrays["weight"], arrays["bias"], eps=config["eps"])


BACKWARD = {"batch_norm": F.batch_norm_backward, "layer_norm": F.layer_norm_backward,
            "group_norm": F.group_norm_backward}


def _param_shape(name, config):
    return _ln_shape(config) if name == "layer_norm" else (_channels(config),)


def _check_against_torch(xp, torch, name, config, seed):
    rng = np.random.default_rng(seed)
    arrays = _inputs(config, _param_shape(name, config), rng)
    out_shape = config["x_shape"]
    dout = rng.standard_normal(out_shape)
    out_ref, grads, running = _torch_run(torch, name, config, arrays, dout, torch.float64)
    for dtype, np_dtype in xp.float_dtypes():
        backend = {k: None if v is None else xp.asarray(v, dtype) for k, v in arrays.items()}
        out, cache = _call(xp, name, config, backend)
        assert_close(xp, out, out_ref.numpy(), np_dtype)
        dx, dweight, dbias = BACKWARD[name](xp.asarray(dout, dtype), cache)
        assert_close(xp, dx, grads["x"].numpy(), np_dtype)
        for got, key in ((dweight, "weight"), (dbias, "bias")):
            if arrays[key] is None:
                assert got is None, key
            else:
                assert_close(xp, got, grads[key].numpy(), np_dtype)
        for key, ref in running.items():
            got = getattr(cache, key)
            if ref is None:
                assert got is None, key
            else:
                assert_close(xp, got, ref.numpy(), np_dtype)
        no_dx, dweight_only, dbias_only = BACKWARD[name](xp.asarray(dout, dtype), cache, input_grad=False)
        assert no_dx is None
        for a, b in ((dweight_only, dweight), (dbias_only, dbias)):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(xp.to_numpy(a), xp.to_numpy(b))


@pytest.mark.torch_reference
@pytest.mark.parametrize("config", BN_CONFIGS, ids=config_id)
def test_batch_norm_matches_torch(xp, torch, config):
    _check_against_torch(xp, torch, "batch_norm", config, BN_CONFIGS.index(config))


@pytest.mark.torch_reference
@pytest.mark.parametrize("config", LN_CONFIGS, ids=config_id)
def test_layer_norm_matches_torch(xp, torch, config):
    _check_against_torch(xp, torch, "layer_norm", config, LN_CONFIGS.index(config))


@pytest.mark.torch_reference
@pytest.mark.parametrize("config", GN_CONFIGS, ids=config_id)
def test_group_norm_matches_torch(xp, torch, config):
    _check_against_torch(xp, torch, "group_norm", config, GN_CONFIGS.index(config))


@pytest.mark.torch_reference
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm2d_is_batch_norm_on_4d_input(xp, torch, training):
    config = dict(x_shape=(3, 2, 4, 5), weight=True, bias=False, training=training, running=True, momentum=0.2,
                  eps=1e-5)
    rng = np.random.default_rng(4)
    arrays = _inputs(config, (2,), rng)
    dout = rng.standard_normal(config["x_shape"])
    out_ref, grads, running = _torch_run(torch, "batch_norm", config, arrays, dout, torch.float64)
    dtype, np_dtype = xp.float_dtypes()[-1]
    x, w, rm, rv = (xp.asarray(arrays[k], dtype) for k in ("x", "weight", "running_mean", "running_var"))
    out, cache = F.batch_norm2d_forward(x, w, running_mean=rm, running_var=rv, training=training, momentum=0.2)
    assert_close(xp, out, out_ref.numpy(), np_dtype)
    dx, dweight, dbias = F.batch_norm2d_backward(xp.asarray(dout, dtype), cache)
    assert_close(xp, dx, grads["x"].numpy(), np_dtype)
    assert_close(xp, dweight, grads["weight"].numpy(), np_dtype)
    assert dbias is None  # no bias: no bias gradient (it was a zero array once)
    assert_close(xp, cache.running_mean, running["running_mean"].numpy(), np_dtype)
    assert_close(xp, cache.running_var, running["running_var"].numpy(), np_dtype)
    if training:  # the batch's own statistics, as before running statistics came in the cache
        x64 = arrays["x"]
        assert_close(xp, cache.batch_mean, x64.mean(axis=(0, 2, 3)), np_dtype)
        assert_close(xp, cache.batch_var, x64.var(axis=(0, 2, 3), ddof=1), np_dtype)
    with pytest.raises(ValueError, match="x must be 4-D"):
        F.batch_norm2d_forward(xp.asarray(arrays["x"][..., 0], dtype))


@pytest.mark.parametrize("weight, bias", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("name", ["batch_norm", "batch_norm_eval", "layer_norm", "group_norm"])
def test_parameter_gradients_exactly_where_parameters(xp, name, weight, bias):
    """dweight is None exactly when weight was None, dbias exactly when bias was None."""
    config = dict(x_shape=(3, 4, 2), weight=weight, bias=bias, training=name == "batch_norm", running=True,
                  momentum=0.1, eps=1e-5, normalized_shape=(4, 2), num_groups=2)
    op = "batch_norm" if name == "batch_norm_eval" else name
    rng = np.random.default_rng(5)
    arrays = _inputs(config, _param_shape(op, config), rng)
    dtype = xp.float_dtypes()[0][0]
    out, cache = _call(xp, op, config, {k: None if v is None else xp.asarray(v, dtype) for k, v in arrays.items()})
    dx, dweight, dbias = BACKWARD[op](out, cache)
    assert (dweight is None) == (not weight) and (dbias is None) == (not bias)


# -- 16-bit floats against PyTorch's own kernels ------------------------------------------------------------------

LOW = {"float16": 2.0**-10, "bfloat16": 2.0**-7}  # the unit roundoff's double: one step of the dtype near 1


def _low_dtypes(xp):
    if xp.name.startswith("array_api_strict"):
        return []
    return [name for name in LOW if getattr(xp.namespace, name, None) is not None]


def _to_low(xp, torch, a, name):
    """(backend array of dtype ``name``, the torch tensor) holding the same rounded values."""
    t = torch.tensor(a).to(getattr(torch, name))
    return xp.astype(xp.asarray(t.float().numpy(), xp.float32), getattr(xp.namespace, name)), t


def _assert_low_close(xp, got, want, name, what):
    """Equal up to about one rounding of the 16-bit result (each side rounds its own float32 computation once)."""
    xp.assert_on_backend(got, getattr(xp.namespace, name))
    got = xp.to_numpy(xp.astype(got, xp.float32)).astype(np.float64)
    want = want.float().numpy().astype(np.float64)
    step = LOW[name]
    scale = np.max(np.abs(want), initial=1.0)
    np.testing.assert_allclose(got, want, rtol=2 * step, atol=step * scale, err_msg=what)


LOW_CASES = [
    ("batch_norm", dict(x_shape=(6, 3, 5), weight=True, bias=True, training=True, running=True, momentum=0.1,
                        eps=1e-5)),
    ("batch_norm", dict(x_shape=(4, 2, 3, 3), weight=True, bias=False, training=False, running=True, momentum=0.1,
                        eps=1e-5)),
    ("batch_norm", dict(x_shape=(5, 4), weight=False, bias=True, training=True, running=True, momentum=None,
                        num_batches_tracked=3, eps=1e-3)),
    ("layer_norm", dict(x_shape=(3, 4, 6), normalized_shape=(4, 6), weight=True, bias=True, eps=1e-5)),
    ("layer_norm", dict(x_shape=(5, 7), normalized_shape=7, weight=True, bias=False, eps=1e-5)),
    ("group_norm", dict(x_shape=(2, 6, 3, 2), num_groups=3, weight=True, bias=True, eps=1e-5)),
    ("group_norm", dict(x_shape=(3, 4, 5), num_groups=4, weight=False, bias=False, eps=1e-5)),
]


@pytest.mark.torch_reference
@pytest.mark.parametrize("name, config", LOW_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(LOW_CASES)])
def test_16_bit_floats_match_torch(xp, torch, name, config):
    """float16 and bfloat16: values, gradients and running statistics equal PyTorch's 16-bit CPU kernels (each
    computed in float32 and rounded once)."""
    if not _low_dtypes(xp):
        pytest.skip(f"{xp.name} has no 16-bit floats")
    rng = np.random.default_rng(6)
    arrays = _inputs(config, _param_shape(name, config), rng)
    dout = rng.standard_normal(config["x_shape"])
    for low in _low_dtypes(xp):
        converted = {k: None if v is None else _to_low(xp, torch, v, low) for k, v in arrays.items()}
        rounded = {k: None if v is None else v[1].double().numpy() for k, v in converted.items()}
        out_ref, grads, running = _torch_run(torch, name, config, rounded, dout, getattr(torch, low))
        out, cache = _call(xp, name, config, {k: None if v is None else v[0] for k, v in converted.items()})
        _assert_low_close(xp, out, out_ref, low, "out")
        dx, dweight, dbias = BACKWARD[name](_to_low(xp, torch, dout, low)[0], cache)
        _assert_low_close(xp, dx, grads["x"], low, "dx")
        for got, key in ((dweight, "weight"), (dbias, "bias")):
            assert (got is None) == (grads[key] is None), key
            if got is not None:
                _assert_low_close(xp, got, grads[key], low, key)
        for key, ref in running.items():
            if ref is not None:
                _assert_low_close(xp, getattr(cache, key), ref, low, key)


@pytest.mark.torch_reference
@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_16_bit_running_variance_is_blended_before_rounding(torch, low):
    """A batch variance of ~1.2e5 overflows float16, 0.9 * 1 + 0.1 * 1.2e5 does not: the running variance is
    blended in float32 and rounded once, as PyTorch (a float16 batch variance would make it inf)."""
    import array_api_compat

    xp = array_api_compat.array_namespace(torch.empty(0))
    rng = np.random.default_rng(7)
    x = torch.tensor(rng.standard_normal((8, 3, 4)) * 350).to(getattr(torch, low))
    rm, rv = torch.zeros(3, dtype=x.dtype), torch.ones(3, dtype=x.dtype)
    out, cache = F.batch_norm_forward(x, running_mean=rm, running_var=rv)
    out_ref = torch.nn.functional.batch_norm(x, rm, rv, training=True)  # updates rm, rv in place
    assert xp.all(xp.isfinite(cache.running_var)) and xp.all(xp.isfinite(out))
    assert cache.running_var.dtype == x.dtype and float(xp.min(cache.running_var)) > 5000
    for key, ref in (("running_mean", rm), ("running_var", rv)):
        np.testing.assert_allclose(getattr(cache, key).float().numpy(), ref.float().numpy(), rtol=2 * LOW[low],
                                   atol=LOW[low])
    np.testing.assert_allclose(out.float().numpy(), out_ref.float().numpy(), rtol=2 * LOW[low], atol=4 * LOW[low])


# -- empty batches ------------------------------------------------------------------------------------------------


@pytest.mark.torch_reference
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (2, 3, 0), (0, 3, 2, 2)], ids=str)
def test_empty_batch_norm_matches_torch(xp, torch, shape):
    """Training on an empty batch gives an empty output, zero parameter gradients and the running statistics
    unchanged, as PyTorch."""
    dtype, np_dtype = xp.float_dtypes()[-1]
    rng = np.random.default_rng(8)
    rm, rv, w, b = rng.standard_normal(3), rng.random(3) + 0.5, rng.standard_normal(3), rng.standard_normal(3)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    out_ref = torch.nn.functional.batch_norm(torch.zeros(shape, dtype=torch.float64), trm, trv, tw, tb, True)
    out_ref.sum().backward()
    out, cache = F.batch_norm_forward(xp.asarray(np.zeros(shape), dtype), xp.asarray(w, dtype), xp.asarray(b, dtype),
                                      running_mean=xp.asarray(rm, dtype), running_var=xp.asarray(rv, dtype))
    assert tuple(out.shape) == shape and cache.batch_mean is None
    assert_close(xp, cache.running_mean, trm.numpy(), np_dtype)
    assert_close(xp, cache.running_var, trv.numpy(), np_dtype)
    dx, dweight, dbias = F.batch_norm_backward(xp.ones(shape, dtype=dtype, device=xp.device), cache)
    assert tuple(dx.shape) == shape
    assert_close(xp, dweight, tw.grad.numpy(), np_dtype)
    assert_close(xp, dbias, tb.grad.numpy(), np_dtype)


@pytest.mark.parametrize("name, shape", [("layer_norm", (0, 4)), ("layer_norm", (2, 0)), ("group_norm", (0, 4, 3)),
                                         ("group_norm", (2, 4, 0))], ids=str)
def test_empty_layer_and_group_norm(xp, name, shape):
    dtype = xp.float_dtypes()[-1][0]
    x = xp.asarray(np.zeros(shape), dtype)
    w = xp.ones(shape[-1] if name == "layer_norm" else 4, dtype=dtype, device=xp.device)
    if name == "layer_norm":
        out, cache = F.layer_norm_forward(x, shape[-1], w, w)
    else:
        out, cache = F.group_norm_forward(x, 2, w, w)
    dx, dweight, dbias = BACKWARD[name](out, cache)
    assert tuple(out.shape) == tuple(dx.shape) == shape
    for g in (dweight, dbias):
        xp.assert_on_backend(g, dtype)
        np.testing.assert_array_equal(xp.to_numpy(g), 0.0)


# -- the maths ----------------------------------------------------------------------------------------------------

FD_CASES = [
    ("batch_norm", dict(x_shape=(3, 2, 4), weight=True, bias=True, training=True, running=False, momentum=0.1,
                        eps=1e-5)),
    ("batch_norm", dict(x_shape=(3, 2), weight=True, bias=True, training=False, running=True, momentum=0.1,
                        eps=1e-5)),
    ("layer_norm", dict(x_shape=(2, 3, 4), normalized_shape=(3, 4), weight=True, bias=True, eps=1e-5)),
    ("group_norm", dict(x_shape=(2, 4, 3), num_groups=2, weight=True, bias=True, eps=1e-5)),
]


@pytest.mark.eager_only
@pytest.mark.parametrize("name, config", FD_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FD_CASES)])
def test_gradients_match_finite_differences(xp, name, config):
    if not xp.float64:
        pytest.skip("float64 finite differences")
    rng = np.random.default_rng(9)
    arrays = _inputs(config, _param_shape(name, config), rng)

    def run(**changed):
        backend = {k: None if v is None else xp.asarray(v) for k, v in {**arrays, **changed}.items()}
        return _call(xp, name, config, backend)

    out, cache = run()
    dout = rng.standard_normal(tuple(out.shape))
    grads = dict(zip(("x", "weight", "bias"), (xp.to_numpy(g) for g in BACKWARD[name](xp.asarray(dout), cache))))
    for key, grad in grads.items():
        numeric = numerical_gradient(lambda v: xp.to_numpy(run(**{key: v})[0]), arrays[key], dout)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=key)


def test_layer_norm_of_a_constant_row_is_its_bias():
    """A constant row has variance 0: xhat is 0, the output is the bias, and dx is finite."""
    x = np.full((2, 5), 3.0)
    bias = np.arange(5.0)
    out, cache = F.layer_norm_forward(x, 5, np.ones(5), bias)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, (2, 5)))
    assert np.isfinite(F.layer_norm_backward(np.ones((2, 5)), cache)[0]).all()


@pytest.mark.torch_reference
def test_group_norm_of_one_value_groups(torch):
    """Groups of one value normalise to 0 (the output is the bias). PyTorch computes that for two samples but
    refuses one (its batch-norm check, "Expected more than 1 value per channel"); xpcnn computes both alike."""
    x, bias = np.array([[1.0, 5.0, -2.0], [0.5, 2.0, 3.0]]), np.array([0.25, -1.0, 2.0])
    expected = torch.nn.functional.group_norm(torch.tensor(x), 3, None, torch.tensor(bias)).numpy()
    np.testing.assert_array_equal(expected, np.broadcast_to(bias, (2, 3)))
    for rows in (x, x[:1]):
        out, cache = F.group_norm_forward(rows, 3, None, bias)
        np.testing.assert_array_equal(out, expected[: len(rows)])
        np.testing.assert_array_equal(F.group_norm_backward(np.ones_like(rows), cache)[0], 0.0)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm_with_one_group_per_channel_is_instance_norm(groups):
    """G = C normalises each channel of each sample alone; G = 1 the whole sample (layer norm over C, *)."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 4, 3, 5))
    out, _ = F.group_norm_forward(x, groups)
    v = x.reshape(2, groups, -1)
    expected = ((v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_momentum_none_is_the_cumulative_average():
    """momentum=None with num_batches_tracked = n weights this batch 1/n: after n batches the running mean is
    their mean."""
    rng = np.random.default_rng(11)
    batches = [rng.standard_normal((4, 3)) + i for i in range(5)]
    running_mean, running_var = np.zeros(3), np.ones(3)
    for n, x in enumerate(batches, start=1):
        _, cache = F.batch_norm_forward(x, running_mean=running_mean, running_var=running_var, momentum=None,
                                        num_batches_tracked=np.asarray(n))
        running_mean, running_var = cache.running_mean, cache.running_var
    np.testing.assert_allclose(running_mean, np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-12)
    np.testing.assert_allclose(running_var, np.mean([b.var(axis=0, ddof=1) for b in batches], axis=0), rtol=1e-12)


def test_momentum_none_under_jax_jit():
    """The cumulative average's weight 1 / num_batches_tracked is computed on the device (traced under jit)."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(12)
    x, rm, rv = rng.standard_normal((5, 2, 3)), rng.standard_normal(2), rng.random(2) + 0.5

    def step(x, rm, rv, n):
        out, cache = F.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=None, num_batches_tracked=n)
        return out, cache.running_mean, cache.running_var

    expected = step(x, rm, rv, np.asarray(4))
    got = jax.jit(step)(*(jax.numpy.asarray(a) for a in (x, rm, rv)), jax.numpy.asarray(4))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-12)


def test_inputs_keep_their_values():
    """The running statistics given are never written: the updated ones come in the cache."""
    rm, rv = np.zeros(2), np.ones(2)
    _, cache = F.batch_norm_forward(np.arange(12.0).reshape(3, 2, 2), running_mean=rm, running_var=rv)
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)
    assert (cache.running_mean != 0).all() and (cache.running_var != 1).all()


# -- channels last ------------------------------------------------------------------------------------------------


def _last(a):
    """An (N, C, *) NumPy array as (N, *, C)."""
    return None if a is None or a.ndim < 3 else np.moveaxis(a, 1, -1)


@pytest.mark.parametrize("config", range(12))
@pytest.mark.parametrize("name", ["batch_norm", "group_norm"])
def test_nhwc_equals_nchw_on_the_transposed_input(xp, name, config):
    """data_format="NHWC" on x moved to (N, *, C) gives the NCHW results moved likewise: output, dx, dweight,
    dbias and the running statistics, on every backend."""
    config = (BN_CONFIGS if name == "batch_norm" else GN_CONFIGS)[config]
    if len(config["x_shape"]) < 3:
        config = dict(config, x_shape=(*config["x_shape"], 3))
    rng = np.random.default_rng(len(config["x_shape"]) + config["x_shape"][1])
    arrays = _inputs(config, (_channels(config),), rng)
    dout = rng.standard_normal(config["x_shape"])
    for dtype, np_dtype in xp.float_dtypes():
        results = {}
        for data_format, move in (("NCHW", lambda a: a), ("NHWC", _last)):
            backend = {k: None if v is None else xp.asarray(move(v) if k == "x" else v, dtype)
                       for k, v in arrays.items()}
            if name == "batch_norm":
                extra = {}
                if config["momentum"] is None:
                    extra["num_batches_tracked"] = xp.asarray(np.asarray(config["num_batches_tracked"]), xp.int64)
                out, cache = F.batch_norm_forward(
                    backend["x"], backend["weight"], backend["bias"], running_mean=backend.get("running_mean"),
                    running_var=backend.get("running_var"), training=config["training"],
                    momentum=config["momentum"], eps=config["eps"], data_format=data_format, **extra)
                running = [cache.running_mean, cache.running_var]
            else:
                out, cache = F.group_norm_forward(backend["x"], config["num_groups"], backend["weight"],
                                                  backend["bias"], config["eps"], data_format=data_format)
                running = []
            grads = BACKWARD[name](xp.asarray(move(dout), dtype), cache)
            results[data_format] = [out, *grads, *running]
        nchw = [None if a is None else xp.to_numpy(a) for a in results["NCHW"]]
        for i, (got, want) in enumerate(zip(results["NHWC"], nchw)):
            assert (got is None) == (want is None), i
            if got is not None:
                assert_close(xp, got, _last(want) if i in (0, 1) else want, np_dtype)


def test_nhwc_batch_norm2d_and_torch_channels_last(torch):
    """batch_norm2d in NHWC against PyTorch on the same values (its channels_last tensor is (N, C, H, W) logically)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5, 4, 6)) * 2 + 1
    w, b, dout = rng.standard_normal(6), rng.standard_normal(6), rng.standard_normal(x.shape)
    out, cache = F.batch_norm2d_forward(x, w, b, running_mean=np.zeros(6), running_var=np.ones(6), data_format="NHWC")
    dx, dw, db = F.batch_norm2d_backward(dout, cache)
    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    tw, tb = torch.tensor(w).requires_grad_(), torch.tensor(b).requires_grad_()
    rm, rv = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    tout = torch.nn.functional.batch_norm(tx, rm, rv, tw, tb, True, 0.1, 1e-5)
    tout.backward(torch.tensor(dout).permute(0, 3, 1, 2))
    np.testing.assert_allclose(out, tout.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(cache.running_var, rv.numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda: F.batch_norm_forward(X, data_format="nhwc"), "data_format must be 'NCHW' or 'NHWC', got 'nhwc'"),
        (lambda: F.group_norm_forward(X, 2, data_format=None), "data_format must be 'NCHW' or 'NHWC', got None"),
        (lambda: F.batch_norm2d_forward(np.zeros((2, 5, 5, 3)), np.ones(3)),
         r"looks NHWC; pass data_format='NHWC'"),
        (lambda: F.batch_norm2d_forward(np.zeros((2, 3, 5, 5)), np.ones(3), data_format="NHWC"),
         r"looks NCHW; pass data_format='NCHW'"),
        (lambda: F.batch_norm2d_forward(np.zeros((2, 4, 3)), data_format="NHWC"), r"x must be 4-D \(N, H, W, C\)"),
        (lambda: F.group_norm_forward(np.zeros((2, 5, 5, 4)), 2, np.ones(4)), "looks NHWC"),
        (lambda: F.group_norm_forward(np.zeros((2, 5, 5, 4)), 3, data_format="NHWC"),
         r"num_groups=3 must divide the channels of x, got x of shape \(2, 5, 5, 4\) \(NHWC: channels last\)"),
    ],
)
def test_bad_data_format(call, word):
    with pytest.raises(ValueError, match=word):
        call()


# -- bad input ----------------------------------------------------------------------------------------------------

X = np.zeros((2, 4, 3))
C4 = np.ones(4)


@pytest.mark.parametrize(
    "call, error, word",
    [
        (lambda: F.batch_norm_forward(np.zeros(4)), ValueError, "at least 2-D"),
        (lambda: F.batch_norm_forward(np.zeros((1, 4))), ValueError, "more than one value per channel"),
        (lambda: F.batch_norm_forward(np.zeros((1, 4, 1))), ValueError, "more than one value per channel"),
        (lambda: F.batch_norm_forward(X, np.ones(3)), ValueError, r"weight must have shape \(4,\)"),
        (lambda: F.batch_norm_forward(X, None, np.ones((4, 1))), ValueError, "bias must have shape"),
        (lambda: F.batch_norm_forward(X, running_mean=C4), ValueError, "given together"),
        (lambda: F.batch_norm_forward(X, training=False), ValueError, "needed when training=False"),
        (lambda: F.batch_norm_forward(X, running_mean=C4, running_var=C4, momentum=None), ValueError,
         "num_batches_tracked"),
        (lambda: F.batch_norm_forward(X, running_mean=C4, running_var=C4, momentum=None,
                                      num_batches_tracked=np.asarray(1.0)), TypeError, "0-d integer array"),
        (lambda: F.batch_norm_forward(X, running_mean=C4, running_var=C4, momentum=None,
                                      num_batches_tracked=np.ones(1, np.int64)), TypeError, "0-d integer array"),
        (lambda: F.batch_norm_forward(X, momentum=float("nan")), ValueError, "momentum must be a finite number"),
        (lambda: F.batch_norm_forward(X, momentum="0.1"), TypeError, "momentum must be a real number"),
        (lambda: F.batch_norm_forward(X, eps=float("nan")), ValueError, "eps must be a finite number"),
        (lambda: F.batch_norm_forward(X, eps="1e-5"), TypeError, "eps must be a real number"),
        (lambda: F.batch_norm_forward(X, eps=-1.0), ValueError, "eps must be >= 0"),
        (lambda: F.batch_norm_forward(X, eps=0.0), ValueError, "eps must be > 0 for training batch norm"),
        (lambda: F.batch_norm_forward(X, training="False"), TypeError, "training must be True or False"),
        (lambda: F.batch_norm_forward(X, training=None), TypeError, "training must be True or False"),
        (lambda: F.batch_norm_forward(X.astype(np.int64)), TypeError, "real floating"),
        (lambda: F.batch_norm_forward(X, C4.astype(np.float32)), TypeError, "weight has dtype float32"),
        (lambda: F.batch_norm_forward(X, running_mean=C4, running_var=C4.astype(np.float32)), TypeError,
         "running_var has dtype float32"),
        (lambda: F.batch_norm_forward(None), TypeError, "x must be an array, got NoneType"),
        (lambda: F.batch_norm2d_forward(X), ValueError, "x must be 4-D"),
        (lambda: F.batch_norm2d_forward([[1.0]]), TypeError, "x must be an array"),
        (lambda: F.layer_norm_forward(X, 4), ValueError, r"x must have shape \(\*, 4\)"),
        (lambda: F.layer_norm_forward(X, (2, 4, 3, 1)), ValueError, "x must have shape"),
        (lambda: F.layer_norm_forward(X, ()), ValueError, "at least one axis"),
        (lambda: F.layer_norm_forward(X, 3.0), TypeError, "normalized_shape must be an int or a tuple of ints"),
        (lambda: F.layer_norm_forward(X, "3"), TypeError, "normalized_shape must be an int or a tuple of ints"),
        (lambda: F.layer_norm_forward(X, (4, 3.0)), TypeError, "normalized_shape must be an int"),
        (lambda: F.layer_norm_forward(X, (-3,)), ValueError, "normalized_shape must be >= 0"),
        (lambda: F.layer_norm_forward(X, 3, np.ones(4)), ValueError, r"weight must have shape \(3,\)"),
        (lambda: F.layer_norm_forward(X, 3, None, np.ones((1, 3))), ValueError, "bias must have shape"),
        (lambda: F.layer_norm_forward(X, 3, eps=None), TypeError, "eps must be a real number"),
        (lambda: F.group_norm_forward(np.zeros(4), 2), ValueError, "at least 2-D"),
        (lambda: F.group_norm_forward(X, 3), ValueError, "num_groups=3 must divide the channels of x"),
        (lambda: F.group_norm_forward(X, 0), ValueError, "num_groups must be >= 1"),
        (lambda: F.group_norm_forward(X, 2.0), TypeError, "num_groups must be an int"),
        (lambda: F.group_norm_forward(X, 2, np.ones(2)), ValueError, r"weight must have shape \(4,\)"),
        (lambda: F.group_norm_forward(X, 2, eps=float("inf")), ValueError, "eps must be a finite number"),
    ],
)
def test_bad_input(call, error, word):
    with pytest.raises(error, match=word):
        call()


@pytest.mark.parametrize(
    "backward, make_cache, dout, op",
    [
        (F.batch_norm_backward, lambda: F.layer_norm_forward(X, 3)[1], X, "batch_norm"),
        (F.batch_norm2d_backward, lambda: F.conv2d_forward(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 1, 1)))[1],
         np.zeros((1, 1, 3, 3)), "batch_norm2d"),
        (F.layer_norm_backward, lambda: F.group_norm_forward(X, 2)[1], X, "layer_norm"),
        (F.group_norm_backward, lambda: F.batch_norm_forward(X)[1], X, "group_norm"),
        (F.group_norm_backward, lambda: F.layer_norm_forward(X.astype(np.float16), 3)[1], X.astype(np.float16),
         "group_norm"),
        (F.layer_norm_backward, lambda: None, X, "layer_norm"),
    ],
    ids=["layer-to-batch", "conv-to-batch2d", "group-to-layer", "batch-to-group", "float16-layer-to-group", "None"],
)
def test_a_cache_from_another_op_is_refused(backward, make_cache, dout, op):
    with pytest.raises(TypeError, match=f"cache must be the cache that {op}_forward returned"):
        backward(dout, make_cache())


@pytest.mark.parametrize("name", ["batch_norm", "layer_norm", "group_norm"])
def test_bad_dout(name):
    config = dict(training=True, momentum=0.1, eps=1e-5, normalized_shape=3, num_groups=2)
    _, cache = _call(None, name, config, dict(x=np.ones((2, 4, 3)) + np.arange(3.0), weight=None, bias=None))
    with pytest.raises(ValueError, match="dout must have shape"):
        BACKWARD[name](np.zeros((2, 4)), cache)
    with pytest.raises(TypeError, match="dtype float32"):
        BACKWARD[name](np.zeros((2, 4, 3), np.float32), cache)
    with pytest.raises(TypeError, match="input_grad must be True or False"):
        BACKWARD[name](np.zeros((2, 4, 3)), cache, input_grad="no")

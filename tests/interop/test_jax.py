"""xpcnn.interop.jax: xpcnn's passes as jax.custom_vjp rules, under jax.jit and jax.grad."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

import xpcnn.functional as F  # noqa: E402
from xpcnn.interop.jax import function  # noqa: E402

rng = np.random.default_rng(0)


def _grads_by_hand(forward, backward, args, kwargs, dout_of):
    out, cache = forward(*args, **kwargs)
    return out, backward(dout_of(out), cache)


@pytest.mark.parametrize("jit", [False, True])
def test_conv2d_grad_equals_xpcnn(jit):
    conv2d = function(F.conv2d_forward, F.conv2d_backward)
    x, w, b = (jnp.asarray(rng.standard_normal(s)) for s in ((2, 3, 7, 6), (4, 3, 3, 3), (4,)))

    def loss(x, w, b):
        return jnp.sum(conv2d(x, w, b, stride=2, padding=1) ** 2)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    grads = (jax.jit(grad) if jit else grad)(x, w, b)
    _, expected = _grads_by_hand(F.conv2d_forward, F.conv2d_backward, (x, w, b), dict(stride=2, padding=1),
                                 lambda out: 2 * out)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)
    # and the gradient of JAX's own convolution
    ref = jax.grad(lambda x: jnp.sum((jax.lax.conv_general_dilated(x, w, (2, 2), [(1, 1), (1, 1)])
                                      + b[:, None, None]) ** 2))(x)
    np.testing.assert_allclose(np.asarray(grads[0]), np.asarray(ref), rtol=1e-10)


def test_max_pool2d_static_kernel_under_jit():
    max_pool2d = function(F.max_pool2d_forward, F.max_pool2d_backward)
    x = jnp.asarray(rng.standard_normal((2, 3, 7, 6)))
    dout = jnp.asarray(rng.standard_normal((2, 3, 4, 3)))
    loss = jax.jit(lambda x: jnp.sum(max_pool2d(x, 3, stride=2, padding=1) * dout))
    got = jax.grad(loss)(x)
    _, want = _grads_by_hand(F.max_pool2d_forward, F.max_pool2d_backward, (x, 3), dict(stride=2, padding=1),
                             lambda out: dout)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    out = max_pool2d(x, 3, stride=2, padding=1)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(F.max_pool2d_forward(x, 3, stride=2, padding=1)[0]))


def test_linear_vjp_and_no_bias():
    linear = function(F.linear_forward, F.linear_backward)
    x, w = jnp.asarray(rng.standard_normal((5, 4))), jnp.asarray(rng.standard_normal((3, 4)))
    out, vjp = jax.vjp(lambda x, w: linear(x, w), x, w)
    dout = jnp.ones_like(out)
    dx, dw = vjp(dout)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(dout @ w))
    np.testing.assert_allclose(np.asarray(dw), np.asarray(dout.T @ x))


def test_cross_entropy_integer_targets_and_a_small_network():
    conv2d = function(F.conv2d_forward, F.conv2d_backward)
    relu = function(F.relu_forward, F.relu_backward)
    flatten = function(F.flatten_forward, F.flatten_backward)
    linear = function(F.linear_forward, F.linear_backward)
    ce = function(F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward)
    params = dict(w=jnp.asarray(rng.standard_normal((4, 1, 3, 3)) * 0.3), b=jnp.zeros(4),
                  v=jnp.asarray(rng.standard_normal((3, 4 * 6 * 6)) * 0.1))
    x, y = jnp.asarray(rng.standard_normal((8, 1, 6, 6))), jnp.arange(8) % 3

    @jax.jit
    def loss(params, x, y):
        h = relu(conv2d(x, params["w"], params["b"], padding=1))
        return ce(linear(flatten(h), params["v"]), y)

    grads = jax.grad(loss)(params, x, y)

    def by_hand(params):  # the hand-written chain, as the README's functional example
        h, c1 = F.conv2d_forward(x, params["w"], params["b"], padding=1)
        a, c2 = F.relu_forward(h)
        z, c3 = F.flatten_forward(a)
        logits, c4 = F.linear_forward(z, params["v"])
        _, c5 = F.softmax_cross_entropy_forward(logits, y)
        dz, dv, _ = F.linear_backward(F.softmax_cross_entropy_backward(1.0, c5), c4)
        _, dw, db = F.conv2d_backward(F.relu_backward(F.flatten_backward(dz, c3), c2), c1)
        return dict(w=dw, b=db, v=dv)

    for name, want in by_hand(params).items():
        np.testing.assert_allclose(np.asarray(grads[name]), np.asarray(want), rtol=1e-12, atol=1e-14)
    # a few steps of gradient descent lower the loss
    start = loss(params, x, y)
    for _ in range(5):
        params = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, jax.grad(loss)(params, x, y))
    assert loss(params, x, y) < start


def test_bad_n_grads():
    with pytest.raises(ValueError, match="n_grads"):
        function(F.relu_forward, F.relu_backward, n_grads="1")


def test_an_option_before_the_weights_takes_no_gradient_slot():
    layer_norm = function(F.layer_norm_forward, F.layer_norm_backward)
    x, w, b = (jnp.asarray(rng.standard_normal(s)) for s in ((2, 3, 4), (3, 4), (3, 4)))
    grads = jax.jit(jax.grad(lambda x, w, b: jnp.sum(layer_norm(x, (3, 4), w, b) ** 2), argnums=(0, 1, 2)))(x, w, b)
    _, want = _grads_by_hand(F.layer_norm_forward, F.layer_norm_backward, (x, (3, 4), w, b), {}, lambda out: 2 * out)
    for got, expected in zip(grads, want):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-12, atol=1e-12)


# -- a whole xpcnn.nn module: xpcnn.interop.jax.module -------------------------------------------------------------------

from xpcnn import nn, optim  # noqa: E402
from xpcnn.interop.jax import module  # noqa: E402

F64 = dict(xp=jnp, dtype=jnp.float64)


def _cnn(dropout: bool = False):
    """Conv-BatchNorm-ReLU-Pool-Flatten(-Dropout)-Linear, float64 JAX arrays, the same weights at every call."""
    tail = [nn.Dropout(0.3, seed=5)] if dropout else []
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, seed=0, **F64), nn.BatchNorm2d(4, **F64), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), *tail, nn.Linear(4 * 3 * 3, 3, seed=1, **F64))


def _residual():
    body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, seed=2, **F64), nn.BatchNorm2d(4, **F64), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, seed=3, **F64), nn.BatchNorm2d(4, **F64))
    shortcut = nn.Sequential(nn.Conv2d(3, 4, 1, stride=2, bias=False, seed=4, **F64), nn.BatchNorm2d(4, **F64))
    return nn.Residual(body, shortcut)


def _max_difference(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("build, x_shape", [(_cnn, (5, 2, 6, 6)), (lambda: _cnn(dropout=True), (5, 2, 6, 6)),
                                            (_residual, (3, 3, 7, 7))], ids=["cnn", "cnn-dropout", "residual"])
def test_module_grad_equals_the_modules_backward(build, x_shape, training, jit):
    apply_fn, params, state = module(build())
    x = jnp.asarray(rng.standard_normal(x_shape))
    reference = build().train(training)
    out = reference.forward(x)
    dout = jnp.asarray(rng.standard_normal(out.shape))
    dx = reference.backward(dout)

    def loss(params, x, state):
        out, new_state = apply_fn(params, state, x, training=training)
        return jnp.sum(out * dout), (out, new_state)

    grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
    (grads, got_dx), (got_out, new_state) = (jax.jit(grad) if jit else grad)(params, x, state)
    assert _max_difference(got_out, out) <= 1e-12
    assert _max_difference(got_dx, dx) <= 1e-12
    assert sorted(grads) == sorted(name for name, _ in reference.named_parameters())  # jax sorts dict keys
    for name, p in reference.named_parameters():
        assert _max_difference(grads[name], p.grad) <= 1e-12, name
    expected_state = {**dict(reference.named_buffers()), **dict(reference.named_extra_state())}
    assert sorted(new_state) == sorted(expected_state)
    for name, value in expected_state.items():
        assert new_state[name].dtype == state[name].dtype, name
        assert _max_difference(new_state[name], value) <= 1e-12, name


def test_training_with_jax_follows_xpcnns_own_training():
    """SGD with momentum written in JAX on the wrapped module, jitted, against xpcnn.optim.SGD on the module:
    parameters, running statistics, batch counts and Dropout's counter after a few steps."""
    lr, momentum, steps = 0.1, 0.9, 4
    xs = [jnp.asarray(rng.standard_normal((8, 2, 6, 6))) for _ in range(steps)]
    ys = [jnp.asarray(rng.integers(0, 3, 8)) for _ in range(steps)]
    cross_entropy = function(F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward)
    apply_fn, params, state = module(_cnn(dropout=True))

    @jax.jit
    def step(params, buffers, state, x, y):
        def loss(params):
            out, new_state = apply_fn(params, state, x, training=True)
            return cross_entropy(out, y), new_state

        grads, new_state = jax.grad(loss, has_aux=True)(params)
        buffers = {k: grads[k] if buffers is None else momentum * buffers[k] + grads[k] for k in grads}
        return {k: params[k] - lr * buffers[k] for k in params}, buffers, new_state

    params, buffers, state = step(params, None, state, xs[0], ys[0])  # torch.optim.SGD: buf = grad at first
    for x, y in zip(xs[1:], ys[1:]):
        params, buffers, state = step(params, buffers, state, x, y)

    model, loss_fn = _cnn(dropout=True), nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for x, y in zip(xs, ys):
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
    worst = max(_max_difference(params[name], p.data) for name, p in model.named_parameters())
    assert worst <= 1e-12
    for name, value in model.named_buffers():
        assert _max_difference(state[name], value) <= 1e-12, name
    assert int(state["1.num_batches_tracked"]) == steps and int(state["5.calls"]) == model[5].calls == steps


def test_module_leaves_the_wrapped_module_and_no_tracer_behind():
    m = _cnn(dropout=True)
    before = {k: v for k, v in m.state_dict().items()}
    apply_fn, params, state = module(m)
    out, new_state = jax.jit(lambda p, s, x: apply_fn(p, s, x, training=True))(params, state,
                                                                             jnp.ones((2, 2, 6, 6)))
    assert int(new_state["5.calls"]) == 1 and m[5].calls == 0 and m.training
    for name, value in m.state_dict().items():
        assert value is before[name]
    # a second, eager call after the traced one: the private copy holds concrete arrays again
    out2, _ = apply_fn(params, state, jnp.ones((2, 2, 6, 6)), training=True)
    np.testing.assert_allclose(np.asarray(out2), np.asarray(out), rtol=1e-12, atol=1e-12)
    # eval mode: running statistics, no dropout, the state passes through
    out3, same = apply_fn(params, state, jnp.ones((2, 2, 6, 6)), training=False)
    assert all(same[name] is state[name] for name in state)
    np.testing.assert_allclose(np.asarray(out3), np.asarray(m.eval().forward(jnp.ones((2, 2, 6, 6)))),
                               rtol=1e-12, atol=1e-12)


def test_module_errors():
    with pytest.raises(TypeError, match="xpcnn.nn.Module"):
        module(lambda x: x)
    with pytest.raises(TypeError, match="not a JAX array; build the module with xp=jax.numpy"):
        module(nn.Linear(3, 2))
    apply_fn, params, state = module(_cnn())
    x = jnp.ones((2, 2, 6, 6))
    bad = {**{k: v for k, v in params.items() if k != "0.bias"}, "0.weight": jnp.ones((4, 2, 5, 5)), "extra": x}
    with pytest.raises(ValueError, match=r"params do not match the module: missing '0.bias'; unexpected 'extra'; "
                                         r"'0.weight' has shape \(4, 2, 5, 5\), the module expects \(4, 2, 3, 3\)"):
        apply_fn(bad, state, x, training=True)
    with pytest.raises(ValueError, match="state does not match the module: missing '1.running_var'"):
        apply_fn(params, {k: v for k, v in state.items() if k != "1.running_var"}, x, training=True)
    with pytest.raises(TypeError, match="training must be True or False"):
        apply_fn(params, state, x, training=1)
    with pytest.raises(ValueError, match="layer 0"):  # the module's own checks, inside the wrapper
        apply_fn(params, state, jnp.ones((2, 3, 6, 6)), training=True)


_MODULE_32_BIT = """
import numpy as np, jax, jax.numpy as jnp
assert not jax.config.jax_enable_x64
from xpcnn import nn
from xpcnn.interop.jax import module
build = lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, xp=jnp, seed=0), nn.BatchNorm2d(4, xp=jnp), nn.ReLU(),
                              nn.Flatten(), nn.Dropout(0.3, seed=5), nn.Linear(4 * 5 * 5, 3, xp=jnp, seed=1))
apply_fn, params, state = module(build())
x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2, 5, 5)), dtype=jnp.float32)
loss = lambda p, s: (lambda out, ns: (jnp.sum(out ** 2), ns))(*apply_fn(p, s, x, training=True))
for _ in range(2):
    grads, state = jax.jit(jax.grad(loss, has_aux=True))(params, state)
reference = build()
for _ in range(2):
    reference.zero_grad()
    out = reference(x)
    reference.backward(2 * out)
worst = max(float(jnp.max(jnp.abs(grads[n] - p.grad) / (1 + jnp.abs(p.grad)))) for n, p in reference.named_parameters())
print(state["1.num_batches_tracked"].dtype, int(state["1.num_batches_tracked"]), int(state["4.calls"]), worst < 1e-5)
"""


def test_module_without_64_bit_mode():
    """JAX's default (no int64): the counters are int32, a traced Dropout counter draws the module's masks."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    result = subprocess.run([sys.executable, "-c", _MODULE_32_BIT], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["int32", "2", "2", "True"]

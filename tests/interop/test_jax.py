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

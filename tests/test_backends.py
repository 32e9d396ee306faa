"""Arrays of different libraries or devices in one call raise a ValueError naming both, for every op."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import functional as F


def _two_arg_calls(a, b):
    """Calls where a is the first array argument and b a second one, of matching shapes."""
    return [
        lambda: F.conv2d_forward(a((1, 2, 4, 4)), b((3, 2, 3, 3))),
        lambda: F.conv2d_forward(a((1, 2, 4, 4)), a((3, 2, 3, 3)), b((3,))),
        lambda: F.linear_forward(a((2, 4)), b((3, 4))),
        lambda: F.mse_loss_forward(a((2, 4)), b((2, 4))),
    ]


def test_mixed_libraries_raise(torch):
    numpy_array = lambda shape: np.zeros(shape, dtype=np.float32)  # noqa: E731
    torch_array = lambda shape: torch.zeros(shape, dtype=torch.float32)  # noqa: E731
    for call in _two_arg_calls(numpy_array, torch_array):
        with pytest.raises(ValueError, match="torch array but .* numpy array"):
            call()
    with pytest.raises(ValueError, match="torch array but logits is a numpy array"):
        F.softmax_cross_entropy_forward(np.zeros((2, 3)), torch.tensor([0, 1]))


def test_mixed_devices_raise():
    strict = pytest.importorskip("array_api_strict")
    cpu, device1 = strict.Device("CPU_DEVICE"), strict.Device("device1")
    on = lambda device: lambda shape: strict.zeros(shape, dtype=strict.float32, device=device)  # noqa: E731
    for call in _two_arg_calls(on(device1), on(cpu)):
        with pytest.raises(ValueError, match="device"):
            call()


def test_backward_rejects_dout_from_another_device():
    strict = pytest.importorskip("array_api_strict")
    x = strict.zeros((1, 1, 4, 4), dtype=strict.float32, device=strict.Device("device1"))
    out, cache = F.max_pool2d_forward(x, 2)
    with pytest.raises(ValueError, match="dout is on device"):
        F.max_pool2d_backward(strict.zeros(out.shape, dtype=strict.float32), cache)


# -- arrays whose device is not known: JAX arrays traced by jax.jit -----------------------------------------------------


def test_traced_input_meets_closed_over_weights_under_jit():
    """Under jax.jit a traced array has no device yet: concrete weights closed over by the jitted function (and a
    concrete cache in a backward pass, or a concrete x beside a traced weight) are accepted, with eager values."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from xpcnn import nn

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 3, 6, 6)), dtype=jnp.float32)
    w = jnp.asarray(rng.standard_normal((4, 3, 3, 3)), dtype=jnp.float32)
    b = jnp.asarray(rng.standard_normal(4), dtype=jnp.float32)
    eager, cache = F.conv2d_forward(x, w, b, padding=1)
    np.testing.assert_array_equal(jax.jit(lambda x: F.conv2d_forward(x, w, b, padding=1)[0])(x), eager)
    np.testing.assert_array_equal(jax.jit(lambda w: F.conv2d_forward(x, w, b, padding=1)[0])(w), eager)
    dout = jnp.ones_like(eager)
    for got, want in zip(jax.jit(lambda d: F.conv2d_backward(d, cache))(dout), F.conv2d_backward(dout, cache)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    stats = dict(running_mean=jnp.zeros(3, dtype=jnp.float32), running_var=jnp.ones(3, dtype=jnp.float32))
    bn = jax.jit(lambda x: F.batch_norm_forward(x, None, None, **stats, training=True)[1].running_mean)
    np.testing.assert_allclose(bn(x), F.batch_norm_forward(x, None, None, **stats, training=True)[1].running_mean,
                               rtol=1e-6, atol=1e-7)
    from xpcnn._validation import same_device

    assert jax.jit(lambda x: jnp.asarray(same_device(x, w)))(x)  # for checks other than namespace_and_device's
    model = nn.Sequential(nn.Conv2d(3, 4, 3, xp=jnp, seed=0), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 2, xp=jnp, seed=1))  # parameters: concrete JAX arrays
    np.testing.assert_allclose(jax.jit(model.forward)(x), model.forward(x), rtol=1e-5, atol=1e-6)


_TWO_JAX_DEVICES = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp
import xpcnn.functional as F
d0, d1 = jax.devices()[:2]
x0, x1 = (jax.device_put(jnp.ones((1, 2, 4, 4)), d) for d in (d0, d1))
w1, b0 = jax.device_put(jnp.ones((3, 2, 3, 3)), d1), jax.device_put(jnp.ones(3), d0)
for name, call in [("concrete", lambda: F.conv2d_forward(x0, w1)),
                   ("traced", lambda: jax.jit(lambda x: F.conv2d_forward(x, w1, b0)[0])(x1))]:
    try:
        call()
        print(name, "accepted")
    except ValueError as error:
        print(name, "raised:", error)
print("tracer beside one device", jax.jit(lambda x: F.conv2d_forward(x, w1)[0])(x1).shape)
from xpcnn._validation import same_device
print("same_device", same_device(x0, w1), same_device(x1, w1))
"""


def test_jax_arrays_on_two_devices_still_raise_beside_a_tracer():
    """Two concrete JAX arrays on different (CPU) devices raise, eagerly and beside a traced x under jit."""
    pytest.importorskip("jax")
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _TWO_JAX_DEVICES], capture_output=True, text=True, check=True)
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("concrete raised: weight is on device") and "id=1" in lines[0], result.stdout
    assert lines[1].startswith("traced raised: bias is on device") and "but weight" in lines[1], result.stdout
    assert lines[2] == "tracer beside one device (1, 3, 2, 2)", result.stdout
    assert lines[3] == "same_device False True", result.stdout

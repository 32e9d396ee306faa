"""xpcnn._random: the counter-based generator gives the same numbers in int64 and, where a namespace lacks int64
(JAX without 64-bit mode), in uint32."""

from __future__ import annotations

import subprocess
import sys

import array_api_compat.numpy as xp_numpy
import numpy as np
import pytest

from xpcnn import _random


@pytest.mark.parametrize("constant", [0x7FEB352D, 0x846CA68B, 0xFFFFFFFF, 1])
def test_narrow_product_is_the_product_mod_2_32(constant):
    x = np.random.default_rng(0).integers(0, 2**32, 10**5, dtype=np.uint64)
    x[:3] = (0, 2**32 - 1, 2**16)
    got = _random._mul32_narrow(x.astype(np.uint32), constant)
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got.astype(np.uint64), (x * constant) % 2**32)


@pytest.mark.parametrize("seed, stream, offset", [(0, 0, 0), (123 << 20, 5, 0), (2**40 + 7, 3, 2**31 + 5),
                                                  (-5, 2**33, 2**32 - 1000)])
def test_uint32_hash_gives_the_int64_numbers(seed, stream, offset):
    wide = _random.uniform(xp_numpy, (10, 100), seed=seed, stream=stream, offset=offset, device="cpu")
    bits = _random._narrow_bits(xp_numpy, 1000, offset, _random._key(seed, stream), "cpu")
    np.testing.assert_array_equal(np.reshape(bits >> 8, (10, 100)) * (1.0 / 2**24), wide)


@pytest.mark.parametrize("stream", [0, 5, -7, 2**31 - 1, -(2**31), 2**31 + 3, 2**40 + 1, -(2**45)])
def test_an_array_stream_gives_the_int_streams_numbers(stream):
    """A 0-d integer array stream (a counter jax.jit traces) is mixed on the device into the host's key."""
    seed = (9 << 20) + 2
    want = _random.uniform(xp_numpy, (7, 30), seed=seed, stream=stream, offset=11, device="cpu")
    got = _random.uniform(xp_numpy, (7, 30), seed=seed, stream=np.asarray(stream, dtype=np.int64), offset=11,
                          device="cpu")
    np.testing.assert_array_equal(got, want)
    if -(2**31) <= stream < 2**31:  # the uint32 path, with an int32 counter
        bits = _random._narrow_bits(xp_numpy, 210, 11, np.asarray(stream, dtype=np.int32), "cpu", seed=seed)
        np.testing.assert_array_equal(np.reshape(bits >> 8, (7, 30)) * (1.0 / 2**24), want)


def test_a_stream_must_be_an_int_or_a_0_d_integer_array():
    with pytest.raises(TypeError, match="stream must be an int or a 0-d integer array"):
        _random.uniform(xp_numpy, (3,), seed=0, stream=np.zeros(2, dtype=np.int64), device="cpu")
    with pytest.raises(TypeError, match="stream must be an int or a 0-d integer array"):
        _random.uniform(xp_numpy, (3,), seed=0, stream=np.asarray(1.0), device="cpu")


def test_uint32_hash_refuses_indices_past_2_32():
    with pytest.raises(ValueError, match="64-bit indices"):
        _random._narrow_bits(xp_numpy, 10, 2**32 - 5, 0, "cpu")


_JAX_32_BIT = """
import numpy as np, jax, jax.numpy as jnp
assert not jax.config.jax_enable_x64
from xpcnn import nn
import xpcnn.functional as F
a, b = nn.Conv2d(3, 8, 3, xp="jax.numpy", seed=0), nn.Conv2d(3, 8, 3, seed=0)
nn.Linear(4, 2, xp=jnp)                               # a seed from the global one (20 bits shifted: > 2**31)
x = np.ones((4, 100), dtype=np.float32)
mask_jax = np.asarray(F.dropout_forward(jnp.asarray(x), 0.5, seed=2**40, stream=3)[0])
mask_np = F.dropout_forward(x, 0.5, seed=2**40, stream=3)[0]
traced = jax.jit(lambda x, calls: F.dropout_forward(x, 0.5, seed=2**40, stream=calls)[0])
mask_traced = np.asarray(traced(jnp.asarray(x), jnp.asarray(3)))
print(a.weight.data.dtype, np.array_equal(mask_traced, mask_np), np.array_equal(np.asarray(a.weight.data), b.weight.data),
      np.array_equal(np.asarray(a.bias.data), b.bias.data), np.array_equal(mask_jax, mask_np))
"""


def test_jax_without_64_bit_mode_builds_layers_with_numpys_values():
    pytest.importorskip("jax")
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAX_ENABLE_X64"}
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", _JAX_32_BIT], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["float32", "True", "True", "True", "True"]


def test_a_counter_traced_by_jit_gives_the_ints_mask():
    jax = pytest.importorskip("jax")
    from xpcnn import functional as F

    x = np.ones((4, 100), dtype=np.float32)
    traced = jax.jit(lambda x, calls: F.dropout_forward(x, 0.5, seed=12345, stream=calls)[0])
    for calls in (0, 1, 7):
        np.testing.assert_array_equal(np.asarray(traced(jax.numpy.asarray(x), jax.numpy.asarray(calls))),
                                      F.dropout_forward(x, 0.5, seed=12345, stream=calls)[0])

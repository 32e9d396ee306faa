"""Every public forward/backward pair of xpcnn.functional, with inputs that exercise it (padding, overlapping
windows, groups, bias...). Shared by the tests that must cover all ops: read-only inputs, determinism, jax.jit,
Dask laziness."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import xpcnn.functional as F


@dataclass(frozen=True)
class Op:
    name: str
    forward: object
    backward: object
    make_inputs: object  # rng -> {argument: NumPy array} (floating arrays get the test's dtype)
    options: dict = field(default_factory=dict)
    scalar_dloss: bool = False  # the backward takes a number (a reduced loss), not an array of out's shape
    cache_outputs: tuple = ()  # arrays the forward pass returns in its cache (batch norm's running statistics)
    indices: bool = False  # the cache has max pooling's ``indices`` (an integer array among the results)

    def inputs(self, rng):
        return self.make_inputs(rng)


def _x(shape):
    return lambda rng: {"x": rng.standard_normal(shape)}


OPS = [
    Op("conv2d", F.conv2d_forward, F.conv2d_backward,
       lambda rng: {"x": rng.standard_normal((2, 4, 7, 6)), "weight": rng.standard_normal((6, 2, 3, 2)),
                    "bias": rng.standard_normal(6)},
       dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2)),
    Op("conv_transpose2d", F.conv_transpose2d_forward, F.conv_transpose2d_backward,
       lambda rng: {"x": rng.standard_normal((2, 4, 5, 6)), "weight": rng.standard_normal((4, 3, 3, 2)),
                    "bias": rng.standard_normal(6)},
       dict(stride=(2, 1), padding=1, output_padding=(1, 0), dilation=(1, 2), groups=2)),
    Op("max_pool2d", F.max_pool2d_forward, F.max_pool2d_backward,
       lambda rng: {"x": rng.integers(0, 3, (2, 3, 7, 6)).astype(np.float64)},  # ties
       dict(kernel_size=3, stride=1, padding=1, ceil_mode=True), indices=True),
    Op("avg_pool2d", F.avg_pool2d_forward, F.avg_pool2d_backward, _x((2, 3, 7, 6)),
       dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    Op("adaptive_avg_pool2d", F.adaptive_avg_pool2d_forward, F.adaptive_avg_pool2d_backward, _x((2, 3, 7, 6)),
       dict(output_size=(3, 4))),  # overlapping windows of two sizes
    Op("adaptive_max_pool2d", F.adaptive_max_pool2d_forward, F.adaptive_max_pool2d_backward,
       lambda rng: {"x": rng.integers(0, 3, (2, 3, 7, 6)).astype(np.float64)},  # ties
       dict(output_size=(4, 5)), indices=True),
    Op("interpolate", F.interpolate_forward, F.interpolate_backward, _x((2, 3, 5, 4)),
       dict(scale_factor=(1.5, 0.75), mode="bilinear")),
    Op("relu", F.relu_forward, F.relu_backward, _x((2, 3, 4))),
    Op("leaky_relu", F.leaky_relu_forward, F.leaky_relu_backward, _x((2, 3, 4)), dict(negative_slope=0.1)),
    Op("sigmoid", F.sigmoid_forward, F.sigmoid_backward, _x((2, 3, 4))),
    Op("tanh", F.tanh_forward, F.tanh_backward, _x((2, 3, 4))),
    Op("arctan", F.arctan_forward, F.arctan_backward, _x((2, 3, 4))),
    Op("gelu", F.gelu_forward, F.gelu_backward, lambda rng: {"x": rng.standard_normal((2, 3, 4)) * 2}),
    Op("gelu_tanh", F.gelu_forward, F.gelu_backward, _x((2, 3, 4)), dict(approximate="tanh")),
    Op("silu", F.silu_forward, F.silu_backward, _x((2, 3, 4))),
    Op("elu", F.elu_forward, F.elu_backward, _x((2, 3, 4)), dict(alpha=0.7)),
    Op("linear", F.linear_forward, F.linear_backward,
       lambda rng: {"x": rng.standard_normal((2, 3, 5)), "weight": rng.standard_normal((4, 5)),
                    "bias": rng.standard_normal(4)}),
    Op("flatten", F.flatten_forward, F.flatten_backward, _x((2, 3, 4, 5)), dict(start_dim=1)),
    Op("batch_norm2d", F.batch_norm2d_forward, F.batch_norm2d_backward,
       lambda rng: {"x": rng.standard_normal((3, 2, 4, 5)), "weight": rng.standard_normal(2),
                    "bias": rng.standard_normal(2)}),
    Op("batch_norm", F.batch_norm_forward, F.batch_norm_backward,
       lambda rng: {"x": rng.standard_normal((4, 3, 5)), "weight": rng.standard_normal(3),
                    "bias": rng.standard_normal(3), "running_mean": rng.standard_normal(3),
                    "running_var": rng.random(3) + 0.5},
       dict(momentum=0.2), cache_outputs=("running_mean", "running_var")),
    Op("batch_norm_eval", F.batch_norm_forward, F.batch_norm_backward,
       lambda rng: {"x": rng.standard_normal((4, 3)), "weight": rng.standard_normal(3),
                    "running_mean": rng.standard_normal(3), "running_var": rng.random(3) + 0.5},
       dict(training=False)),
    Op("layer_norm", F.layer_norm_forward, F.layer_norm_backward,
       lambda rng: {"x": rng.standard_normal((2, 3, 4, 5)), "weight": rng.standard_normal((4, 5)),
                    "bias": rng.standard_normal((4, 5))},
       dict(normalized_shape=(4, 5))),
    Op("group_norm", F.group_norm_forward, F.group_norm_backward,
       lambda rng: {"x": rng.standard_normal((2, 6, 3, 4)), "weight": rng.standard_normal(6)},
       dict(num_groups=3)),
    Op("dropout", F.dropout_forward, F.dropout_backward, _x((3, 4, 5)), dict(p=0.3, seed=1, stream=2)),
    Op("softmax_cross_entropy", F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward,
       lambda rng: {"logits": rng.standard_normal((5, 4)) * 3, "target": rng.integers(0, 4, 5)},
       scalar_dloss=True),
    Op("mse_loss", F.mse_loss_forward, F.mse_loss_backward,
       lambda rng: {"pred": rng.standard_normal((3, 4)), "target": rng.standard_normal((3, 4))},
       dict(reduction="sum"), scalar_dloss=True),
]


def run(op, arrays, dout_from):
    """Forward then backward; ``dout_from(out)`` makes the upstream gradient. Returns every array produced
    (out, the backward's outputs, and max pooling's indices, last)."""
    out, cache = op.forward(**arrays, **op.options)
    grads = op.backward(0.7 if op.scalar_dloss else dout_from(out), cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    extra = (cache.indices,) if op.indices else ()
    extra += tuple(getattr(cache, name) for name in op.cache_outputs)
    return (out, *[g for g in grads if g is not None], *extra)

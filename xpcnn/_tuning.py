"""The cost model: every tuning threshold and algorithm choice of xpcnn in one place, with a profile per device kind.

An op never hard-codes a threshold: it asks :func:`profile_for` for the profile of its input's device and reads the
named field. Two profiles exist:

``host``
    NumPy, PyTorch CPU tensors, array-api-strict (every device: they are all host memory), JAX on the CPU, Dask
    with NumPy chunks. Batches are cut into pieces small enough to stay in the CPU's caches.
``accelerator``
    CuPy, PyTorch CUDA/MPS tensors, JAX on a GPU, Dask with CuPy chunks. Every kernel launch costs a few
    microseconds, so batches are processed whole wherever a workspace in the hundreds of MiB holds them.

The profile is chosen from the array's library and device without a device synchronisation. It can be forced on
any backend with :func:`xpcnn.config.device_profile` (``with device_profile("accelerator"): ...``), which is how the
CPU-only tests run the accelerator's code paths; the results are the same under both profiles.

Adding a threshold: a field of :class:`Profile` with a docstring saying what it decides and in which unit, a value
in both profiles, read by name where the choice is made (``profile_for(x).field``), and where the choice has two
paths, a private argument that selects one explicitly (as ``stacked_windows(by_take=...)``) so the tests cover both
without monkeypatching.

Where the values come from: benchmarks/README.md ("Choices in the code" for the host's, "Kernel budgets" for the
accelerator's, whose kernel counts tests/test_kernels.py guards).
"""

from __future__ import annotations

import contextvars
import dataclasses
from typing import Any

from array_api_compat import is_cupy_array, is_dask_array, is_jax_array, is_torch_array

__all__ = ["Profile", "HOST", "ACCELERATOR", "PROFILES", "profile_for", "forced_profile"]


@dataclasses.dataclass(frozen=True)
class Profile:
    """Thresholds and algorithm choices for one kind of device. Every field is read by name by the ops."""

    name: str
    workspace_limit: int
    """Bytes a convolution may spend on one batch piece's column buffer (and padded input), and a pooling op on its
    temporaries; larger batches are processed in pieces of whole samples (at least one)."""
    take_short_rows: int
    """Windows are gathered with one ``take`` (instead of ``kh * kw`` strided slices) when the output rows are
    shorter than this: a strided copy pays a fixed cost per row, a ``take`` a cost per element."""
    take_max_indices: int
    """... and when one plane's windows hold at most this many elements (their index array is built once per
    geometry and kept)."""
    transposed_dx_ratio: float
    """With stride 1, dx is computed as a correlation of dout (instead of col2im) when it gathers at most this many
    times the values col2im adds: ``O * H * W <= ratio * C * out_h * out_w``."""
    per_sample_weight_gradient_ratio: float
    """The weight gradient is a product per sample, summed, when ``P >= ratio * Og`` (positions against output
    channels per group); otherwise one product with the batch folded into the positions."""
    separable_max_pool_ratio: float = 1.0
    """Max pooling takes the two separable passes (along the rows, then across them: ``kh + kw`` slices) when they
    walk fewer than ``ratio`` times the elements of the ``kh * kw`` slices (3x3 with stride 1: 0.69; 3x3 with
    stride 2 and 2x2 with stride 2: above 1). Each slice costs a few kernel launches on an accelerator."""
    copy_strided_windows: bool = True
    """Max pooling copies each window slice that is strided along the width (stride > 1) once to contiguous memory
    before its comparisons: on NumPy a strided operand costs every one of them (the copy pays at stride 2, not at
    stride 1; benchmarks/README.md). An accelerator reads strided slices at little cost; a copy is one more
    kernel."""
    gather_max_pool: bool = False
    """Max pooling gathers every window at once (one ``take``, or one stack of the ``kh * kw`` slices), takes their
    ``max`` and finds each window's winner by one ``argmax`` over a score array (the first maximum, or the last
    NaN); its backward pass compares the winners with all ``kh * kw`` codes at once, then adds the parts back per
    offset. A fixed number of kernels instead of several per window element, for a ``kh * kw`` times larger
    temporary (the batch is cut into pieces of ``workspace_limit``). Off: the running maximum over the slices (or
    the separable passes), which keeps the temporaries output-sized and the CPU's caches warm."""
    multi_tensor_optimizer: bool = False
    """Adam and AdamW update the parameters of one library, device, dtype and step count together, as one flat
    array (their gradients joined by one ``concat``; the parameters and moments kept joined between steps): ~14
    kernels per step for all of them instead of 13 for each. The same bits either way (the update is
    elementwise). Off: one parameter at a time, no joined copies."""
    winograd_min_channels: int = 16
    """3 x 3, stride-1, dilation-1 convolutions take Winograd's F(m x m, 3 x 3) (:mod:`xpcnn._winograd`) for the
    forward pass, dx and dweight only with at least this many channels per group on both sides (input and output):
    below it the GEMMs that Winograd shrinks are small and its transforms (memory passes per channel) dominate
    (a LeNet-like 6 -> 16 layer was slower than im2col; 16 channels and up faster, benchmarks/bench_winograd.py)."""
    winograd_min_output: int = 4
    """... and only for outputs of at least this many rows and columns (smaller ones crop most of every tile)."""
    winograd_f4_max_channels: int = 256
    """F(4x4, 3x3) up to this many channels per group (input and output), F(2x2, 3x3) beyond: F(4x4)'s float32
    error grows with the channels summed (at 256 it used 0.43 of the float32 tolerance of the PyTorch comparison
    tests, benchmarks/winograd_error.py); F(4x4) was the faster of the two on every shape measured."""
    winograd_workspace_limit: int = 4 * 2**20
    """Bytes for one Winograd batch piece's working arrays (padded rows, transformed input, products; at least one
    sample per piece). On the host, pieces that stay in the CPU's caches were the fastest (2-4 MiB, conv (c),
    ``bench_winograd.py --workspace-mib``). The global ``workspace_limit`` setting, or a call's, replaces it."""


HOST = Profile(
    name="host",
    workspace_limit=2 * 2**20,
    take_short_rows=16,
    take_max_indices=2**14,
    transposed_dx_ratio=2.0,
    per_sample_weight_gradient_ratio=1.0,
    separable_max_pool_ratio=1.0,
    copy_strided_windows=True,
    gather_max_pool=False,
    multi_tensor_optimizer=False,
    winograd_min_channels=16,
    winograd_min_output=4,
    winograd_f4_max_channels=256,
    winograd_workspace_limit=4 * 2**20,
)

ACCELERATOR = Profile(
    name="accelerator",
    workspace_limit=512 * 2**20,
    take_short_rows=2**31,  # always one gather: one kernel instead of kh * kw
    take_max_indices=2**24,
    transposed_dx_ratio=2.0,
    per_sample_weight_gradient_ratio=float("inf"),  # one product with the batch folded in: one kernel
    separable_max_pool_ratio=1.5,  # fewer slices, fewer launches: 3x3 at stride 2 too (6 slices, not 9)
    copy_strided_windows=False,  # a strided read costs little; a copy is one more kernel per slice
    gather_max_pool=True,  # one gather, one max, one argmax: the budget of tests/test_kernels.py
    multi_tensor_optimizer=True,  # Adam's 13 kernels once for all parameters, not once each
    # Not measured on a GPU yet: the host's rule, with the whole batch in one piece (some ten kernels a piece).
    winograd_min_channels=16,
    winograd_min_output=4,
    winograd_f4_max_channels=256,
    winograd_workspace_limit=512 * 2**20,
)

PROFILES = {profile.name: profile for profile in (HOST, ACCELERATOR)}

_forced: contextvars.ContextVar[Profile | None] = contextvars.ContextVar("xpcnn_forced_profile", default=None)


def forced_profile() -> contextvars.ContextVar:
    """The context variable behind :func:`xpcnn.config.device_profile` (None: chosen per array)."""
    return _forced


def profile_for(array: Any) -> Profile:
    """The profile for ``array``'s device: the forced one inside :func:`xpcnn.config.device_profile`, else
    ``accelerator`` for GPU arrays (CuPy, PyTorch on a non-CPU device, JAX on a non-CPU platform, Dask with CuPy
    chunks) and ``host`` for everything else. Looks only at metadata: no device synchronisation."""
    forced = _forced.get()
    if forced is not None:
        return forced
    return ACCELERATOR if _on_accelerator(array) else HOST


def _on_accelerator(array: Any) -> bool:
    if is_cupy_array(array):
        return True
    if is_torch_array(array):
        return array.device.type != "cpu"
    if is_jax_array(array):
        try:
            platforms = {d.platform for d in array.devices()}
        except Exception:  # a tracer under jax.jit has no device: the default backend's
            import jax  # host: a tracer's platform: the default backend's

            platforms = {jax.default_backend()}
        return bool(platforms - {"cpu"})
    if is_dask_array(array):
        return is_cupy_array(getattr(array, "_meta", None))
    return False

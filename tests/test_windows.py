"""The window primitive: windows() gathers what naive loops gather; scatter_windows() is its exact adjoint."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn._windows import pad, scatter_windows, window_geometry, windows

GEOMETRIES = [
    dict(in_size=(5, 7), kernel=(3, 2), stride=(2, 3), dilation=(1, 2), padding=((1, 1), (0, 2))),
    dict(in_size=(4, 4), kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding=((1, 1), (1, 1))),
    dict(in_size=(6, 5), kernel=(3, 3), stride=(2, 2), dilation=(1, 1), padding=((1, 1), (1, 1)), ceil_mode=True),
    dict(in_size=(1, 1), kernel=(1, 1), stride=(3, 3), dilation=(2, 2), padding=((0, 0), (0, 0))),
    # ceil_mode: a kernel larger than the padded input, its one window overhanging it (PyTorch's pooling allows it)
    dict(in_size=(2, 1), kernel=(3, 4), stride=(3, 4), dilation=(1, 1), padding=((0, 0), (1, 1)), ceil_mode=True),
]


@pytest.mark.parametrize("spec", GEOMETRIES, ids=str)
def test_windows_match_naive_loops(xp, spec):
    geometry = window_geometry(**spec)
    x = np.random.default_rng(0).standard_normal((2, 3, *spec["in_size"])).astype(np.float32)
    x_padded = pad(xp, xp.asarray(x), geometry, 0.0)
    (top, _), (left, _) = geometry.padding
    padded = np.zeros((2, 3, *geometry.padded_size), dtype=np.float32)
    padded[..., top : top + x.shape[2], left : left + x.shape[3]] = x
    for i, j, window in windows(x_padded, geometry):
        expected = np.empty((2, 3, *geometry.out_size), dtype=np.float32)
        for oh in range(geometry.out_size[0]):
            for ow in range(geometry.out_size[1]):
                row = oh * geometry.stride[0] + i * geometry.dilation[0]
                col = ow * geometry.stride[1] + j * geometry.dilation[1]
                expected[..., oh, ow] = padded[..., row, col]
        np.testing.assert_array_equal(xp.to_numpy(window), expected)


@pytest.mark.parametrize("spec", GEOMETRIES, ids=str)
def test_scatter_is_the_adjoint_of_gather(xp, spec):
    """<gather(x), c> == <x, scatter(c)> for every x and c: col2im is exactly the transpose of im2col."""
    geometry = window_geometry(**spec)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, *spec["in_size"])).astype(np.float32)
    parts = [rng.standard_normal((2, 3, *geometry.out_size)).astype(np.float32) for _ in geometry.offsets()]
    gathered = [xp.to_numpy(w) for _, _, w in windows(pad(xp, xp.asarray(x), geometry, 0.0), geometry)]
    scattered = scatter_windows(
        xp, [xp.asarray(p) for p in parts], geometry, (2, 3), dtype=xp.float32, device=xp.device
    )
    xp.assert_on_backend(scattered, xp.float32)
    lhs = sum(float(np.sum(g.astype(np.float64) * p)) for g, p in zip(gathered, parts))
    rhs = float(np.sum(x.astype(np.float64) * xp.to_numpy(scattered)))
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_ceil_mode_drops_a_window_that_starts_in_the_padding():
    assert window_geometry((5, 5), (2, 2), (2, 2), (1, 1), ((1, 1), (1, 1)), ceil_mode=True).out_size == (3, 3)
    assert window_geometry((4, 4), (2, 2), (2, 2), (1, 1), ((1, 1), (1, 1)), ceil_mode=True).out_size == (3, 3)
    assert window_geometry((4, 4), (2, 2), (2, 2), (1, 1), ((0, 0), (0, 0)), ceil_mode=True).out_size == (2, 2)
    assert window_geometry((5, 5), (2, 2), (2, 2), (1, 1), ((0, 0), (0, 0)), ceil_mode=True).out_size == (3, 3)


def test_ceil_mode_keeps_a_window_larger_than_the_padded_input():
    """PyTorch's pooling with ceil_mode keeps a window that starts inside x even when the (dilated) kernel is larger
    than the padded input; without ceil_mode, or when no window is left, it refuses (found by the fuzzer)."""
    assert window_geometry((2, 7), (3, 3), (3, 3), (1, 3), ((0, 0), (0, 0)), ceil_mode=True).out_size == (1, 1)
    assert window_geometry((1, 1), (4, 4), (4, 4), (1, 1), ((1, 1), (1, 1)), ceil_mode=True).out_size == (1, 1)
    with pytest.raises(ValueError, match="larger than the padded input height 2"):
        window_geometry((2, 7), (3, 3), (3, 3), (1, 3), ((0, 0), (0, 0)))


@pytest.mark.torch_reference
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_ceil_mode_window_larger_than_the_padded_input_matches_torch(torch, pool):
    import xpcnn.functional as F

    x = np.random.default_rng(0).standard_normal((2, 3, 2, 7))
    options = dict(stride=None, padding=(0, 1), ceil_mode=True)
    kernel = (3, 4)
    if pool == "max":
        options["dilation"] = (1, 2)
    t = torch.tensor(x, requires_grad=True)
    ref = getattr(torch.nn.functional, f"{pool}_pool2d")(t, kernel, **options)
    out, cache = getattr(F, f"{pool}_pool2d_forward")(x, kernel, **options)
    dout = np.random.default_rng(1).standard_normal(out.shape)
    ref.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(getattr(F, f"{pool}_pool2d_backward")(dout, cache), t.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("spec", GEOMETRIES[:3], ids=str)
def test_in_place_and_standard_updates_agree(xp, monkeypatch, spec):
    """The dispatch point: ``+=`` and slice assignment where the library allows it (NumPy, CuPy, PyTorch),
    ``array_api_extra.at`` and concatenated blocks elsewhere give the same arrays bitwise (scatter and pad); the
    standard paths are also run here on the mutable backends."""
    from xpcnn import _windows

    geometry = window_geometry(**spec)
    rng = np.random.default_rng(2)
    parts = [xp.asarray(rng.standard_normal((2, 3, *geometry.out_size)).astype(np.float32)) for _ in geometry.offsets()]
    x = xp.asarray(rng.standard_normal((2, 3, *geometry.in_size)).astype(np.float32))
    dispatched = [scatter_windows(xp, parts, geometry, (2, 3), dtype=xp.float32, device=xp.device)]
    dispatched += [pad(xp.namespace, x, geometry, fill) for fill in (0.0, -np.inf)]
    monkeypatch.setattr(_windows, "updates_in_place", lambda array: False)
    standard = [scatter_windows(xp, parts, geometry, (2, 3), dtype=xp.float32, device=xp.device)]
    standard += [pad(xp.namespace, x, geometry, fill) for fill in (0.0, -np.inf)]
    for a, b in zip(dispatched, standard, strict=True):
        xp.assert_on_backend(b, xp.float32)
        np.testing.assert_array_equal(xp.to_numpy(a), xp.to_numpy(b))


@pytest.mark.parametrize("fill", [0.0, -np.inf])
@pytest.mark.parametrize(
    "spec",
    [
        *GEOMETRIES,
        dict(in_size=(3, 20), kernel=(2, 3), stride=(1, 1), dilation=(1, 1), padding=((0, 0), (0, 0))),
        dict(in_size=(5, 9), kernel=(2, 2), stride=(3, 2), dilation=(2, 3), padding=((1, 0), (2, 1)), ceil_mode=True),
    ],
    ids=str,
)
def test_stacked_windows_by_take_equal_stacked_slices(xp, spec, fill):
    """Both ways of gathering every window (im2col) give the same array: the stacked strided slices of the
    padded input, and one ``take`` from the flattened planes with ``fill`` at the padding's positions."""
    from xpcnn._windows import stacked_windows

    geometry = window_geometry(**spec)
    x = xp.asarray(np.random.default_rng(3).standard_normal((2, 3, *spec["in_size"])).astype(np.float32))
    by_slices = stacked_windows(xp.namespace, x, geometry, fill, by_take=False)
    by_take = stacked_windows(xp.namespace, x, geometry, fill, by_take=True)
    for stacked in (by_slices, by_take):
        xp.assert_on_backend(stacked, xp.float32)
        assert tuple(stacked.shape) == (2, 3, len(geometry.offsets()), *geometry.out_size)
    np.testing.assert_array_equal(xp.to_numpy(by_take), xp.to_numpy(by_slices))
    for k, (_, _, window) in enumerate(windows(pad(xp.namespace, x, geometry, fill), geometry)):
        np.testing.assert_array_equal(xp.to_numpy(by_take)[:, :, k], xp.to_numpy(window))


@pytest.mark.parametrize(
    "spec",
    [
        GEOMETRIES[1],
        dict(in_size=(5, 7), kernel=(2, 3), stride=(1, 1), dilation=(2, 1), padding=((1, 0), (2, 2))),
        dict(in_size=(3, 4), kernel=(3, 4), stride=(1, 1), dilation=(1, 1), padding=((0, 0), (0, 0))),
    ],
    ids=str,
)
def test_scatter_wide_rows_equals_scatter_windows(xp, spec):
    """Stride-1 parts extended with zeros to the padded width, each added as one contiguous run, give what the
    per-slice scatter gives (bitwise: every element sums the same values in the same order)."""
    from xpcnn._windows import scatter_wide_rows

    geometry = window_geometry(**spec)
    (out_h, out_w), padded_w = geometry.out_size, geometry.padded_size[1]
    rng = np.random.default_rng(4)
    parts = [rng.standard_normal((2, 3, out_h, out_w)).astype(np.float32) for _ in geometry.offsets()]
    wide = [np.concatenate([p, np.zeros((2, 3, out_h, padded_w - out_w), np.float32)], -1) for p in parts]
    like = dict(dtype=xp.float32, device=xp.device)
    expected = scatter_windows(xp, [xp.asarray(p) for p in parts], geometry, (2, 3), **like)
    got = scatter_wide_rows(xp, [xp.asarray(w.reshape(2, 3, -1)) for w in wide], geometry, (2, 3), **like)
    xp.assert_on_backend(got, xp.float32)
    np.testing.assert_array_equal(xp.to_numpy(got), xp.to_numpy(expected))


def test_scatter_wide_rows_needs_stride_one():
    from xpcnn._windows import scatter_wide_rows

    with pytest.raises(ValueError, match="stride 1"):
        scatter_wide_rows(np, [], window_geometry(**GEOMETRIES[0]), (1,), dtype=np.float32, device="cpu")

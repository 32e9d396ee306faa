"""The networks of the seed articles on CNN backpropagation, built and trained with xpcnn.

A 6x6 input, a 3x3 convolution (with and without ReLU), 2x2 pooling (max, then average), a 4->1 linear layer, an
arctan output and an L2 cost, trained by plain SGD on the articles' two images (pixel sums +26 and -12; the targets
are arctan of the sums). The original notebook's run never fits the second target (its prediction stays near +1.56
against -1.49); these do. For one step, the script prints where the pooling layer sends its gradient.

    python examples/seed_networks.py
"""

from __future__ import annotations

import argparse

import numpy as np

import xpcnn
from xpcnn import nn

X1 = [[1, 1, 0, 1, 0, 1], [1, 1, 0, 1, 0, 1], [1, 1, 0, 1, 0, 1],
      [1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 0, 1]]
X2 = [[-1, 0, -1, 0, 0, 1], [-1, 0, -1, 0, 0, 1], [-1, 0, -1, 1, 0, 1],
      [-1, -1, -1, 0, 0, -1], [-1, 0, -1, 0, 0, -1], [-1, 0, -1, 0, 0, -1]]


def seed_data():
    """The two images (2, 1, 6, 6) and their targets arctan(pixel sum) (2, 1), float64."""
    x = np.array([X1, X2], dtype=np.float64)[:, None]
    return x, np.arctan(x.sum(axis=(1, 2, 3)))[:, None]


def seed_network(relu: bool, pool: type, seed: int = 0):
    nn.manual_seed(seed)
    layers = [nn.Conv2d(1, 1, 3, bias=False, dtype=np.float64)]
    layers += [nn.ReLU()] if relu else []
    layers += [pool(2), nn.Flatten(), nn.Linear(4, 1, bias=False, dtype=np.float64), nn.Arctan()]
    return nn.Sequential(*layers)


def train(model, x, y, *, lr=0.5, steps=3000):
    """Plain full-batch SGD on the mean squared error; returns the final predictions (2,)."""
    optimizer, loss = xpcnn.optim.SGD(model.parameters(), lr=lr), nn.MSELoss()
    for _ in range(steps):
        optimizer.zero_grad()
        loss(model.forward(x), y)
        model.backward(loss.backward())
        optimizer.step()
    return model.forward(x)[:, 0]


def pooling_gradient(model, x, y):
    """One forward/backward pass; returns the pooling layer's input, the gradient arriving at its output and the
    gradient it sends to its input."""
    at = next(i for i, layer in enumerate(model.layers) if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)))
    h = x
    for layer in model.layers[:at]:
        h = layer.forward(h)
    pool_input = h
    for layer in model.layers[at:]:
        h = layer.forward(h)
    loss = nn.MSELoss()
    loss(h, y)
    g = loss.backward()
    for layer in reversed(model.layers[at + 1 :]):
        g = layer.backward(g)
    return pool_input, g, model.layers[at].backward(g)


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.splitlines()[0],
                            epilog="Trains each seed network and prints its predictions and pooling gradients; "
                                   "it takes no options.").parse_args(argv)
    np.set_printoptions(precision=4, suppress=True)
    x, y = seed_data()
    print(f"targets: {y[:, 0]}")
    for pool in (nn.MaxPool2d, nn.AvgPool2d):
        for relu in (False, True):
            model = seed_network(relu, pool)
            name = f"conv3x3{' + ReLU' if relu else ''} + {pool.__name__}(2) + linear 4->1 + arctan"
            pool_input, upstream, routed = pooling_gradient(model, x, y)
            if not relu:
                print(f"\n== {pool.__name__}: one step, first image ==")
                print("pooling input (the 4x4 convolution output):\n", pool_input[0, 0])
                print("gradient arriving at the 2x2 pooling output:\n", upstream[0, 0])
                print("gradient sent to the pooling input:\n", routed[0, 0])
            predictions = train(model, x, y)
            print(f"{name}: predictions {predictions} (error {np.abs(predictions - y[:, 0]).max():.4f})")


if __name__ == "__main__":
    main()

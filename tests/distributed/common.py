"""Shared pieces of the data-parallel tests: small float64 models and data with a last batch smaller than 3."""

from __future__ import annotations

import numpy as np

from xpcnn import nn, optim

BATCH = 61
N = 2 * BATCH + 2  # the last global batch holds 2 samples: with 3 replicas, one shard is empty


def data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)), rng.integers(0, 10, n)


def bn_dropout_model():
    """Both kinds of batch norm and a dropout; no bias before a batch norm (its gradient is 0 up to rounding,
    which Adam would blow up to steps of lr)."""
    nn.manual_seed(0)
    f = np.float64
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False, dtype=f), nn.BatchNorm2d(4, dtype=f), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 16, bias=False, dtype=f), nn.BatchNorm1d(16, dtype=f), nn.ReLU(),
        nn.Dropout(0.3), nn.Linear(16, 10, dtype=f),
    )


def make_optimizer(kind, model):
    if kind == "sgd":
        return optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return optim.Adam(model.parameters(), lr=1e-2)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)))) for k in a)


def bitwise_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

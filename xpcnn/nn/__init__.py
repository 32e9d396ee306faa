"""Layer objects, Sequential and losses, built on :mod:`xpcnn.functional` (every backward is the hand-written one)."""

from .init import manual_seed
from .layers import *  # noqa: F403
from .layers import __all__ as _layers
from .losses import CrossEntropyLoss, MSELoss
from .containers import Concat, Residual, Sequential
from .module import Module, Parameter

__all__ = ["Module", "Parameter", "Sequential", "Residual", "Concat", "CrossEntropyLoss", "MSELoss", "manual_seed", *_layers]

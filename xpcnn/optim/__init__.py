"""Optimizers (SGD, Adam, AdamW), learning-rate schedulers and gradient clipping, with ``torch.optim``'s names and
semantics. The schedulers also live in :mod:`xpcnn.optim.lr_scheduler`, as in PyTorch."""

from . import lr_scheduler
from .clip import clip_grad_norm_, clip_grad_value_
from .lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
)
from .optimizers import SGD, Adam, AdamW, Optimizer

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler", "LRScheduler", "StepLR", "MultiStepLR",
           "ExponentialLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau", "clip_grad_norm_",
           "clip_grad_value_"]

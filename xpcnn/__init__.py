"""xpcnn: CNN layers with explicit, readable backpropagation, written once on the Python array API.

The same code runs on NumPy arrays (CPU), CuPy arrays (GPU) and any other array API library; the namespace is
chosen by the input's type.

* :mod:`xpcnn.functional`: the forward/backward pairs of every layer;
* :mod:`xpcnn.nn`: layer objects, ``Sequential`` and losses; :mod:`xpcnn.optim`: SGD, Adam, AdamW;
* :func:`fit`, :func:`evaluate`, :func:`predict`, with :class:`DataOrder` and the callbacks :class:`EarlyStopping`
  and :class:`BestCheckpoint`; :func:`save`, :func:`load` (``.npz`` or ``.safetensors``); :func:`save_checkpoint`,
  :func:`load_checkpoint`;
* ``xpcnn.interop`` (imported on demand): xpcnn's passes inside PyTorch and JAX autodiff, and PyTorch state
  dicts by name; ``xpcnn.testing`` (imported on demand): gradient checks, the backend matrix, ``assert_close``.
"""

from . import config, functional, nn, optim
from .config import set_workspace_limit, workspace_limit
from .serialization import load, save
from .training import Callback, DataOrder, EarlyStopping, TrainingRun, evaluate, fit, predict
from .checkpoint import BestCheckpoint, Checkpoint, load_checkpoint, save_checkpoint

__version__ = "0.1.0"
__all__ = ["config", "functional", "nn", "optim", "fit", "evaluate", "predict", "save", "load",
           "set_workspace_limit", "workspace_limit", "DataOrder", "TrainingRun", "Callback", "EarlyStopping",
           "save_checkpoint", "load_checkpoint", "Checkpoint", "BestCheckpoint"]

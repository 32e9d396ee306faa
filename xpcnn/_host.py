"""The one place where arrays cross to host memory: saving ``.npz`` files and explicit moves between backends.

Nothing in the layers calls this; a model only reaches it through :meth:`xpcnn.nn.Module.to`, ``save`` and
``load``, which the user asks for by name.
"""

from __future__ import annotations

import array_api_compat
import numpy as np  # host: .npz files and explicit backend moves go through host memory


def to_numpy(a) -> np.ndarray:  # host: the explicit copy to host memory
    """A host NumPy copy (or view, for NumPy input) of an array of any backend."""
    xp = array_api_compat.array_namespace(a)
    if array_api_compat.is_array_api_strict_namespace(xp):
        import array_api_strict

        a = a.to_device(array_api_strict.Device("CPU_DEVICE"))
    elif array_api_compat.is_torch_array(a):
        a = a.detach().cpu()
    elif array_api_compat.is_cupy_array(a):
        a = a.get()
    return np.asarray(a)  # host: the documented copy


def from_numpy(host, xp, device):
    """Copy a host NumPy array into namespace ``xp`` on ``device``."""
    return xp.asarray(host, device=device, copy=True)

"""Neither PyTorch nor JAX is a dependency: importing the adapters imports neither framework."""

import subprocess
import sys


def test_importing_the_adapters_imports_no_framework():
    code = ("import sys, xpcnn.interop.torch, xpcnn.interop.jax; "
            "print(sorted(m for m in ('torch', 'jax') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

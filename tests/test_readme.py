"""README's NumPy examples run as written (in a temporary directory: they save a file); the PyTorch one too where
PyTorch (JAX) is installed, the safetensors ones where the safetensors package is, and the cluster one where
dask.distributed is."""

import importlib.util
from pathlib import Path


def test_readme_numpy_examples_run(tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    missing = [name for name in ("torch", "jax", "safetensors", "distributed") if importlib.util.find_spec(name) is None]
    def needs(block, module):
        return (f"import {module}" in block or f"from {module} import" in block
                or (module == "safetensors" and ".safetensors" in block))

    numpy_blocks = [b for b in blocks if "import cupy" not in b and not any(needs(b, m) for m in missing)]
    assert len(numpy_blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for block in numpy_blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "model.npz").exists()

"""README's NumPy examples run as written (in a temporary directory: they save a file); the PyTorch one too where
PyTorch (JAX) is installed, and the safetensors ones where the safetensors package is."""

import importlib.util
from pathlib import Path


def test_readme_numpy_examples_run(tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    missing = [name for name in ("torch", "jax", "safetensors") if importlib.util.find_spec(name) is None]
    needs = lambda b, m: f"import {m}" in b or (m == "safetensors" and ".safetensors" in b)  # noqa: E731
    numpy_blocks = [b for b in blocks if "import cupy" not in b and not any(needs(b, m) for m in missing)]
    assert len(numpy_blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for block in numpy_blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "model.npz").exists()

"""README's NumPy example runs as written."""

from pathlib import Path


def test_readme_numpy_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    numpy_blocks = [b for b in blocks if "import cupy" not in b]
    assert numpy_blocks
    for block in numpy_blocks:
        exec(compile(block, "README.md", "exec"), {})

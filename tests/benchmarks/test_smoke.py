"""Every benchmark script runs on tiny sizes, so they never rot (no timing is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytest.importorskip("torch")


def test_bench_layers_plot_and_train(tmp_path, capsys):
    pytest.importorskip("scipy")
    pytest.importorskip("skimage")
    import bench_layers
    import bench_train
    import plot

    for dtype in ("float32", "float64"):
        bench_layers.main(["--tiny", "--repeats", "1", "--settle", "0", "--dtype", dtype,
                           "--json", str(tmp_path / f"{dtype}.json")])
    bench_train.main(["--steps", "1", "--repeats", "1", "--settle", "0", "--batch-size", "4",
                      "--json", str(tmp_path / "train.json")])  # both networks, each checked for the same loss
    train = json.loads((tmp_path / "train.json").read_text())
    assert [(r["network"], r["contender"]) for r in train["rows"]] == [
        ("lenet", "xpcnn"), ("lenet", "torch"), ("resnet", "xpcnn"), ("resnet", "torch")]
    assert all(len(r["check_losses"]) == 2 and r["images_per_s"] > 0 for r in train["rows"])
    layers = json.loads((tmp_path / "float32.json").read_text())
    contenders = {(r["workload"], r["contender"]) for r in layers["rows"]}
    assert {("c", "xpcnn"), ("c", "torch"), ("c", "gemm-limit"), ("c", "seed-style"), ("d", "xpcnn"),
            ("e", "xpcnn"), ("e", "xpcnn-conv2d-mirror")} <= contenders
    assert all(r["vs_mirror"] > 0 for r in layers["rows"] if r["workload"] == "e" and r["contender"] == "xpcnn")
    plot.main([str(p) for p in sorted(tmp_path.glob("*.json"))]
              + ["--out", str(tmp_path / "ratios.png"), "--markdown", str(tmp_path / "table.md")])
    assert (tmp_path / "ratios.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "table.md").read_text()
    assert "| c | conv2d | fwd+bwd | float32 |" in table
    assert "| digits LeNet | numpy | 4 |" in table and "| MNIST ResNet | numpy | 4 |" in table
    assert "vs_torch" in capsys.readouterr().out

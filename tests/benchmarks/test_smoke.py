"""Every benchmark script runs on tiny sizes, so they never rot (no timing is asserted). The whole module stays
within 20 s on an idle 2-core machine: one run of each script, one round each, no settling."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytest.importorskip("torch")
QUICK = ["--repeats", "1", "--settle", "0"]


def test_bench_layers_plot_and_train(tmp_path, monkeypatch, capsys):
    pytest.importorskip("scipy")
    pytest.importorskip("skimage")
    import bench_layers
    import bench_train
    import plot

    monkeypatch.chdir(tmp_path)  # relative --json paths are the working directory's; folders are made
    bench_layers.main(["--tiny", *QUICK, "--no-memory", "--json", "results/float32.json"])
    bench_layers.main(["--tiny", *QUICK, "--workload", "c", "--dtype", "float64", "--json", "results/float64.json"])
    bench_train.main(["--tiny", "--json", "results/train.json"])  # both networks, each checked for the same loss
    results = tmp_path / "results"
    train = json.loads((results / "train.json").read_text())
    assert [(r["network"], r["contender"]) for r in train["rows"]] == [
        ("lenet", "xpcnn"), ("lenet", "torch"), ("resnet", "xpcnn"), ("resnet", "torch")]
    assert all(len(r["check_losses"]) == 2 and r["images_per_s"] > 0 for r in train["rows"])
    layers = json.loads((results / "float32.json").read_text())
    assert layers["machine"]["cpu_model"] and isinstance(layers["machine"]["cpu_flags"], list)
    contenders = {(r["workload"], r["contender"]) for r in layers["rows"]}
    assert {("c", "xpcnn"), ("c", "torch"), ("c", "gemm-limit"), ("c", "seed-style"), ("d", "xpcnn"),
            ("e", "xpcnn"), ("e", "xpcnn-conv2d-mirror")} <= contenders
    assert all(r["vs_mirror"] > 0 for r in layers["rows"] if r["workload"] == "e" and r["contender"] == "xpcnn")
    float64 = json.loads((results / "float64.json").read_text())
    assert any(r.get("peak_mb") for r in float64["rows"])  # the peak-memory runs
    plot.main([str(p) for p in sorted(results.glob("*.json"))]
              + ["--out", str(tmp_path / "ratios.png"), "--markdown", str(tmp_path / "table.md")])
    assert (tmp_path / "ratios.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "table.md").read_text()
    assert "| c | conv2d | fwd+bwd | float32 |" in table
    assert "| digits LeNet | numpy | 2 |" in table and "| MNIST ResNet | numpy | 2 |" in table
    assert "vs_torch" in capsys.readouterr().out

    import gpu_summary  # the GPU check's summary, fed the CPU results under the GPU run's file names

    gpu = tmp_path / "gpu"
    gpu.mkdir()
    (gpu / "layers_cupy_float32.json").write_text((results / "float32.json").read_text())
    (gpu / "train_cupy.json").write_text((results / "train.json").read_text())
    rows = gpu_summary.main([str(gpu)])
    assert {r["what"] for r in rows} >= {"conv2d (c) fwd+bwd", "lenet training step (images/s)"}
    assert json.loads((gpu / "summary.json").read_text())["rows"] == rows


def test_a_bad_output_path_fails_before_measuring(tmp_path, monkeypatch):
    import bench_layers

    monkeypatch.setattr(bench_layers, "bench", lambda args: pytest.fail("measured before checking --json"))
    with pytest.raises(IsADirectoryError, match="--json"):
        bench_layers.main(["--tiny", "--json", str(tmp_path)])


def test_kernels(tmp_path, capsys):
    import kernels

    rows = kernels.main(["--tiny", "--json", str(tmp_path / "kernels.json")])
    saved = json.loads((tmp_path / "kernels.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    conv = next(r for r in rows if r["op"] == "conv2d (c)")
    assert conv["accelerator"]["gemm_kernels"] >= 3 and conv["torch"]["kernels"] >= 2
    assert "model us" in capsys.readouterr().out


def test_bench_cores(tmp_path):
    pytest.importorskip("threadpoolctl")
    import bench_cores

    rows = bench_cores.main(["--tiny", "--json", str(tmp_path / "cores.json")])
    saved = json.loads((tmp_path / "cores.json").read_text())
    assert saved["machine"]["cpu_model"] and len(saved["rows"]) == len(rows)
    assert {r["kernel"] for r in rows} >= {"copy", "gemm", "resnet step, xpcnn", "resnet step, torch"}
    assert all(r["one_ms"] > 0 and r["two_ms"] > 0 and r["speedup"] > 0 for r in rows)

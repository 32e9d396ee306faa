"""The Winograd benchmark scripts run on one small shape, so they never rot (no timing is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytest.importorskip("torch")


def test_winograd_error_and_speed_scripts(tmp_path, capsys):
    import bench_winograd
    import winograd_error

    winograd_error.main(["--quick", "--json", str(tmp_path / "error.json")])
    error = json.loads((tmp_path / "error.json").read_text())
    assert {r["contender"] for r in error["rows"]} >= {"F(2x2,3x3)", "F(4x4,3x3)", "im2col"}
    assert all(v < 1 for v in error["worst_tol_use"].values())

    bench_winograd.main(["--quick", "--json", str(tmp_path / "sub" / "speed.json")])
    speed = json.loads((tmp_path / "sub" / "speed.json").read_text())
    assert speed["cpu"]["cpu_model"]
    assert {r["contender"] for r in speed["rows"]} >= {"torch", "im2col", "F2", "F4", "F4_nhwc", "F4_torch"}
    assert all(r["median_ms"] > 0 for r in speed["rows"])
    assert "vs_im2col" in capsys.readouterr().out

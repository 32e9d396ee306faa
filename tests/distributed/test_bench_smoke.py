"""benchmarks/bench_distributed.py runs on tiny sizes (no timing is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("sklearn")
pytest.importorskip("threadpoolctl")
sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))


def test_bench_distributed_runs(tmp_path):
    import bench_distributed

    bench_distributed.main(["--batch-size", "8", "--steps", "3", "--rounds", "1", "--floor-steps", "2", "--cluster", "cluster-2",
                            "--json", str(tmp_path / "d.json")])
    result = json.loads((tmp_path / "d.json").read_text())
    assert [r["contender"] for r in result["rows"]] == ["one process", "one process, 1 thread", "cluster-2"]
    assert all(r["images_per_s"] > 0 for r in result["rows"]) and result["machine"]["cpu_model"]

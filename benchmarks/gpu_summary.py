"""The summary table of benchmarks/gpu_check.sh: the test results per GPU backend, and the layer and training
figures of CuPy against PyTorch CUDA beside issue 13's targets.

    python benchmarks/gpu_summary.py OUT_DIR      # reads tests.xml, layers_cupy_float32.json, train_cupy.json,
                                                  # steps.txt; prints the table and writes summary.json
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

GPU_IDS = ("cupy", "torch-cuda", "jax-gpu")
TARGETS = {
    # (workload, op, pass): the most xpcnn may take, as a multiple of PyTorch CUDA's time
    ("c", "conv2d", "fwd+bwd"): 2.0,
    ("c", "max_pool2x2/s2/p0", "fwd+bwd"): 2.0,
    ("c", "avg_pool2x2/s2/p0", "fwd+bwd"): 2.0,
    ("d", "max_pool3x3/s1/p1", "fwd+bwd"): 2.0,
    ("d", "max_pool3x3/s2/p1", "fwd+bwd"): 2.0,
    ("d", "avg_pool3x3/s1/p1", "fwd+bwd"): 2.0,
    ("d", "avg_pool3x3/s2/p1", "fwd+bwd"): 2.0,
}
TRAIN_TARGET = 0.5
"""The digits training step: at least this share of PyTorch CUDA's images/s."""


def test_results(path: Path) -> dict:
    """{backend id: Counter(outcome)} from pytest's JUnit XML (the id is the one in the test's brackets)."""
    results = collections.defaultdict(collections.Counter)
    if not path.exists():
        return {}
    for case in ElementTree.parse(path).iter("testcase"):
        params = re.search(r"\[(.*)\]$", case.get("name", ""))
        backend = next((b for b in GPU_IDS if params and re.search(rf"(^|-){re.escape(b)}(-|$)", params[1])),
                       "other")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        results[backend][outcome] += 1
    return dict(results)


def layer_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = json.loads(path.read_text())["rows"]
    out = []
    for (workload, op, pass_), limit in TARGETS.items():
        row = next((r for r in rows if (r["workload"], r["op"], r["pass"], r["contender"])
                    == (workload, op, pass_, "xpcnn")), None)
        if row is None:
            continue
        ratio = row.get("vs_torch_rounds") or row["vs_torch"]
        out.append(dict(what=f"{op} ({workload}) {pass_}", xpcnn_ms=row["median_ms"],
                        torch_ms=row["median_ms"] / row["vs_torch"], ratio=ratio, target=f"<= {limit}",
                        met="yes" if ratio <= limit else "NO"))
    return out


def train_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = json.loads(path.read_text())["rows"]
    out = []
    for network in dict.fromkeys(r["network"] for r in rows):
        ours = next(r for r in rows if r["network"] == network and r["contender"] == "xpcnn")
        theirs = next(r for r in rows if r["network"] == network and r["contender"] == "torch")
        ratio = ours.get("vs_torch_rounds") or ours["vs_torch"]
        target = TRAIN_TARGET if network == "lenet" else None
        out.append(dict(what=f"{network} training step (images/s)", xpcnn_ms=ours["median_ms"],
                        torch_ms=theirs["median_ms"], ratio=ratio, target=f">= {target}" if target else None,
                        met=None if target is None else ("yes" if ratio >= target else "NO")))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    out = args.out_dir
    steps = (out / "steps.txt").read_text().split("\n") if (out / "steps.txt").exists() else []
    print("steps: " + "; ".join(s for s in steps if s))
    tests = test_results(out / "tests.xml")
    print("tests (passed / failed / skipped):")
    for backend in GPU_IDS:
        c = tests.get(backend, collections.Counter())
        print(f"  {backend:11s} {c['passed']:5d} / {c['failed']:3d} / {c['skipped']:4d}")
    rows = layer_rows(out / "layers_cupy_float32.json") + train_rows(out / "train_cupy.json")
    print("CuPy against PyTorch CUDA, float32 (ratio: xpcnn's time / PyTorch's; for a training step, images/s):")
    if rows:
        common.print_table(rows, ["what", "xpcnn_ms", "torch_ms", "ratio", "target", "met"])
    else:
        print("  no benchmark results")
    common.write_json(out / "summary.json", dict(steps=[s for s in steps if s], tests={k: dict(v) for k, v in
                                                                                    tests.items()}, rows=rows))
    return rows


if __name__ == "__main__":
    main()

"""A PNG of the xpcnn / PyTorch time ratios in the JSON files written by bench_layers.py and bench_train.py.

    python benchmarks/plot.py f32.json f64.json train.json --out ratios.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def ratios(payload):
    """(label, xpcnn time / PyTorch time) pairs; for training, PyTorch's images/s over xpcnn's."""
    if payload["benchmark"] == "train":
        ours = next(r for r in payload["rows"] if r["contender"] == "xpcnn")
        return [(f"train step ({payload['backend']})", 1.0 / ours["vs_torch"])]
    return [
        (f"{r['workload']} {r['op']} {r['pass']} ({payload['dtype']})", r["vs_torch"])
        for r in payload["rows"]
        if r["contender"] == "xpcnn" and r.get("vs_torch") is not None
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("ratios.png"))
    args = parser.parse_args(argv)
    pairs = [p for path in args.json for p in ratios(json.loads(path.read_text()))]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.28 * len(pairs) + 1.2))
    labels, values = zip(*pairs)
    colors = ["tab:green" if v <= 1.0 else "tab:orange" if v <= 2.0 else "tab:red" for v in values]
    ax.barh(range(len(pairs)), values, color=colors)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(pairs)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("xpcnn time / PyTorch time (lower is better; 1 = parity)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

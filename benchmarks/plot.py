"""A PNG of the xpcnn / PyTorch time ratios in the JSON files written by bench_layers.py and bench_train.py,
and, with ``--markdown``, the same results as a Markdown table (the one in benchmarks/README.md).

    python benchmarks/plot.py f32.json f64.json train.json --out ratios.png --markdown table.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402


def ratios(payload):
    """(label, xpcnn time / PyTorch time) pairs; for training, PyTorch's images/s over xpcnn's."""
    if payload["benchmark"] == "train":
        return [(f"train step, {TRAIN_TITLES.get(network, network)} ({payload['backend']})", 1.0 / ours["vs_torch"])
                for network, ours, _ in _train_pairs(payload)]
    return [
        (f"{r['workload']} {r['op']} {r['pass']} ({payload['dtype']})", r["vs_torch"])
        for r in payload["rows"]
        if r["contender"] == "xpcnn" and r.get("vs_torch") is not None
    ]


def markdown(payloads):
    """One row per layer case (xpcnn, PyTorch, seed-style and GEMM-limit medians side by side) and per training run."""
    machines = dict.fromkeys(common.cpu_summary(p["machine"]) if p["machine"].get("cpu_model")
                             else "CPU not recorded (a JSON written before the scripts recorded it)"
                             for p in payloads if "machine" in p)
    lines = [f"Machine: {m}" for m in machines] + [""]
    if any(p["benchmark"] == "layers" for p in payloads):
        lines += ["| workload | op | pass | dtype | xpcnn ms (min-max) | PyTorch ms | ratio | ratio per round "
                  "| seed-style ms | xpcnn speed-up vs seed | GFLOP/s | GEMM share | peak MiB (x in+out+w) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for payload in payloads:
        if payload["benchmark"] == "layers":
            cases = {}
            for r in payload["rows"]:
                cases.setdefault((r["workload"], r["op"], r["pass"]), {})[r["contender"]] = r
            for (workload, op, passes), by in cases.items():
                lines.append(_layer_row(workload, op, passes, payload["dtype"], by))
        else:
            lines += ["", "| training step | backend | batch | xpcnn images/s | PyTorch images/s | ratio "
                      "| ratio per round |", "|---|---|---|---|---|---|---|"]
            for network, ours, torch in _train_pairs(payload):
                lines.append(f"| {TRAIN_TITLES.get(network, network)} | {payload['backend']} | {ours['batch_size']} "
                             f"| {ours['images_per_s']:.0f} | {torch['images_per_s']:.0f} "
                             f"| **{ours['vs_torch']:.2f}** | {_number(ours.get('vs_torch_rounds'))} |")
    return "\n".join(lines) + "\n"


TRAIN_TITLES = {"lenet": "digits LeNet", "resnet": "MNIST ResNet"}


def _train_pairs(payload):
    """(network, xpcnn row, PyTorch row) for each network of a bench_train.py run, in order (rows written before
    the script took ``--network`` have no network: the digits LeNet)."""
    by = {}
    for r in payload["rows"]:
        by.setdefault(r.get("network", "lenet"), {})[r["contender"]] = r
    return [(network, rows["xpcnn"], rows["torch"]) for network, rows in by.items()]


def _layer_row(workload, op, passes, dtype, by):
    ours, torch, seed = by["xpcnn"], by.get("torch"), by.get("seed-style")
    cells = [workload, op, passes, dtype, f"{ours['median_ms']:.3g} ({ours['min_ms']:.3g}-{ours['max_ms']:.3g})"]
    cells += ([f"{torch['median_ms']:.3g}", f"**{ours['median_ms'] / torch['median_ms']:.2f}**",
               _number(ours.get("vs_torch_rounds"))] if torch else ["-", "-", "-"])
    cells += [f"{seed['median_ms']:.4g}", f"{seed['median_ms'] / ours['median_ms']:.3g}x"] if seed else ["-", "-"]
    cells += [f"{ours['gflops']:.3g}", _number(ours.get("gemm_share"))] if ours.get("gflops") else ["-", "-"]
    peak = ours.get("peak_mb")
    cells.append(f"{peak:.3g} ({ours['peak_vs_io']:.2f}x)" if peak is not None else "-")
    return "| " + " | ".join(cells) + " |"


def _number(value):
    return "-" if value is None else f"{value:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("ratios.png"))
    parser.add_argument("--markdown", type=Path, default=None, help="also write the results as a Markdown table")
    args = parser.parse_args(argv)
    payloads = [json.loads(path.read_text()) for path in args.json]
    if args.markdown:
        args.markdown.write_text(markdown(payloads))
        print(f"wrote {args.markdown}")
    pairs = [p for payload in payloads for p in ratios(payload)]

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

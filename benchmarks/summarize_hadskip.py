"""Print the HadSkip tables of docs/benchmarks.md and draw accuracy vs executed layers.

    python benchmarks/summarize_hadskip.py runs [--plot docs/results/hadskip/accuracy_vs_layers.png]

Reads runs/hadskip-*, runs/budgeted-exit-k*, runs/baseline-minilm-l3 (if present) report.json files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(run: Path) -> dict | None:
    path = run / "report.json"
    return json.loads(path.read_text()) if path.exists() else None


def row(name: str, report: dict) -> str:
    final = report["final"]
    stage = report["stages"][-1]
    return (f"| {name} | {final['test']['avg_layers']:.2f} | {final['test']['accuracy']:.4f} "
            f"| {final['validation']['accuracy']:.4f} | {final['flops_per_example'] / 1e9:.2f} G "
            f"| {stage['seconds'] / 60:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--l3", type=Path, default=Path("docs/results/baselines/minilm-l3.report.json"),
                        help="report.json of the fine-tuned MiniLM-L3 (benchmarks/finetune_baselines.sh)")
    args = parser.parse_args()
    runs = {p.name: r for p in sorted(args.runs.iterdir()) if p.is_dir() and (r := load(p))}
    if args.l3.exists():
        runs.setdefault("baseline-minilm-l3", json.loads(args.l3.read_text()))
    # the fine-tuned model every run starts from (benchmarks/hadskip.sh, step `teacher`)
    full = runs["minilm-l6-2ep"]["final"] if "minilm-l6-2ep" in runs else None
    print("| model | avg layers (test) | test acc | val acc | FLOPs/example | train min |")
    print("|---|---|---|---|---|---|")
    if full:
        print(f"| MiniLM-L6 fine-tuned (all layers) | 6.00 | {full['test']['accuracy']:.4f} "
              f"| {full['validation']['accuracy']:.4f} | {full['flops_per_example'] / 1e9:.2f} G | - |")
    for name, report in runs.items():
        if name.startswith(("budgeted-exit-", "hadskip-", "baseline-minilm-l3")):
            print(row(name, report))
    if args.plot:
        plot(runs, full, args.plot)


def plot(runs: dict[str, dict], full: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    predkd = "HadSkip (prediction-only KD, straight to the budget, 3 epochs)"
    series = {"HadSkip (5,000 rows, lr 2e-5)": [], "HadSkip (all rows, lr 5e-5)": [], predkd: [],
              "budgeted exit (first k, fine-tuned)": []}
    ablations = []
    for name, report in runs.items():
        point = (report["final"]["test"]["avg_layers"], report["final"]["test"]["accuracy"])
        if name.startswith("hadskip-full-b") and name.endswith("-predkd-direct3"):
            series[predkd].append(point)
        elif name.startswith("hadskip-b") and name[len("hadskip-b"):].isdigit():
            series["HadSkip (5,000 rows, lr 2e-5)"].append(point)
        elif name.startswith("hadskip-full-b") and name[len("hadskip-full-b"):].isdigit():
            series["HadSkip (all rows, lr 5e-5)"].append(point)
        elif name.startswith("hadskip-full-b3-"):
            ablations.append((name[len("hadskip-full-b3-"):], point))
        elif name.startswith("budgeted-exit-"):
            series["budgeted exit (first k, fine-tuned)"].append(point)
    for label, points in series.items():
        if points:
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=label)
    for label, (x, y) in ablations:
        ax.scatter([x], [y], marker="x", color="grey")
        ax.annotate(f"b3 {label}", (x, y), fontsize=7, xytext=(3, -8), textcoords="offset points")
    if full:
        ax.scatter([6], [full["test"]["accuracy"]], marker="*", s=120, color="black", label="MiniLM-L6, all layers")
    if "baseline-minilm-l3" in runs:
        ax.scatter([3], [runs["baseline-minilm-l3"]["final"]["test"]["accuracy"]], marker="s", label="MiniLM-L3")
    ax.set_xlabel("average transformer layers executed per example (test)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Rotten Tomatoes, fine-tuned MiniLM-L6 backbone")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

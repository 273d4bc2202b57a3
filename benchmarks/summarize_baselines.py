"""Print the fine-tuned baselines table of docs/benchmarks.md from run directories."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run_dirs: list[str]) -> None:
    print("| model | layers | params | val acc | test acc | train s/epoch | epochs | FLOPs/example |")
    print("|---|---|---|---|---|---|---|---|")
    for run_dir in run_dirs:
        report = json.loads((Path(run_dir) / "report.json").read_text())
        env = json.loads((Path(run_dir) / "environment.json").read_text())
        final, stage = report["final"], report["stages"][-1]
        recipe = (Path(run_dir) / "recipe.yaml").read_text()
        model = next(line.split(":", 1)[1].strip() for line in recipe.splitlines() if line.startswith("model:"))
        print(f"| {model} | {final['num_layers']} | {final['parameters'] / 1e6:.1f}M "
              f"| {final['validation']['accuracy']:.4f} | {final['test']['accuracy']:.4f} "
              f"| {stage['info']['seconds_per_epoch']:.0f} | {len(stage['info']['history'])} "
              f"| {final['flops_per_example'] / 1e9:.2f} G |")
    print(f"\ntorch threads: {env['torch_threads']}, processes: {env['processes']}")


if __name__ == "__main__":
    main(sys.argv[1:])

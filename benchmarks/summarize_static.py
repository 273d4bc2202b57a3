"""Print the static-compression tables of docs/benchmarks.md (issue 4) and draw the COST-EFF curve.

    python benchmarks/summarize_static.py runs [--plot docs/results/static/cost_eff_curve.png]

Reads the runs of benchmarks/static.sh: static-tinybert* (every student variant), static-prune, static-layers-greedy,
static-layers-top, static-cost-eff, static-latency.json, and runs/minilm-l6-2ep (the student
fine-tuned without a teacher, and the unpruned model every other run starts from). Missing runs
are skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def acc(entry: dict, split: str = "test") -> float:
    return entry[split]["accuracy"]


def tinybert(runs: Path) -> None:
    """Every static-tinybert* run (one teacher, students distilled with different settings)."""
    reports = {d: load(d / "report.json") for d in sorted(runs.glob("static-tinybert*"))}
    reports = {d: r for d, r in reports.items() if r is not None}
    if not reports:
        return
    first = next(iter(reports.values()))  # every variant resumed the same teacher stage
    teacher = first["baseline"]
    print("\n### TinyBERT: MPNet-12 teacher -> 6-layer students\n")
    print("| model | test acc | of teacher | val acc | GFLOPs/example | params | train min |")
    print("|---|---|---|---|---|---|---|")
    minutes = {s["name"]: s["seconds"] / 60 for s in first["stages"]}
    rows = [("MPNet-12 teacher (fine-tuned, 1 epoch)", teacher, minutes.get("teacher"))]
    for run_dir, report in reports.items():
        rows.append((f"{_student_settings(run_dir)} (`{run_dir.name}`)", report["final"],
                     report["stages"][-1]["seconds"] / 60))
    plain = load(runs / "minilm-l6-2ep/report.json")
    if plain:
        rows.append(("MiniLM-L6 fine-tuned, no teacher (2 epochs, 5e-5)", plain["final"],
                     plain["stages"][-1]["seconds"] / 60))
    for name, entry, mins in rows:
        print(f"| {name} | {acc(entry):.4f} | {acc(entry) / acc(teacher):.1%} | {acc(entry, 'validation'):.4f} "
              f"| {entry['flops_per_example'] / 1e9:.2f} | {entry['parameters'] / 1e6:.1f}M "
              f"| {'-' if mins is None else f'{mins:.0f}'} |")


def _student_settings(run_dir: Path) -> str:
    import yaml

    stage = yaml.safe_load((run_dir / "recipe.yaml").read_text())["stages"][-1]
    layers = stage.get("student_layers")
    student = f"MPNet-6 of teacher layers {layers}" if layers else "MiniLM-L6"
    epochs = (f"{stage.get('intermediate_epochs', 3):g} intermediate + {stage.get('prediction_epochs', 3):g} "
              f"prediction epochs at {stage.get('learning_rate', 3e-5):g}")
    if stage.get("hard_label_weight", 0) == 1:  # the loss has no teacher term left: plain fine-tuning
        return f"{student} fine-tuned on the labels only, {stage.get('prediction_epochs', 3):g} epochs"
    text = f"{student} distilled: {epochs}"
    if stage.get("augment_copies"):
        text += f", {stage['augment_copies']} augmented copies"
    if stage.get("temperature", 1) != 1 or stage.get("hard_label_weight", 0):
        text += f", T={stage.get('temperature', 1):g}, hard {stage.get('hard_label_weight', 0):g}"
    return text


def pruning(runs: Path) -> None:
    report = load(runs / "static-prune/report.json")
    if report is None:
        return
    base, final = report["baseline"], report["final"]
    pruned = next(s for s in report["stages"] if s["name"] == "pruned")["evaluation"]
    print("\n### Structured pruning: 50% heads + 50% FFN of the fine-tuned MiniLM-L6\n")
    print("| model | test acc | of unpruned | params | GFLOPs/example |")
    print("|---|---|---|---|---|")
    print(f"| unpruned | {acc(base):.4f} | 100% | {base['parameters'] / 1e6:.1f}M "
          f"| {base['flops_per_example'] / 1e9:.2f} |")
    print(f"| pruned, before recovery (val acc) | {acc(pruned, 'validation'):.4f} (val) | - "
          f"| {pruned['parameters'] / 1e6:.1f}M | {pruned['flops_per_example'] / 1e9:.2f} |")
    print(f"| pruned + recovery distillation | {acc(final):.4f} | {acc(final) / acc(base):.1%} "
          f"| {final['parameters'] / 1e6:.1f}M ({final['parameters'] / base['parameters']:.2f}x) "
          f"| {final['flops_per_example'] / 1e9:.2f} "
          f"({base['flops_per_example'] / final['flops_per_example']:.2f}x fewer) |")


def layers(runs: Path) -> None:
    greedy, top = load(runs / "static-layers-greedy/report.json"), load(runs / "static-layers-top/report.json")
    if greedy is None:
        return
    print("\n### Greedy layer pruning: MiniLM-L6 -> 4 layers\n")
    print("| method | layers removed (in order) | test acc | val acc | search min |")
    print("|---|---|---|---|---|")
    base = greedy["baseline"]
    print(f"| none (fine-tuned L6) | - | {acc(base):.4f} | {acc(base, 'validation'):.4f} | - |")
    for name, report in (("greedy (GLP)", greedy), ("drop top 2", top)):
        if report is None:
            continue
        info = report["stages"][0]["info"]
        search = info.get("search_seconds")
        print(f"| {name} | {info['removed']} | {acc(report['final']):.4f} | {acc(report['final'], 'validation'):.4f} "
              f"| {'-' if search is None else f'{search / 60:.1f}'} |")
    for i, step in enumerate(greedy["stages"][0]["info"].get("steps", []), 1):
        scores = ", ".join(f"{k}: {v:.4f}" for k, v in sorted(step["scores"].items()))
        print(f"\nstep {i}: held-out accuracy without each layer: {scores}; removed {step['removed']}")


def cost_eff(runs: Path, plot_path: Path | None) -> None:
    report = load(runs / "static-cost-eff/report.json")
    if report is None:
        return
    info, final, base = report["stages"][0]["info"], report["final"], report["baseline"]
    print("\n### COST-EFF: slenderized multi-exit MiniLM-L6\n")
    print(f"calibrated: test acc {acc(final):.4f} @ {final['test']['avg_layers']:.2f} layers, "
          f"{final['flops_per_example'] / 1e9:.2f} GFLOPs (unpruned L6 {acc(base):.4f}, "
          f"{base['flops_per_example'] / 1e9:.2f} GFLOPs); params {info['parameters_before'] / 1e6:.1f}M -> "
          f"{info['parameters_after'] / 1e6:.1f}M\n")
    print("| entropy threshold | COST-EFF acc | avg layers | GFLOPs "
          "| multi-exit full width acc | avg layers | GFLOPs |")
    print("|---|---|---|---|---|---|---|")
    for c, u in zip(info["curve"], info["curve_unpruned"], strict=True):
        print(f"| {c['threshold']:.3f} | {c['accuracy']:.4f} | {c['avg_layers']:.2f} "
              f"| {c['flops_per_example'] / 1e9:.2f} "
              f"| {u['accuracy']:.4f} | {u['avg_layers']:.2f} | {u['flops_per_example'] / 1e9:.2f} |")
    if plot_path:
        from compresskit.strategies.cost_eff import plot_curves

        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot_curves(info["curve"], info["curve_unpruned"], "accuracy", plot_path)


def latency(runs: Path) -> None:
    result = load(runs / "static-latency.json")
    if result is None:
        return
    from compresskit.benchmark import markdown

    print("\n### Latency (PyTorch), ratios against the unpruned MiniLM-L6 in the same run\n")
    print(markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--plot", type=Path, default=None, help="where to draw the COST-EFF curve")
    args = parser.parse_args()
    tinybert(args.runs)
    pruning(args.runs)
    layers(args.runs)
    cost_eff(args.runs, args.plot)
    latency(args.runs)


if __name__ == "__main__":
    main()

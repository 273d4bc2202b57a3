"""The model card (README.md) every final artifact of a run carries, so its folder can be pushed to
a model hub as it is: what made it (the recipe), what it scores on each split against the
baseline, how fast it runs (measured, per runtime and batch size), and the package versions.
Its numbers are report.json's (`final`, `baseline`, `latency`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from compresskit.files import write_text


def model_card(report: dict[str, Any], recipe: dict[str, Any], environment: dict[str, Any], kind: str) -> str:
    """The card's text; `kind` is "pytorch" (a `from_pretrained` directory) or "onnx" (an export)."""
    final, base, metric = report["final"], report["baseline"], report["main_metric"]
    splits = [s for s in final if isinstance(final[s], dict)]
    front = {"library_name": "transformers" if kind == "pytorch" else "onnx", "pipeline_tag": "text-classification",
             "tags": ["compresskit", *dict.fromkeys(s["strategy"] for s in report["stages"])]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {report['recipe']}: {final['stage']}", "",
             f"Made by compresskit from `{recipe['model']}` on the task `{report['task']}`: "
             + " -> ".join(f"{s['name']} ({s['strategy']})" for s in report["stages"]) + ".", "",
             "## Metrics", "",
             f"| split | {metric} | baseline ({base['stage']}) | other metrics | layers per example |",
             "|---|---|---|---|---|"]
    for split in splits:
        ours, theirs = final[split], base.get(split, {})
        others = ", ".join(f"{k} {v:.4f}" for k, v in ours.items() if k not in (metric, "avg_layers", "examples")
                           and isinstance(v, float))
        lines.append(f"| {split} ({ours.get('examples', '?')} examples) | {ours[metric]:.4f} | "
                     f"{theirs.get(metric, float('nan')):.4f} | {others or '-'} | {ours['avg_layers']:.2f} |")
    lines += ["", f"{final['parameters'] / 1e6:.1f}M parameters, {final['flops_per_example'] / 1e9:.3f} GFLOPs "
              "per example (counted on the evaluation split).", ""]
    lines += goal_lines(report.get("goal")) + route_lines(report.get("trivial_routes"), metric)
    latency = report.get("latency")
    if latency:
        lines += ["## Latency (measured)", "",
                  f"On {environment.get('cpu', {}).get('model', 'this machine')}, {latency['threads']} thread(s), "
                  f"{latency['examples']} `{latency['split']}` examples, {latency['max_length']} tokens at most:", "",
                  "| artifact | runtime | batch | median ms | examples/s | layers per example |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['artifact']} | {r['runtime']} | {r['batch_size']} | {r['median_ms']:.2f} "
                  f"| {r['examples_per_s']:.1f} | {r['avg_layers']:.2f} |" for r in latency["rows"]]
        lines.append("")
    lines += ["## Use", "", "```python"]
    if kind == "pytorch":
        lines += ["import compresskit  # registers the model class with transformers' Auto classes",
                  "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
                  'model = AutoModelForSequenceClassification.from_pretrained("PATH")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH")']
    else:
        lines += ["from compresskit.export import ExportedModelForSequenceClassification",
                  "from transformers import AutoTokenizer, pipeline", "",
                  "# ONNX Runtime (runtime=\"openvino\" also); dynamic models keep their routing per example",
                  'model = ExportedModelForSequenceClassification.from_pretrained("PATH")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH")',
                  'classify = pipeline("text-classification", model=model, tokenizer=tokenizer)']
    lines += ["```", "", "## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```", "",
              "## Packages", "", ", ".join(f"{k} {v}" for k, v in sorted(environment.get("packages", {}).items())),
              ""]
    return "\n".join(lines)


def goal_lines(goal: dict[str, Any] | None) -> list[str]:
    """The recipe's goal, what each stage chose on the held-out rows, and whether it holds (report.json's `goal`)."""
    if not goal:
        return []
    metric, held = goal["metric"], goal["heldout"]

    def bound(split: dict[str, Any]) -> str:  # a speed-only goal sets no accuracy bound to hold
        return "- (no bound)" if held["floor"] is None else "yes" if split["accuracy_holds"] else "no"

    lines = ["## Goal", "", f"**{goal['description']}** — {'met' if goal['met'] else 'NOT met'} on the evaluation "
             "and final splits. Chosen on held-out training rows (the baseline scores "
             f"{held['baseline_score']:.4f} there" + (f"; the goal accepts >= {held['floor']:.4f}" if held['floor']
                                                       is not None else "") + "):", ""]
    for stage, point in goal["chosen"].items():
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in point.items())
        lines.append(f"- `{stage}`: {shown}")
    lines += ["", f"| split | baseline {metric} | final {metric} | drop | accuracy bound holds |",
              "|---|---|---|---|---|"]
    lines += [f"| {split} | {h['baseline']:.4f} | {h['final']:.4f} | {h['drop']:+.4f} | "
              f"{bound(h)} |" for split, h in goal["splits"].items()]
    speed = goal.get("speed")
    if speed:
        lines += ["", f"Speed on `{speed['split']}` ({speed['runtime']}, batch {speed['batch_size']}): "
                  f"{speed['ms_per_example']:.2f} ms per example against the baseline's "
                  f"{speed['baseline_ms_per_example']:.2f} ({speed['speedup']:.2f}x); the speed bound "
                  f"{'holds' if speed['speed_holds'] else 'does NOT hold'}."]
    return [*lines, ""]


def route_lines(routes: dict[str, Any] | None, metric: str) -> list[str]:
    """The result against the trivial routes a user would take instead (report.json's `trivial_routes`)."""
    if not routes:
        return []
    splits = [k for k, v in routes["models"][0].items() if isinstance(v, dict) and metric in v]
    lines = ["## Against the trivial routes", "",
             f"Speed measured side by side on `{routes['split']}` ({routes['runtime']}, batch {routes['batch_size']}):",
             "", "| model | " + " | ".join(f"{s} {metric}" for s in splits) + " | speed-up |",
             "|---|" + "---|" * (len(splits) + 1)]
    lines += [f"| {m['name']}: {m['description']} | " + " | ".join(f"{m[s][metric]:.4f}" for s in splits)
              + f" | {m['speedup']:.2f}x |" for m in routes["models"]]
    return [*lines, ""]


def write_model_cards(run_dir: Path, report: dict[str, Any], artifacts: dict[str, Path]) -> list[Path]:
    """README.md into each final artifact (`kind` -> directory), written whole or not at all."""
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    environment = json.loads((run_dir / "environment.json").read_text())
    written = []
    for kind, directory in artifacts.items():
        write_text(directory / "README.md", model_card(report, recipe, environment, kind))
        written.append(directory / "README.md")
    return written

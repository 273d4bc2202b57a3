"""report.json: every stage's evaluation, full profiles of the baseline and the final model, and their ratios."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compresskit.data.tasks import TaskSpec

Profile = Callable[[str, "dict[str, Any] | None"], "dict[str, Any]"]  # (stage or "input", known) -> profile


def build_report(recipe: Any, task: TaskSpec, stages: list[dict[str, Any]], splits: list[str],
                 profile: Profile) -> dict[str, Any]:
    """The report of a finished run; `stages` are the stages' stage.json, `profile` profiles a stage's model."""
    by_name = {s["name"]: s for s in stages}
    final_profile = profile(stages[-1]["name"], stages[-1]["evaluation"])
    baseline_name = recipe.baseline or stages[0]["name"]
    if baseline_name == stages[-1]["name"]:
        baseline_profile = final_profile  # a one-model recipe: nothing to compare
    else:
        baseline_profile = profile(baseline_name, by_name[baseline_name]["evaluation"]
                                   if baseline_name in by_name else None)
    report = {
        "recipe": recipe.name,
        "task": task.name,
        "main_metric": task.main_metric,
        "evaluation_split": recipe.evaluation.split,
        "stages": [{k: s[k] for k in ("name", "strategy", "seconds", "evaluation", "info")} for s in stages],
        "baseline": {"stage": baseline_name, **baseline_profile},
        "final": {"stage": stages[-1]["name"], **final_profile},
    }
    report["summary"] = summary(report, splits, task.main_metric)
    return report


def summary(report: dict[str, Any], splits: list[str], metric: str) -> dict[str, float | None]:
    """Final against baseline; a ratio over a zero (a baseline that runs no layer) is None, not a crash."""
    base, final = report["baseline"], report["final"]

    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

    out = {
        "flops_speedup": ratio(base["flops_per_example"], max(final["flops_per_example"], 1.0)),
        "parameter_ratio": ratio(final["parameters"], base["parameters"]),
        "layers_ratio": ratio(final[splits[0]]["avg_layers"], base[splits[0]]["avg_layers"]),
    }
    for split in splits:
        if base[split][metric]:
            out[f"{split}_{metric}_retained"] = final[split][metric] / base[split][metric]
    return out

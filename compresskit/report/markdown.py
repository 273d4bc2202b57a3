"""`compresskit report RUN_DIR`: a Markdown report of a run, with its plots.

Per stage: accuracy, layers executed, FLOPs and parameters; the accuracy-vs-speed-up picture of
every stage's model (speed-up from counted FLOPs, or measured with `--measure`: every stage's
model timed side by side in one benchmark run); per-layer usage and the layers-used histogram of
dynamic stages (HadSkip's `layer_usage`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compresskit.errors import CompressKitError
from compresskit.report.model_card import goal_lines


def load_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "report.json"
    if not path.exists():
        raise CompressKitError(f"report: {run_dir} has no report.json (is it a finished `compresskit apply` run?)")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError):
        raise CompressKitError(f"report: {path} is not a report compresskit wrote (not JSON); rerun `compresskit "
                               "apply` on the recipe to write it again") from None


def stage_dirs(run_dir: Path) -> dict[str, Path]:
    """Finished stage directories by stage name (`NN-name`)."""
    return {d.name.split("-", 1)[1]: d for d in sorted((run_dir / "stages").glob("[0-9][0-9]-*"))
            if (d / ".complete").exists()}


def write_report(run_dir: str | Path, measure: bool = False, batch_size: int = 32) -> Path:
    run_dir = Path(run_dir)
    report = load_run(run_dir)
    dirs = stage_dirs(run_dir)
    # the split every stage was evaluated on (runs older than the key: the first stage's split)
    split = report.get("evaluation_split") or next(
        (s for s in report["stages"][0]["evaluation"] if isinstance(report["stages"][0]["evaluation"][s], dict)),
        "validation")
    metric = report["main_metric"]
    base = report["baseline"]
    rows = []
    for stage in report["stages"]:
        ev = stage["evaluation"]
        if split not in ev:
            continue
        rows.append({"stage": stage["name"], "strategy": stage["strategy"], "metric": ev[split][metric],
                     "avg_layers": ev[split]["avg_layers"], "flops": ev["flops_per_example"],
                     "parameters": ev["parameters"], "seconds": stage["seconds"],
                     "flops_speedup": base["flops_per_example"] / max(ev["flops_per_example"], 1.0)})
    measured = _measure(run_dir, report, dirs, batch_size) if measure else None
    if measured:
        for row in rows:
            row["measured_speedup"] = measured.get(row["stage"])
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    _plot_pareto(rows, base[split][metric], metric, out / "pareto.png", measured is not None)

    lines = [f"# Run report: {report['recipe']}", "",
             f"Task `{report['task']}`, {metric} on the `{split}` split. Baseline: `{base['stage']}` "
             f"({base[split][metric]:.4f}, {base['flops_per_example'] / 1e9:.2f} GFLOPs/example).", "",
             "| stage | strategy | " + metric + " | avg layers | GFLOPs/example | params | FLOPs speed-up"
             + (f" | measured speed-up (batch {batch_size})" if measured else "") + " | wall s |",
             "|---|---|---|---|---|---|---|" + ("---|" if measured else "") + "---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['strategy']} | {r['metric']:.4f} | {r['avg_layers']:.2f} "
                     f"| {r['flops'] / 1e9:.3f} | {r['parameters'] / 1e6:.1f}M | {r['flops_speedup']:.2f}x"
                     + (f" | {r['measured_speedup']:.2f}x" if measured and r.get('measured_speedup') else
                        (" | -" if measured else ""))
                     + f" | {r['seconds']:.0f} |")
    final = report["final"]
    extra = [s for s in final if s not in ("stage", "flops_per_example", "parameters", "num_layers", split)]
    for other in extra:
        lines += ["", f"Final model (`{final['stage']}`) on `{other}`: {metric} {final[other][metric]:.4f}, "
                  f"{final[other]['avg_layers']:.2f} layers per example (baseline "
                  f"{base.get(other, {}).get(metric, float('nan')):.4f})."]
    lines += ["", "![accuracy vs speed-up](pareto.png)"]
    if report.get("trivial_routes"):
        lines += ["", *_routes_section(report["trivial_routes"], metric, out)]
    if report.get("goal"):
        lines += ["", *goal_lines(report["goal"])]
        for stage in report["stages"]:
            points = _goal_points(stage)
            if points:
                name = f"goal_{stage['name']}.png"
                _plot_goal(points, report["goal"], stage["name"], out / name)
                lines += [f"![goal candidates of {stage['name']}]({name})", ""]
    for stage in report["stages"]:
        usage = stage.get("info", {}).get("layer_usage")
        if usage:
            name = f"layer_usage_{stage['name']}.png"
            from compresskit.evaluation.usage import plot_layer_usage

            plot_layer_usage(usage, out / name, f"{stage['name']}: layer usage")
            per_layer = ", ".join(f"{p:.2f}" for p in usage["per_layer"])
            lines += ["", f"## Layer usage of `{stage['name']}`", "",
                      f"Share of examples running each layer: {per_layer}.", "", f"![layer usage]({name})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _measure(run_dir: Path, report: dict[str, Any], dirs: dict[str, Path], batch_size: int) -> dict[str, float]:
    """Throughput of every stage's model relative to the baseline's, timed side by side in one run."""
    import yaml

    from compresskit.benchmark import benchmark
    from compresskit.modeling.loading import resolve_model_path

    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    base = report["baseline"]["stage"]
    if base in dirs:
        base_path = str(dirs[base] / "model")
    else:  # the recipe's input model
        base_path = str(resolve_model_path(recipe["model"]))
    paths = {base: base_path}
    paths.update({s["name"]: str(dirs[s["name"]] / "model") for s in report["stages"]
                  if s["name"] in dirs and s["name"] != base and (dirs[s["name"]] / "model").exists()})
    result = benchmark(list(paths.values()), task=recipe["task"],
                       batch_sizes=(batch_size,), examples=128, repeats=2)
    by_path = {r["model"]: r["speedup_vs_first"] for r in result["rows"]}
    return {name: by_path[path] for name, path in paths.items()}


def _plot_pareto(rows: list[dict[str, Any]], base_metric: float, metric: str, path: Path, measured: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    key = "measured_speedup" if measured else "flops_speedup"
    points = [(r.get(key) or r["flops_speedup"], r["metric"], r["stage"]) for r in rows]
    for x, y, _ in points:
        ax.scatter(x, y)
    ax.axhline(base_metric, color="grey", lw=0.8, ls="--", label="baseline")
    ax.set_xlabel("measured speed-up" if measured else "speed-up from counted FLOPs")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _annotate_apart(ax, [(x, y) for x, y, _ in points], [label for _, _, label in points])
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _annotate_apart(ax: Any, points: list[tuple[float, float]], labels: list[str]) -> list[Any]:
    """Label every point in the first slot around it whose box stays inside the axes and overlaps no
    other point and no label placed before. Boxes are measured on the drawn figure, so close points
    (a model's validation and test scores) and long names stay readable. Call it last."""
    from matplotlib.transforms import Bbox

    slots = [(4, 4), (4, -12), (-6, 4), (-6, -12), (4, 16), (4, -24), (-6, 16), (-6, -24), (4, 28), (4, -36)]
    fig = ax.figure
    fig.canvas.draw()  # settles the view limits and layout the boxes are measured in
    renderer, axes_box = fig.canvas.get_renderer(), ax.bbox
    pad = 4 * fig.dpi / 72  # a marker's half-width, in pixels
    pixels = [ax.transData.transform(point) for point in points]
    texts = []
    placed: list[Any] = []
    for n, ((x, y), label) in enumerate(zip(points, labels, strict=True)):
        markers = [Bbox.from_extents(px - pad, py - pad, px + pad, py + pad)
                   for m, (px, py) in enumerate(pixels) if m != n]
        for i, (dx, dy) in enumerate(slots):
            text = ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                               ha="right" if dx < 0 else "left")
            box = text.get_window_extent(renderer)
            inside = axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1
            if inside and not any(box.overlaps(other) for other in placed + markers) or i == len(slots) - 1:
                break
            text.remove()
        placed.append(box)
        texts.append(text)
    return texts


def _goal_points(stage: dict[str, Any]) -> list[dict[str, Any]]:
    """A stage's candidate operating points under the goal (HadSkip's budgets, an exit rule's settings)."""
    info = stage.get("info") or {}
    if info.get("goal"):
        return info["goal"]["candidates"]
    return (info.get("calibration") or {}).get("table") or []


def _plot_goal(points: list[dict[str, Any]], goal: dict[str, Any], stage: str, path: Path) -> None:
    """Held-out score against depth of every candidate, the goal's bound and the chosen point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, chosen = goal["metric"], goal["chosen"].get(stage)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["avg_layers"] for p in points], [p[metric] for p in points], "o-", color="tab:blue",
            label="candidates (held-out rows)")
    if chosen:
        ax.scatter([chosen["avg_layers"]], [chosen[metric]], s=120, facecolors="none", edgecolors="tab:red",
                   label="chosen", zorder=3)
    ax.axhline(goal["heldout"]["baseline_score"], color="grey", lw=0.8, ls="--", label="baseline")
    if goal["heldout"]["floor"] is not None:
        ax.axhline(goal["heldout"]["floor"], color="tab:red", lw=0.8, ls=":", label="the goal's bound")
    ax.set_xlabel("layers per example (held-out rows)")
    ax.set_ylabel(f"{metric} (held-out rows)")
    ax.set_title(f"{stage}: {goal['description']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _routes_section(routes: dict[str, Any], metric: str, out: Path) -> list[str]:
    """The result against the trivial routes: a table and accuracy against measured speed-up."""
    splits = [k for k, v in routes["models"][0].items() if isinstance(v, dict) and metric in v]
    lines = ["## Against the trivial routes", "",
             f"Speed measured side by side on `{routes['split']}` ({routes['runtime']}, batch "
             f"{routes['batch_size']}), relative to the baseline.", "",
             "| model | " + " | ".join(f"{s} {metric}" for s in splits)
             + " | layers | GFLOPs | ms/example | speed-up |",
             "|---|" + "---|" * (len(splits) + 4)]
    for m in routes["models"]:
        lines.append(f"| {m['name']}: {m['description']} | " + " | ".join(f"{m[s][metric]:.4f}" for s in splits)
                     + f" | {m[routes['split']]['avg_layers']:.2f} | {m['flops_per_example'] / 1e9:.3f} "
                     f"| {m['ms_per_example']:.2f} | {m['speedup']:.2f}x |")
    _plot_routes(routes, splits, metric, out / "routes.png")
    return [*lines, "", "![the result against the trivial routes](routes.png)", ""]


def _plot_routes(routes: dict[str, Any], splits: list[str], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points, labels = [], []
    for split, marker in zip(splits, "os^D", strict=False):
        xs = [m["speedup"] for m in routes["models"]]
        ys = [m[split][metric] for m in routes["models"]]
        ax.scatter(xs, ys, marker=marker, label=split)
        points += list(zip(xs, ys, strict=True))
        labels += [m["name"] for m in routes["models"]]
    ax.set_xlabel(f"measured speed-up over the baseline ({routes['runtime']}, batch {routes['batch_size']})")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _annotate_apart(ax, points, labels)
    fig.savefig(path, dpi=120)
    plt.close(fig)

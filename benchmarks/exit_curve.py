"""Accuracy vs average executed layers of early-exit models, one curve per model, on one plot.

    python benchmarks/exit_curve.py pabee=runs/ee-pabee/stages/00-exit/model \
        consistentee=runs/ee-consistentee/stages/00-exit/model ... \
        --point budgeted-exit=runs/budgeted-exit-k2/stages/00-first_k/model ... \
        --reference full=runs/minilm-l6-2ep/stages/00-finetuned/model \
        --output docs/results/early_exit/curves.json --plot docs/results/early_exit/curves.png

Every exit's logits are computed once per model on the split; the model's own exit rule is then
replayed over a sweep of its knob (entropy / certainty / exit-probability threshold, patience),
so each point is exactly what inference with that setting does. ConsistentEE's knob is alpha, the
reward's depth weight: its points refit the policies at each alpha on the training rows (the
stage's own final step, from fresh weights) and replay them; its operating point is the saved
model. The operating point the strategy calibrated is marked. `--point` models (budgeted exit,
HadSkip, static models) give one point each.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from compresskit.data.loading import load_splits, resolve_task, tokenize
from compresskit.evaluation.evaluate import evaluate
from compresskit.modeling.loading import load_model
from compresskit.training.calibration import all_exit_logits, replayed_metrics


def sweep(rule_name: str, num_layers: int, num_labels: int) -> tuple[str, list[float]]:
    """The knob of each exit rule and the values to replay."""
    if rule_name == "entropy":
        return "threshold", list(np.linspace(0, math.log(num_labels), 41))
    if rule_name == "patience":
        return "patience", list(range(1, num_layers))
    if rule_name in ("learned", "patience_confidence"):
        return "threshold", list(np.linspace(0, 1, 41))
    raise SystemExit(f"exit_curve: no sweep for exit rule {rule_name!r}; pass the model with --point")


def curve(path: str, data, split: str, task, max_length: int, seed: int) -> dict:
    model, tokenizer = load_model(path, task)
    rule = model.config.exit_rule
    if not rule:
        raise SystemExit(f"exit_curve: {path} has no exit rule; pass it with --point")
    logits, states, labels = all_exit_logits(model, tokenize(data, tokenizer, max_length)[split], tokenizer)
    if rule["name"] == "policy":
        return policy_curve(path, model, tokenizer, (logits, states, labels), task, max_length, seed)
    knob, values = sweep(rule["name"], model.num_layers, task.num_labels)
    chosen = getattr(model.exit_rule, knob)
    points = []
    for value in [*values, chosen]:
        setattr(model.exit_rule, knob, value)
        points.append({knob: float(value), **replayed_metrics(model, logits, states, labels, task)})
    return {"model": path, "rule": rule["name"], "knob": knob, "points": points[:-1], "operating_point": points[-1]}


def policy_curve(path: str, model, tokenizer, replayed, task, max_length: int, seed: int) -> dict:
    """ConsistentEE: one point per alpha candidate of the strategy, policies refit on the train rows."""
    from compresskit.modeling.dynamic import build_exit_rule
    from compresskit.strategies.consistentee import ConsistentEEConfig, LayerStates, fit_policies
    from compresskit.training.early_exit import split_for_calibration

    logits, states, labels = replayed

    operating = {"alpha": None, **replayed_metrics(model, logits, states, labels, task)}  # the saved policies
    cfg = ConsistentEEConfig(strategy="consistentee", name="curve")
    train = tokenize(load_splits(task, ["train"], seed=seed), tokenizer, max_length)["train"]
    rows, _ = split_for_calibration(train, cfg.calibration.fraction, seed)
    cached = LayerStates.of(model, rows, tokenizer)
    torch.manual_seed(seed)
    fresh = build_exit_rule(model.config.exit_rule, model.num_layers, model.config.backbone["hidden_size"])
    points = []
    # the strategy's candidates and a finer grid: depth falls off a cliff within a few hundredths of alpha
    for alpha in sorted({*cfg.alphas, *(round(a, 3) for a in np.arange(0.01, 0.2001, 0.01))}):
        model.exit_rule.load_state_dict(fresh.state_dict())
        fit_policies(model.exit_rule, cached, cfg, alpha, seed, desc=f"refit alpha={alpha}")
        points.append({"alpha": alpha, **replayed_metrics(model, logits, states, labels, task)})
    return {"model": path, "rule": "policy", "knob": "alpha", "points": points, "operating_point": operating}


def single_point(path: str, data, split: str, task, max_length: int) -> dict:
    model, tokenizer = load_model(path, task)
    metrics = evaluate(model, tokenize(data, tokenizer, max_length)[split], task, tokenizer)
    return {"model": path, "accuracy": metrics[task.main_metric], "avg_layers": metrics["avg_layers"]}


def plot(results: dict, path: Path, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results["curves"].items():
        pts = sorted(r["points"], key=lambda p: p["avg_layers"])
        line, = ax.plot([p["avg_layers"] for p in pts], [p["accuracy"] for p in pts], ".-", label=name, alpha=0.8)
        op = r["operating_point"]
        ax.plot(op["avg_layers"], op["accuracy"], "o", color=line.get_color(), markersize=9, markerfacecolor="none")
    groups: dict[str, list] = {}
    for name, p in results["points"].items():
        groups.setdefault(name.split("@")[0], []).append(p)
    for name, pts in groups.items():
        pts = sorted(pts, key=lambda p: p["avg_layers"])
        ax.plot([p["avg_layers"] for p in pts], [p["accuracy"] for p in pts], "s--", label=name)
    for name, p in results["references"].items():
        ax.axhline(p["accuracy"], color="grey", linestyle=":", label=f"{name} ({p['avg_layers']:.0f} layers)")
    ax.set_xlabel("average executed layers per example")
    ax.set_ylabel(f"accuracy ({split})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Early exit: accuracy vs depth (circles: the calibrated operating point)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def named(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"exit_curve: expected NAME=MODEL_DIR, got {item!r}")
        out[name] = path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("curves", nargs="*", help="NAME=MODEL_DIR of an early-exit model")
    parser.add_argument("--point", action="append", default=[],
                        help="NAME=MODEL_DIR of a model giving one point (NAME@k groups points into a line)")
    parser.add_argument("--reference", action="append", default=[], help="NAME=MODEL_DIR drawn as a level")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42, help="of the runs (ConsistentEE's train/held-out split)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()

    task = resolve_task(args.task)
    data, split = load_splits(task, [args.split]), args.split
    results = {"task": task.name, "split": split,
               "curves": {n: curve(p, data, split, task, args.max_length, args.seed)
                          for n, p in named(args.curves).items()},
               "points": {n: single_point(p, data, split, task, args.max_length)
                          for n, p in named(args.point).items()},
               "references": {n: single_point(p, data, split, task, args.max_length)
                              for n, p in named(args.reference).items()}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    for name, r in results["curves"].items():
        op = r["operating_point"]
        knob = "" if r["knob"] == "alpha" else f" {r['knob']}={op[r['knob']]:.3f}"  # ConsistentEE: the saved model
        print(f"{name}: calibrated{knob} -> {op['accuracy']:.4f} @ {op['avg_layers']:.2f}")
    for name, p in {**results["points"], **results["references"]}.items():
        print(f"{name}: {p['accuracy']:.4f} @ {p['avg_layers']:.2f}")
    if args.plot:
        plot(results, args.plot, args.split)


if __name__ == "__main__":
    main()

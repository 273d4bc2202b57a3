"""Calibration of an exit rule's knob on held-out training rows (never the evaluation split).

Every exit's logits (and the final head's) are computed once on the held-out rows; each
candidate setting of the rule is then replayed through the same control flow inference uses
(`routing.route`), so the chosen setting gives on that data exactly the depth and score it
promises. The score is the task's first metric (what decides its best checkpoint too): a setting
that keeps accuracy can lose F1 on an unbalanced task, or Matthews correlation on CoLA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from compresskit.data.batches import loader, model_inputs
from compresskit.data.tasks import TaskSpec
from compresskit.errors import CompressKitError
from compresskit.evaluation.metrics import compute_metrics
from compresskit.goal import GoalTarget
from compresskit.modeling.model import CompressedModelForSequenceClassification
from compresskit.modeling.routed import TorchOps
from compresskit.modeling.routing import plan, route


class CalibrationConfig(BaseModel):
    """How an exit threshold is chosen on held-out training rows (never the evaluation split)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    fraction: float = Field(0.1, gt=0, lt=1, description="share of the train split held out for calibration")
    target_layers: float | None = Field(None, gt=0, description="pick the setting closest to this average depth")
    max_accuracy_drop: float | None = Field(None, ge=0, description="or: the fastest setting within this drop "
                                            "of the full model's held-out score on the task's first metric "
                                            "(accuracy, F1, Matthews, Pearson; 0.01 = one point; the goal when "
                                            "neither is given)")

    @model_validator(mode="after")
    def _one_goal(self) -> CalibrationConfig:
        if self.target_layers is not None and self.max_accuracy_drop is not None:
            raise ValueError("give only one of target_layers or max_accuracy_drop (set the other to null)")
        if self.target_layers is None and self.max_accuracy_drop is None:
            # so that `calibration: {fraction: 0.2}` keeps the default goal instead of failing
            self.max_accuracy_drop = 0.01
        return self


@torch.no_grad()
def all_exit_logits(model: CompressedModelForSequenceClassification, dataset: datasets.Dataset, tokenizer
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(layers, examples, labels) logits of every exit plus the final head, the summaries the exit
    rule reads (the final layer's too, pooled the same way), labels; on the host, where the
    replays (a few tensor ops per candidate) and the metrics run."""
    model.eval()
    logits, states, labels = [], [], []
    for batch in loader(dataset, tokenizer, 64):
        out = model(**model_inputs(batch), dynamic=False,
                    output_hidden_states=True)
        layers = sorted(out.exit_logits) + [model.num_layers - 1]
        logits.append(torch.stack([out.exit_logits[i] for i in layers[:-1]] + [out.logits]).cpu())
        final = model.exit_summary(out.hidden_states[-1], batch["attention_mask"].to(model.device))
        states.append(torch.stack([out.exit_summaries[i] for i in layers[:-1]] + [final]).cpu())
        labels.append(batch["labels"])
    return torch.cat(logits, 1), torch.cat(states, 1), torch.cat(labels)


class _Replay:
    """Exit logits computed once (every exit and the head, for every example), as a routing backend:
    each candidate setting of the rule is then a replay, with the same control flow as inference."""

    def __init__(self, model: CompressedModelForSequenceClassification, logits: torch.Tensor, states: torch.Tensor):
        self.model, self.logits, self.states = model, logits, states
        self.ops = TorchOps(logits.shape[1], logits.device)

    def gate(self, step, running):
        raise CompressKitError("calibration replays exits only; this model has gates")

    def run_layer(self, step, runs):
        pass  # the states were computed once

    def exit(self, step, running, state):
        rows = running.nonzero().squeeze(1)
        rule, logits, device = self.model.exit_rule, self.logits[step.layer], self.model.device
        leave = torch.zeros_like(running)
        # a learned rule's score is a network on the model's device; the decision replays on the host
        score = rule.score(step.layer, logits[rows].to(device), self.states[step.layer, rows].to(device)).cpu()
        leave[rows] = rule.decide(step.layer, score, rows, state)
        return leave, logits, None

    def head(self, running):
        return self.logits[-1]

    def initial_logits(self):
        return torch.zeros_like(self.logits[-1])

    def init_state(self):
        return self.model.exit_rule.init_state(self.ops.batch, self.logits.device)


@torch.no_grad()
def replay(model: CompressedModelForSequenceClassification, logits: torch.Tensor, states: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exit layer (1-based) and logits per example under the model's current exit rule.

    Assumes exits after every layer but the last (as `with_exit_heads` builds them).
    """
    layers = logits.shape[0]
    routed = route(plan(layers, set(), set(range(layers - 1))), _Replay(model, logits, states))
    return routed.exit_layer, routed.logits


def replayed_metrics(model: CompressedModelForSequenceClassification, logits: torch.Tensor, states: torch.Tensor,
                     labels: torch.Tensor, task: TaskSpec) -> dict[str, float]:
    """The task's metrics and the average exit layer of the model's current exit rule, replayed (see `replay`)."""
    exit_layer, routed_logits = replay(model, logits, states)
    return {**compute_metrics(task, routed_logits.float().numpy(), labels.numpy()),
            "avg_layers": float(exit_layer.float().mean())}


def full_score(logits: torch.Tensor, labels: torch.Tensor, task: TaskSpec) -> float:
    """The full model's (final head's) score on the task's first metric."""
    return compute_metrics(task, logits[-1].float().numpy(), labels.numpy())[task.main_metric]


def calibrate(model: CompressedModelForSequenceClassification, heldout: datasets.Dataset, tokenizer,
              task: TaskSpec, parameter: str, candidates: Sequence[float], cfg: CalibrationConfig,
              goal: GoalTarget | None = None) -> dict[str, Any]:
    """Set `model.exit_rule.<parameter>` (and its saved config) to the candidate `cfg` asks for, or
    the recipe's `goal` when it has one."""
    logits, states, labels = all_exit_logits(model, heldout, tokenizer)
    full = full_score(logits, labels, task)
    table = []
    for value in candidates:
        setattr(model.exit_rule, parameter, value)
        table.append({parameter: value, **replayed_metrics(model, logits, states, labels, task)})
    if goal is not None:
        def timed(row: dict[str, Any]) -> dict[str, float]:
            setattr(model.exit_rule, parameter, row[parameter])
            return goal.timing(model, heldout, tokenizer)
        chosen = goal.choose(table, parameter, timed)
    else:
        chosen = choose_setting(table, full, cfg, parameter, task.main_metric)
    setattr(model.exit_rule, parameter, chosen[parameter])
    model.config.exit_rule = {**model.config.exit_rule, parameter: chosen[parameter]}
    return {"parameter": parameter, "chosen": chosen, "metric": task.main_metric, "full_score": full,
            "table": table, "examples": int(labels.numel())}


def choose_setting(table: list[dict[str, Any]], full: float, cfg: CalibrationConfig, parameter: str,
                   metric: str = "accuracy") -> dict[str, Any]:
    """The row of `table` (`metric` and avg_layers per setting, on held-out rows) `cfg` asks for;
    `full` is the full model's `metric`."""
    if cfg.target_layers is not None:
        return min(table, key=lambda row: abs(row["avg_layers"] - cfg.target_layers))
    allowed = [row for row in table if row[metric] >= full - cfg.max_accuracy_drop]
    if not allowed:
        raise CompressKitError(f"no {parameter} keeps the held-out {metric} within {cfg.max_accuracy_drop} "
                               f"of {full:.4f}; allow a larger drop (calibration.max_accuracy_drop)")
    # the fastest; among equally fast settings the best scoring
    return min(allowed, key=lambda row: (row["avg_layers"], -row[metric]))

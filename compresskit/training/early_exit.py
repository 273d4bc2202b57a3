"""Machinery shared by the early-exit strategies: exit heads, their losses, threshold calibration.

Calibration replays the model's own exit rule (the same module that runs at inference) over
every exit's logits on held-out training rows, so the chosen threshold gives on that data
exactly the depth and accuracy it promises.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import datasets
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.nn import functional as F

from compresskit.errors import CompressKitError
from compresskit.evaluation.evaluate import MODEL_INPUTS, loader
from compresskit.modeling.model import CompressedModelForSequenceClassification, restructure
from compresskit.registry import ModelShape, PlanContext

ExitPooling = Literal["cls", "mean"]


class ExitHeadsConfig(BaseModel):
    """Recipe key shared by the strategies that add exit heads."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    exit_pooling: ExitPooling = Field(
        "cls", description="what each exit head (and a learned exit rule) reads of its layer: the [CLS] state "
        "(BERT-style classifiers) or the mean over tokens (sentence encoders pretrained with mean pooling, "
        "such as all-MiniLM, whose early [CLS] states carry little)")


class CalibrationConfig(BaseModel):
    """How an exit threshold is chosen on held-out training rows (never the evaluation split)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    fraction: float = Field(0.1, gt=0, lt=1, description="share of the train split held out for calibration")
    target_layers: float | None = Field(None, gt=0, description="pick the setting closest to this average depth")
    max_accuracy_drop: float | None = Field(None, ge=0, description="or: the fastest setting within this drop "
                                            "of the full model's held-out accuracy (0.01 = one point; the goal "
                                            "when neither is given)")

    @model_validator(mode="after")
    def _one_goal(self) -> CalibrationConfig:
        if self.target_layers is not None and self.max_accuracy_drop is not None:
            raise ValueError("give only one of target_layers or max_accuracy_drop (set the other to null)")
        if self.target_layers is None and self.max_accuracy_drop is None:
            # so that `calibration: {fraction: 0.2}` keeps the default goal instead of failing
            self.max_accuracy_drop = 0.01
        return self


def plan_exit_heads(strategy: str, cfg: Any, shape: ModelShape, ctx: PlanContext) -> ModelShape:
    """Validation shared by the strategies that put an exit head after every layer but the last."""
    if shape.num_layers < 2:
        ctx.problem("", f"{strategy} puts exits after the layers before the last: it needs at least 2 layers, "
                        f"the model it receives has {shape.num_layers}")
    if ctx.task.is_regression:
        ctx.problem("", f"{strategy} decides exits from class predictions and calibrates on accuracy; the task "
                        "is a regression (num_labels: 1). Use hadskip, budgeted_exit or a static strategy")
    target = getattr(getattr(cfg, "calibration", None), "target_layers", None)
    if target is not None and target > shape.num_layers:
        ctx.problem("calibration.target_layers", f"{target:g} exceeds the {shape.num_layers} layers of the model "
                                                 "this stage receives")
    return replace(shape, dynamic=True)


def with_exit_heads(model: CompressedModelForSequenceClassification, rule: dict[str, Any],
                    pooling: ExitPooling = "cls") -> CompressedModelForSequenceClassification:
    """The same model with an exit head after every layer but the last, reading the layer's output
    pooled as `pooling`, and `rule` deciding exits."""
    config = copy.deepcopy(model.config)
    last = len(config.layers) - 1
    config.layers = [{**spec, "exit": i < last} for i, spec in enumerate(config.layers)]
    config.exit_head = {"pooling": pooling}
    config.exit_rule = rule
    return restructure(model, config)


def split_for_calibration(train_set: datasets.Dataset, fraction: float, seed: int
                          ) -> tuple[datasets.Dataset, datasets.Dataset]:
    parts = train_set.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def layer_weighted_loss(out: Any, labels: torch.Tensor, weighting: Literal["uniform", "linear"],
                        include_final: bool = True) -> torch.Tensor:
    """Sum of the exits' (and the final head's) cross-entropy; `linear` weighs layer i by i (PABEE)."""
    logits = [out.exit_logits[i] for i in sorted(out.exit_logits or {})]
    if include_final:
        logits.append(out.logits)
    weights = [float(i + 1) if weighting == "linear" else 1.0 for i in range(len(logits))]
    total = sum(w * F.cross_entropy(x, labels) for w, x in zip(weights, logits, strict=True))
    return total / sum(weights)


@torch.no_grad()
def all_exit_logits(model: CompressedModelForSequenceClassification, dataset: datasets.Dataset, tokenizer
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(layers, examples, labels) logits of every exit plus the final head, the summaries the exit
    rule reads (the final layer's too, pooled the same way), labels."""
    model.eval()
    logits, states, labels = [], [], []
    for batch in loader(dataset, tokenizer, 64):
        out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}, dynamic=False,
                    output_hidden_states=True)
        layers = sorted(out.exit_logits) + [model.num_layers - 1]
        logits.append(torch.stack([out.exit_logits[i] for i in layers[:-1]] + [out.logits]))
        final = model.exit_summary(out.hidden_states[-1], batch["attention_mask"])
        states.append(torch.stack([out.exit_summaries[i] for i in layers[:-1]] + [final]))
        labels.append(batch["labels"])
    return torch.cat(logits, 1), torch.cat(states, 1), torch.cat(labels)


@torch.no_grad()
def replay(model: CompressedModelForSequenceClassification, logits: torch.Tensor, states: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exit layer (1-based) and prediction per example under the model's current exit rule.

    Assumes exits after every layer but the last (as `with_exit_heads` builds them).
    """
    rule, n = model.exit_rule, logits.shape[1]
    state = rule.init_state(n, logits.device)
    active = torch.arange(n)
    exit_layer = torch.full((n,), logits.shape[0])
    preds = logits[-1].argmax(-1).clone()
    for i in range(logits.shape[0] - 1):
        leave = rule.should_exit(i, logits[i, active], states[i, active], active, state)
        exit_layer[active[leave]] = i + 1
        preds[active[leave]] = logits[i, active[leave]].argmax(-1)
        active = active[~leave]
    return exit_layer, preds


def replayed_metrics(model: CompressedModelForSequenceClassification, logits: torch.Tensor, states: torch.Tensor,
                     labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and average exit layer of the model's current exit rule, replayed (see `replay`)."""
    exit_layer, preds = replay(model, logits, states)
    return {"accuracy": float((preds == labels).float().mean()), "avg_layers": float(exit_layer.float().mean())}


def calibrate(model: CompressedModelForSequenceClassification, heldout: datasets.Dataset, tokenizer,
              parameter: str, candidates: Sequence[float], cfg: CalibrationConfig) -> dict[str, Any]:
    """Set `model.exit_rule.<parameter>` (and its saved config) to the candidate `cfg` asks for."""
    logits, states, labels = all_exit_logits(model, heldout, tokenizer)
    full_accuracy = float((logits[-1].argmax(-1) == labels).float().mean())
    table = []
    for value in candidates:
        setattr(model.exit_rule, parameter, value)
        table.append({parameter: value, **replayed_metrics(model, logits, states, labels)})
    chosen = choose_setting(table, full_accuracy, cfg, parameter)
    setattr(model.exit_rule, parameter, chosen[parameter])
    model.config.exit_rule = {**model.config.exit_rule, parameter: chosen[parameter]}
    return {"parameter": parameter, "chosen": chosen, "full_accuracy": full_accuracy, "table": table,
            "examples": int(labels.numel())}


def choose_setting(table: list[dict[str, Any]], full_accuracy: float, cfg: CalibrationConfig, parameter: str
                   ) -> dict[str, Any]:
    """The row of `table` (accuracy and avg_layers per setting, on held-out rows) `cfg` asks for."""
    if cfg.target_layers is not None:
        return min(table, key=lambda row: abs(row["avg_layers"] - cfg.target_layers))
    allowed = [row for row in table if row["accuracy"] >= full_accuracy - cfg.max_accuracy_drop]
    if not allowed:
        raise CompressKitError(f"no {parameter} keeps the held-out accuracy within {cfg.max_accuracy_drop} "
                               f"of {full_accuracy:.4f}; allow a larger drop")
    return min(allowed, key=lambda row: row["avg_layers"])

"""Machinery shared by the early-exit strategies: exit heads, their losses, threshold calibration.

Calibration replays the model's own exit rule (the same module that runs at inference) over
every exit's logits on held-out training rows, so the chosen threshold gives on that data
exactly the depth and accuracy it promises.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import datasets
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from compresskit.stage import ModelShape, PlanContext

ExitPooling = Literal["cls", "mean"]


class ExitHeadsConfig(BaseModel):
    """Recipe key shared by the strategies that add exit heads."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    exit_pooling: ExitPooling = Field(
        "cls", description="what each exit head (and a learned exit rule) reads of its layer: the [CLS] state "
        "(BERT-style classifiers) or the mean over tokens (sentence encoders pretrained with mean pooling, "
        "such as all-MiniLM, whose early [CLS] states carry little)")


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

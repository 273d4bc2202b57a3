"""`cost_eff`: COST-EFF (Shen et al., 2022) — a slenderized multi-exit model.

Depth stays; width goes; every layer gets an exit. Following the reference pipeline:
  1. a multi-exit "teacher assistant": exit heads after every layer, trained with the backbone so
     that every exit learns from the teacher's final prediction averaged with the label;
  2. iterative slenderization: heads and FFN neurons removed in `prune_steps` steps whose ratios
     grow linearly to the target, by Taylor importance of that same multi-exit loss, each step
     followed by a short recovery on it;
  3. representation distillation (embedding and every layer's hidden states against the teacher);
  4. prediction + representation distillation;
  5. an entropy threshold calibrated on held-out training rows: an example leaves at the first
     exit whose prediction entropy is below it (the same batched exits as `deebert`).
The stage reports accuracy and counted FLOPs over a sweep of thresholds for the slender model and
for the unpruned multi-exit model of step 1 (`info.curve`, `info.curve_unpruned`, `curve.png`).
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
from typing import Any

import torch
from pydantic import Field, model_validator

from compresskit.data.batches import loader, model_inputs, on_device
from compresskit.data.tasks import TaskSpec
from compresskit.evaluation.flops import count_parameters, flops_per_example
from compresskit.modeling.backbones import adapter_for
from compresskit.modeling.model import CompressedModelForSequenceClassification
from compresskit.modeling.pruning import PruneSettings, prune
from compresskit.registry import register_strategy
from compresskit.stage import ModelShape, PlanContext
from compresskit.training.calibration import all_exit_logits, replayed_metrics
from compresskit.training.distillation import hidden_mse, soft_cross_entropy, soft_targets
from compresskit.training.early_exit import EarlyExitStrategy, ExitStageConfig
from compresskit.training.trainer import TrainingConfig, train

log = logging.getLogger(__name__)


class CostEffConfig(ExitStageConfig):
    """Recipe keys of a `cost_eff` stage."""

    head_ratio: float = Field(0.5, ge=0, lt=1, description="share of attention heads removed in the end")
    ffn_ratio: float = Field(0.5, ge=0, lt=1, description="share of FFN neurons removed in the end")
    prune_steps: int = Field(4, ge=1, description="slenderization steps (ratios grow linearly)")
    exit_epochs: float = Field(1.0, gt=0, description="step 1: training of the multi-exit teacher assistant")
    recover_epochs: float = Field(0.25, ge=0, description="recovery after each slenderization step")
    representation_epochs: float = Field(1.0, ge=0, description="step 3: hidden-state distillation")
    prediction_epochs: float = Field(1.0, ge=0, description="step 4: prediction + representation distillation")
    learning_rate: float = Field(5e-5, gt=0)
    temperature: float = Field(1.0, gt=0, description="softening of the teacher's prediction")
    taylor_batches: int = Field(16, ge=1, description="batches whose gradients score the channels")
    thresholds: int = Field(40, ge=2, le=10_000, description="entropy thresholds tried, evenly from 0 to ln(labels)")
    curve_points: int = Field(12, ge=2, le=1000, description="thresholds of the reported accuracy-vs-FLOPs curve")

    @model_validator(mode="after")
    def _slenderize(self) -> CostEffConfig:
        if self.head_ratio == 0 and self.ffn_ratio == 0:
            raise ValueError("head_ratio and ffn_ratio are both 0: COST-EFF slenderizes the width")
        return self


@register_strategy
class CostEffStrategy(EarlyExitStrategy[CostEffConfig]):
    """COST-EFF: slenderize width by Taylor importance, exit after every layer, distil; entropy exits.

    The incoming (fine-tuned) model is also the teacher. Example stage::

        - strategy: cost_eff
          head_ratio: 0.5
          ffn_ratio: 0.5
          calibration: {max_accuracy_drop: 0.01}
    """

    name = "cost_eff"

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        reason = adapter_for(shape.model_type).head_pruning
        if reason and self.config.head_ratio > 0:
            ctx.problem("head_ratio", reason)
        return super().plan(shape, ctx)

    def rule(self):
        return {"name": "entropy", "threshold": 0.0}

    def fit(self, model, rows, state, ctx):
        cfg = self.config
        teacher = copy.deepcopy(state.model).eval().requires_grad_(False)
        eval_set = state.data[ctx.eval_split]
        exits_loss = functools.partial(multi_exit_loss, teacher=teacher, temperature=cfg.temperature)
        both_loss = functools.partial(multi_exit_loss, teacher=teacher, temperature=cfg.temperature,
                                      representation=True)
        info: dict[str, Any] = {"history": {}, "parameters_before": count_parameters(state.model)}

        def fit(model, epochs, loss, desc):
            settings = TrainingConfig(epochs=epochs, learning_rate=cfg.learning_rate, batch_size=cfg.batch_size)
            result = train(model, rows, eval_set, state.task, state.tokenizer, settings, ctx.seed,
                           loss_fn=loss, desc=f"{ctx.name} {desc}")
            info["history"][desc] = result.history

        fit(model, cfg.exit_epochs, exits_loss, "exits")
        self._assistant = copy.deepcopy(model)  # the multi-exit model before slenderization: the curve's reference

        done_heads = done_ffn = 0.0
        data = loader(rows, state.tokenizer, cfg.batch_size, shuffle=True, seed=ctx.seed)
        for step in range(1, cfg.prune_steps + 1):
            heads, ffn = cfg.head_ratio * step / cfg.prune_steps, cfg.ffn_ratio * step / cfg.prune_steps
            # a step's ratio is of what the previous steps left
            step_cfg = PruneSettings(importance="taylor", head_ratio=1 - (1 - heads) / (1 - done_heads),
                                     ffn_ratio=1 - (1 - ffn) / (1 - done_ffn))
            batches = [on_device(model_inputs(b, labels=True), model.device)
                       for b in itertools.islice(data, cfg.taylor_batches)]
            model = prune(model, batches, step_cfg, loss_fn=exits_loss)
            done_heads, done_ffn = heads, ffn
            if cfg.recover_epochs > 0:
                fit(model, cfg.recover_epochs, exits_loss, f"recover {step}")
        if cfg.representation_epochs > 0:
            fit(model, cfg.representation_epochs,
                functools.partial(representation_loss, teacher=teacher), "representation")
        if cfg.prediction_epochs > 0:
            fit(model, cfg.prediction_epochs, both_loss, "prediction")
        return model, info

    def candidates(self, model, state):
        top = math.log(state.task.num_labels)
        return [top * i / (self.config.thresholds - 1) for i in range(self.config.thresholds)]

    def describe(self, model, state, ctx):
        cfg, eval_set = self.config, state.data[ctx.eval_split]
        top = math.log(state.task.num_labels)
        points = [top * i / (cfg.curve_points - 1) for i in range(cfg.curve_points)]
        info = {"curve": threshold_curve(model, eval_set, state.tokenizer, state.task, points),
                "curve_unpruned": threshold_curve(self._assistant, eval_set, state.tokenizer, state.task, points),
                "parameters_after": count_parameters(model),
                "layers": [{"heads": len(s["heads"]), "intermediate_size": s["intermediate_size"]}
                           for s in model.config.layers]}
        plot_curves(info["curve"], info["curve_unpruned"], state.task.main_metric, ctx.work_dir / "curve.png")
        return info


def multi_exit_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], teacher: torch.nn.Module,
                    temperature: float, representation: bool = False) -> torch.Tensor:
    """Soft cross-entropy of every exit and the final head against `soft_targets` (+ hidden MSE)."""
    inputs = model_inputs(batch)
    out = model(**inputs, dynamic=False, output_hidden_states=representation)
    with torch.no_grad():
        ref = teacher(**inputs, dynamic=False, output_hidden_states=representation)
    target = soft_targets(ref.logits, batch["labels"], temperature)
    logits = [out.exit_logits[i] for i in sorted(out.exit_logits or {})] + [out.logits]
    loss = sum(soft_cross_entropy(x, target) for x in logits) / len(logits)
    if representation:
        loss = loss + hidden_mse(out.hidden_states, ref.hidden_states, inputs["attention_mask"])
    return loss


def representation_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], teacher: torch.nn.Module
                        ) -> torch.Tensor:
    inputs = model_inputs(batch)
    out = model(**inputs, dynamic=False, output_hidden_states=True)
    with torch.no_grad():
        ref = teacher(**inputs, dynamic=False, output_hidden_states=True)
    return hidden_mse(out.hidden_states, ref.hidden_states, inputs["attention_mask"])


def threshold_curve(model: CompressedModelForSequenceClassification, dataset: Any, tokenizer: Any, task: TaskSpec,
                    thresholds: list[float], flops_examples: int = 128) -> list[dict[str, float]]:
    """The task's metrics, average exit layer and counted FLOPs per example for each entropy threshold."""
    logits, states, labels = all_exit_logits(model, dataset, tokenizer)
    kept = model.exit_rule.threshold
    rows = []
    for value in thresholds:
        model.exit_rule.threshold = value
        rows.append({"threshold": value, **replayed_metrics(model, logits, states, labels, task),
                     "flops_per_example": flops_per_example(model, dataset, tokenizer, max_examples=flops_examples)})
    model.exit_rule.threshold = kept
    return rows


def plot_curves(curve: list[dict], unpruned: list[dict], metric: str, path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for rows, label in ((unpruned, "multi-exit, full width"), (curve, "COST-EFF (slenderized)")):
        ax.plot([r["flops_per_example"] / 1e9 for r in rows], [r[metric] for r in rows], marker="o", label=label)
    ax.set_xlabel("GFLOPs per example (counted)")
    ax.set_ylabel(f"{metric} (the recipe's evaluation split)")
    ax.set_title("COST-EFF: entropy-threshold sweep")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Machinery shared by the early-exit strategies: their common keys and validation, their losses, and
`EarlyExitStrategy`, the skeleton each method fills in (its exit rule, how it trains, what it calibrates).

Calibration (training/calibration.py) replays the model's own exit rule over every exit's logits
on held-out training rows, so the chosen setting gives on that data the depth and accuracy it promises.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal, TypeVar

import datasets
import torch
from pydantic import Field

from compresskit.data.batches import model_inputs
from compresskit.goal import HELDOUT
from compresskit.modeling.model import CompressedModelForSequenceClassification, task_loss
from compresskit.modeling.surgery import with_exit_heads
from compresskit.registry import StageConfig, Strategy
from compresskit.stage import ModelShape, PipelineState, PlanContext, StageContext
from compresskit.training.calibration import CalibrationConfig, calibrate
from compresskit.training.trainer import Parameters, TrainingConfig, train

ExitPooling = Literal["cls", "mean"]


class ExitStageConfig(StageConfig):
    """Recipe keys every early-exit stage has."""

    exit_pooling: ExitPooling = Field(
        "cls", description="what each exit head (and a learned exit rule) reads of its layer: the [CLS] state "
        "(BERT-style classifiers) or the mean over tokens (sentence encoders pretrained with mean pooling, "
        "such as all-MiniLM, whose early [CLS] states carry little)")
    batch_size: int = Field(32, ge=1)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, description="how the exit setting is "
                                           "chosen on held-out training rows")


class JointExitConfig(ExitStageConfig):
    """Keys of the methods that train backbone and exits together (`pabee`, `pcee`)."""

    epochs: float = Field(2.0, gt=0, description="joint training of backbone and exits")
    learning_rate: float = Field(2e-5, gt=0, description="of the backbone")
    exit_learning_rate: float = Field(5e-4, gt=0, description="of the fresh exit heads")


def plan_exit_heads(strategy: str, cfg: Any, shape: ModelShape, ctx: PlanContext,
                    regression_refusal: str | None = None) -> ModelShape:
    """Validation shared by the strategies that put an exit head after every layer but the last;
    `regression_refusal` says why the method has no regression form (None: it has one)."""
    if shape.num_layers < 2:
        ctx.problem("", f"{strategy} puts exits after the layers before the last: it needs at least 2 layers, "
                        f"the model it receives has {shape.num_layers}")
    if ctx.task.is_regression and regression_refusal:
        ctx.problem("", f"{strategy} {regression_refusal}; the task is a regression (num_labels: 1). Use pabee, "
                        "berxit, hadskip, budgeted_exit or a static strategy")
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
    """Sum of the exits' (and the final head's) task losses (cross-entropy; MSE on a regression's one
    output); `linear` weighs layer i by i (PABEE)."""
    logits = [out.exit_logits[i] for i in sorted(out.exit_logits or {})]
    if include_final:
        logits.append(out.logits)
    weights = [float(i + 1) if weighting == "linear" else 1.0 for i in range(len(logits))]
    total = sum(w * task_loss(x, labels) for w, x in zip(weights, logits, strict=True))
    return total / sum(weights)


def train_exits(model: CompressedModelForSequenceClassification, rows: datasets.Dataset, state: PipelineState,
                ctx: StageContext, epochs: float, learning_rate: float, batch_size: int, loss_fn: Any, what: str,
                parameters: Parameters | None = None, seed: int | None = None) -> list[dict[str, float]]:
    """One training phase of an early-exit stage on its training rows (no evaluation: the rows held out
    for calibration judge the exits); the per-epoch history."""
    settings = TrainingConfig(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size)
    return train(model, rows, None, state.task, state.tokenizer, settings, ctx.seed if seed is None else seed,
                 loss_fn=loss_fn, parameters=parameters, desc=f"{ctx.name} {what}").history


def backbone_and_exits(model: CompressedModelForSequenceClassification, exit_learning_rate: float) -> Parameters:
    """Optimizer groups: the backbone at the stage's rate, the fresh exit heads at their own."""
    return [{"params": [p for n, p in model.named_parameters() if not n.startswith(("exit_heads.", "exit_rule."))]},
            {"params": list(model.exit_heads.parameters()), "lr": exit_learning_rate}]


def weighted_exits_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """PABEE's joint objective: every exit and the final head, layer i weighted by i."""
    return layer_weighted_loss(model(**model_inputs(batch)), batch["labels"], "linear")


def fit_jointly(strategy: EarlyExitStrategy, model: CompressedModelForSequenceClassification, rows: datasets.Dataset,
                state: PipelineState, ctx: StageContext) -> tuple[CompressedModelForSequenceClassification, dict]:
    """`fit` of the methods that train backbone and exits together on the layer-weighted losses."""
    cfg = strategy.config
    return model, {"history": train_exits(model, rows, state, ctx, cfg.epochs, cfg.learning_rate, cfg.batch_size,
                                          weighted_exits_loss, "joint",
                                          parameters=backbone_and_exits(model, cfg.exit_learning_rate))}


E = TypeVar("E", bound=ExitStageConfig)


class EarlyExitStrategy(Strategy[E]):
    """The early-exit skeleton every method shares.

    An exit head after every layer but the last, decided by `rule()`; the train split minus the
    rows held out for calibration; `fit` trains (and may change the model); the rule's `knob` is
    calibrated over `candidates` on the held-out rows; `describe` adds what else the method
    reports. A method fills in those few pieces.
    """

    kind = "dynamic"
    knob: ClassVar[str] = "threshold"
    goal_knob = "the exit rule's setting, calibrated on the goal's held-out rows"
    # why the method has no regression form, as validation says it (None: it has one)
    regression_refusal: ClassVar[str | None] = ("decides exits from the class distribution of each exit (entropy "
                                                "or confidence), which a single regression output does not have")

    def rule(self) -> dict[str, Any]:
        """The exit rule as built (`name` and its parameters; the knob's value is calibrated later)."""
        raise NotImplementedError

    def fit(self, model: CompressedModelForSequenceClassification, rows: datasets.Dataset, state: PipelineState,
            ctx: StageContext) -> tuple[CompressedModelForSequenceClassification, dict[str, Any]]:
        """Train; the model trained (the same one, or a new one) and what to report (its history)."""
        raise NotImplementedError

    def candidates(self, model: CompressedModelForSequenceClassification, state: PipelineState) -> list[float]:
        raise NotImplementedError

    def calibrate(self, model: CompressedModelForSequenceClassification, heldout: datasets.Dataset,
                  state: PipelineState, ctx: StageContext) -> dict[str, Any]:
        return calibrate(model, heldout, state.tokenizer, state.task, self.knob, self.candidates(model, state),
                         self.config.calibration, ctx.goal)

    def describe(self, model: CompressedModelForSequenceClassification, state: PipelineState,
                 ctx: StageContext) -> dict[str, Any]:
        return {}

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        return plan_exit_heads(self.name, self.config, shape, ctx, self.regression_refusal)

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        model = with_exit_heads(state.model, self.rule(), self.config.exit_pooling)
        if ctx.goal is not None:  # the recipe's held-out rows: no stage trained on them
            rows, heldout = state.data["train"], state.data[HELDOUT]
        else:
            rows, heldout = split_for_calibration(state.data["train"], self.config.calibration.fraction, ctx.seed)
        model, info = self.fit(model, rows, state, ctx)
        info["calibration"] = self.calibrate(model, heldout, state, ctx)
        info.update(self.describe(model, state, ctx))
        state.model, state.info = model, info
        return state

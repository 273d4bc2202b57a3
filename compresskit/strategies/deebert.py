"""`deebert`: DeeBERT (Xin et al., 2020) entropy-based early exit, two-stage training."""

from __future__ import annotations

import math

from pydantic import Field

from compresskit.data.batches import model_inputs
from compresskit.modeling.surgery import with_exit_heads
from compresskit.registry import StageConfig, Strategy, register_strategy
from compresskit.stage import ModelShape, PipelineState, PlanContext, StageContext
from compresskit.training.calibration import CalibrationConfig, calibrate
from compresskit.training.early_exit import (
    ExitHeadsConfig,
    layer_weighted_loss,
    plan_exit_heads,
    split_for_calibration,
)
from compresskit.training.trainer import TrainingConfig, train


class DeeBERTConfig(StageConfig, ExitHeadsConfig):
    """Recipe keys of a `deebert` stage."""

    epochs: float = Field(2.0, gt=0, description="stage 2: exit heads only (backbone and final head frozen)")
    learning_rate: float = Field(5e-4, gt=0, description="of the exit heads (fresh, small modules)")
    batch_size: int = Field(32, ge=1)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, description="how the exit setting is "
                                         "chosen on held-out training rows")
    thresholds: int = Field(40, ge=2, description="entropy thresholds tried, evenly from 0 to ln(labels)")


@register_strategy
class DeeBERTStrategy(Strategy[DeeBERTConfig]):
    """DeeBERT: exit heads trained on a frozen fine-tuned model; exit when entropy < threshold.

    Stage 1 is the incoming (fine-tuned) model. The threshold is calibrated on held-out training
    rows. Example stage::

        - strategy: deebert
          epochs: 2
          calibration: {target_layers: 3}
    """

    name = "deebert"
    kind = "dynamic"

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        return plan_exit_heads(self.name, self.config, shape, ctx)

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        cfg = self.config
        model = with_exit_heads(state.model, {"name": "entropy", "threshold": 0.0}, cfg.exit_pooling)
        train_rows, heldout = split_for_calibration(state.data["train"], cfg.calibration.fraction, ctx.seed)
        model.requires_grad_(False)
        model.exit_heads.requires_grad_(True)
        result = train(model, train_rows, None, state.task, state.tokenizer,
                       TrainingConfig(epochs=cfg.epochs, learning_rate=cfg.learning_rate, batch_size=cfg.batch_size),
                       ctx.seed, loss_fn=_exits_loss, parameters=list(model.exit_heads.parameters()),
                       desc=f"{ctx.name} exits")
        model.requires_grad_(True)
        top = math.log(state.task.num_labels)
        candidates = [top * i / (cfg.thresholds - 1) for i in range(cfg.thresholds)]
        calibration = calibrate(model, heldout, state.tokenizer, "threshold", candidates, cfg.calibration)
        state.model = model
        state.info = {"history": result.history, "calibration": calibration}
        return state


def _exits_loss(model, batch):
    out = model(**model_inputs(batch))
    return layer_weighted_loss(out, batch["labels"], "uniform", include_final=False)

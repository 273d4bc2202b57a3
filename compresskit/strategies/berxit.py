"""`berxit`: BERxiT (Xin et al., 2021): a learned exit module and alternating fine-tuning."""

from __future__ import annotations

import torch
from pydantic import Field
from torch.nn import functional as F

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
from compresskit.training.trainer import TrainingConfig, train, unwrap


class BERxiTConfig(StageConfig, ExitHeadsConfig):
    """Recipe keys of a `berxit` stage."""

    epochs: int = Field(2, ge=2, description="alternating epochs: odd ones train the final head's loss, even "
                        "ones the exits' losses and the exit module")
    learning_rate: float = Field(2e-5, gt=0, description="of the backbone")
    exit_learning_rate: float = Field(5e-4, gt=0, description="of the exit heads and the exit module")
    batch_size: int = Field(32, ge=1)
    thresholds: int = Field(40, ge=2, description="certainty thresholds tried, evenly in [0, 1]")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, description="how the exit setting is "
                                         "chosen on held-out training rows")


@register_strategy
class BERxiTStrategy(Strategy[BERxiTConfig]):
    """BERxiT: a shared learning-to-exit module predicts whether a layer's answer is right.

    Trained by alternating epochs (final loss / exits' losses + exit-module MSE to "this layer is
    right"); the exit threshold is calibrated on held-out training rows. Example stage::

        - strategy: berxit
          epochs: 4
          calibration: {target_layers: 3}
    """

    name = "berxit"
    kind = "dynamic"

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        return plan_exit_heads(self.name, self.config, shape, ctx)

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        cfg = self.config
        model = with_exit_heads(state.model, {"name": "learned", "threshold": 0.5}, cfg.exit_pooling)
        train_rows, heldout = split_for_calibration(state.data["train"], cfg.calibration.fraction, ctx.seed)
        backbone = [p for n, p in model.named_parameters() if not n.startswith(("exit_heads.", "exit_rule."))]
        exits = list(model.exit_heads.parameters()) + list(model.exit_rule.parameters())
        history = []
        for epoch in range(cfg.epochs):
            final_phase = epoch % 2 == 0
            groups = [{"params": backbone}] + ([] if final_phase else [{"params": exits, "lr": cfg.exit_learning_rate}])
            result = train(model, train_rows, None, state.task, state.tokenizer,
                           TrainingConfig(epochs=1, learning_rate=cfg.learning_rate, batch_size=cfg.batch_size),
                           ctx.seed + epoch, loss_fn=_final_loss if final_phase else _exits_and_lte_loss,
                           parameters=groups, desc=f"{ctx.name} {'final' if final_phase else 'exits'} {epoch + 1}")
            history += result.history
        candidates = [i / (cfg.thresholds - 1) for i in range(cfg.thresholds)]
        calibration = calibrate(model, heldout, state.tokenizer, "threshold", candidates, cfg.calibration)
        state.model, state.info = model, {"history": history, "calibration": calibration}
        return state


def _final_loss(model, batch):
    return model(**model_inputs(batch, labels=True)).loss


def _exits_and_lte_loss(model, batch):
    out = model(**model_inputs(batch))
    rule = unwrap(model).exit_rule
    loss = layer_weighted_loss(out, batch["labels"], "uniform")
    layers = sorted(out.exit_logits)
    certainty = torch.stack([rule.certainty(out.exit_summaries[i]) for i in layers], 1)
    right = torch.stack([(out.exit_logits[i].argmax(-1) == batch["labels"]).float() for i in layers], 1)
    return loss + F.mse_loss(certainty, right)

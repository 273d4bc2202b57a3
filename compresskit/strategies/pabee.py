"""`pabee`: PABEE (Zhou et al., 2020) patience-based early exit."""

from __future__ import annotations

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


class PABEEConfig(StageConfig, ExitHeadsConfig):
    """Recipe keys of a `pabee` stage (also the training of `pcee`)."""

    epochs: float = Field(2.0, gt=0, description="joint training of backbone and exits")
    learning_rate: float = Field(2e-5, gt=0, description="of the backbone")
    exit_learning_rate: float = Field(5e-4, gt=0, description="of the fresh exit heads")
    batch_size: int = Field(32, ge=1)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, description="how the exit setting is "
                                         "chosen on held-out training rows")


def train_jointly(state: PipelineState, ctx: StageContext, cfg: PABEEConfig, rule: dict):
    """Backbone and exits trained together on the weighted sum of their losses (weight i)."""
    model = with_exit_heads(state.model, rule, cfg.exit_pooling)
    train_rows, heldout = split_for_calibration(state.data["train"], cfg.calibration.fraction, ctx.seed)
    groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("exit_heads.")]},
              {"params": list(model.exit_heads.parameters()), "lr": cfg.exit_learning_rate}]
    result = train(model, train_rows, None, state.task, state.tokenizer,
                   TrainingConfig(epochs=cfg.epochs, learning_rate=cfg.learning_rate, batch_size=cfg.batch_size),
                   ctx.seed, loss_fn=_weighted_loss, parameters=groups, desc=f"{ctx.name} joint")
    return model, heldout, result


def _weighted_loss(model, batch):
    out = model(**model_inputs(batch))
    return layer_weighted_loss(out, batch["labels"], "linear")


@register_strategy
class PABEEStrategy(Strategy[PABEEConfig]):
    """PABEE: exit when the prediction has not changed for `patience` consecutive layers.

    Trained on the layer-weighted sum of the exits' losses; patience calibrated on held-out
    training rows. Example stage::

        - strategy: pabee
          epochs: 2
          calibration: {max_accuracy_drop: 0.01}
    """

    name = "pabee"
    kind = "dynamic"

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        return plan_exit_heads(self.name, self.config, shape, ctx)

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        model, heldout, result = train_jointly(state, ctx, self.config, {"name": "patience", "patience": 1})
        candidates = list(range(1, model.num_layers))
        calibration = calibrate(model, heldout, state.tokenizer, "patience", candidates, self.config.calibration)
        state.model, state.info = model, {"history": result.history, "calibration": calibration}
        return state

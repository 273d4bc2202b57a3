"""`pcee`: PCEE-BERT (Zhang et al., 2022): patient and confident early exit."""

from __future__ import annotations

from pydantic import Field

from compresskit.registry import Strategy, register_strategy
from compresskit.stage import ModelShape, PipelineState, PlanContext, StageContext
from compresskit.strategies.pabee import PABEEConfig, train_jointly
from compresskit.training.calibration import calibrate
from compresskit.training.early_exit import plan_exit_heads


class PCEEConfig(PABEEConfig):
    """Recipe keys of a `pcee` stage."""

    patience: int = Field(1, ge=1, description="confident layers in a row needed to exit")
    thresholds: int = Field(40, ge=2, description="normalised-entropy thresholds tried, evenly in [0, 1]")


@register_strategy
class PCEEStrategy(Strategy[PCEEConfig]):
    """PCEE-BERT: exit when normalised entropy < threshold for `patience` layers in a row.

    Trained like PABEE; the threshold is calibrated on held-out training rows. Example stage::

        - strategy: pcee
          patience: 2
          calibration: {target_layers: 3}
    """

    name = "pcee"
    kind = "dynamic"

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        return plan_exit_heads(self.name, self.config, shape, ctx)

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        cfg = self.config
        rule = {"name": "patience_confidence", "threshold": 0.0, "patience": cfg.patience}
        model, heldout, result = train_jointly(state, ctx, cfg, rule)
        candidates = [i / (cfg.thresholds - 1) for i in range(cfg.thresholds)]
        calibration = calibrate(model, heldout, state.tokenizer, "threshold", candidates, cfg.calibration)
        state.model, state.info = model, {"history": result.history, "calibration": calibration}
        return state

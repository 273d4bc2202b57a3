"""`pcee`: PCEE-BERT (Zhang et al., 2022): patient and confident early exit."""

from __future__ import annotations

from pydantic import Field

from compresskit.registry import register_strategy
from compresskit.training.early_exit import EarlyExitStrategy, JointExitConfig, fit_jointly


class PCEEConfig(JointExitConfig):
    """Recipe keys of a `pcee` stage (trained like `pabee`)."""
    patience: int = Field(1, ge=1, description="confident layers in a row needed to exit")
    thresholds: int = Field(40, ge=2, le=10_000, description="normalised-entropy thresholds tried, evenly in [0, 1]")


@register_strategy
class PCEEStrategy(EarlyExitStrategy[PCEEConfig]):
    """PCEE-BERT: exit when normalised entropy < threshold for `patience` layers in a row.

    Trained like PABEE; the threshold is calibrated on held-out training rows. Example stage::

        - strategy: pcee
          patience: 2
          calibration: {target_layers: 3}
    """

    name = "pcee"

    def rule(self):
        return {"name": "patience_confidence", "threshold": 0.0, "patience": self.config.patience}

    def fit(self, model, rows, state, ctx):
        return fit_jointly(self, model, rows, state, ctx)

    def candidates(self, model, state):
        return [i / (self.config.thresholds - 1) for i in range(self.config.thresholds)]

"""`pabee`: PABEE (Zhou et al., 2020) patience-based early exit."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from compresskit.registry import register_strategy
from compresskit.training.early_exit import EarlyExitStrategy, JointExitConfig, fit_jointly


class PABEEConfig(JointExitConfig):
    """Recipe keys of a `pabee` stage."""

    tolerance: float | None = Field(None, ge=0, description="regression only: how far the predicted value may "
                                    "move between layers and still count as unchanged (the paper's tau), in "
                                    "label units; null = a tenth of the training labels' standard deviation")


@register_strategy
class PABEEStrategy(EarlyExitStrategy[PABEEConfig]):
    """PABEE: exit when the prediction has not changed for `patience` consecutive layers.

    Trained on the layer-weighted sum of the exits' losses; patience calibrated on held-out
    training rows. On a regression, a prediction is unchanged when it moved by less than
    `tolerance` (the paper's regression form). Example stage::

        - strategy: pabee
          epochs: 2
          calibration: {max_accuracy_drop: 0.01}
    """

    name = "pabee"
    knob = "patience"
    regression_refusal = None

    def rule(self):
        return {"name": "patience", "patience": 1}

    def fit(self, model, rows, state, ctx):
        if state.task.is_regression:
            tolerance = self.config.tolerance
            if tolerance is None:
                tolerance = 0.1 * float(np.std(np.asarray(rows["labels"], dtype=np.float64)))
            model.exit_rule.tolerance = tolerance
            model.config.exit_rule = {**model.config.exit_rule, "tolerance": tolerance}
        return fit_jointly(self, model, rows, state, ctx)

    def candidates(self, model, state):
        return list(range(1, model.num_layers))

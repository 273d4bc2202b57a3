"""`pabee`: PABEE (Zhou et al., 2020) patience-based early exit."""

from __future__ import annotations

from compresskit.registry import register_strategy
from compresskit.training.early_exit import EarlyExitStrategy, JointExitConfig, fit_jointly


class PABEEConfig(JointExitConfig):
    """Recipe keys of a `pabee` stage."""


@register_strategy
class PABEEStrategy(EarlyExitStrategy[PABEEConfig]):
    """PABEE: exit when the prediction has not changed for `patience` consecutive layers.

    Trained on the layer-weighted sum of the exits' losses; patience calibrated on held-out
    training rows. Example stage::

        - strategy: pabee
          epochs: 2
          calibration: {max_accuracy_drop: 0.01}
    """

    name = "pabee"
    knob = "patience"

    def rule(self):
        return {"name": "patience", "patience": 1}

    def fit(self, model, rows, state, ctx):
        return fit_jointly(self, model, rows, state, ctx)

    def candidates(self, model, state):
        return list(range(1, model.num_layers))

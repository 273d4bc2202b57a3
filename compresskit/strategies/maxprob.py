"""`maxprob`: exit when the top class is probable enough (Schwartz et al., 2020, "The Right Tool for the Job")."""

from __future__ import annotations

from pydantic import Field

from compresskit.registry import register_strategy
from compresskit.training.early_exit import EarlyExitStrategy, JointExitConfig, fit_jointly


class MaxProbConfig(JointExitConfig):
    """Recipe keys of a `maxprob` stage: the joint training's, and the thresholds calibration tries."""

    thresholds: int = Field(40, ge=2, le=10_000, description="top-class probabilities tried, evenly in [1/labels, 1]")


@register_strategy
class MaxProbStrategy(EarlyExitStrategy[MaxProbConfig]):
    """Max-probability exit: backbone and exits trained together; exit when P(top class) > threshold.

    The threshold is calibrated on held-out training rows. Example stage::

        - strategy: maxprob
          epochs: 2
          calibration: {max_accuracy_drop: 0.01}
    """

    name = "maxprob"

    def rule(self):
        return {"name": "max_probability", "threshold": 1.0}  # calibrated below

    def fit(self, model, rows, state, ctx):
        return fit_jointly(self, model, rows, state, ctx)

    def candidates(self, model, state):
        low, n = 1 / state.task.num_labels, self.config.thresholds
        return [low + (1 - low) * i / (n - 1) for i in range(n)]

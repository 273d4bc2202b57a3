"""`deebert`: DeeBERT (Xin et al., 2020) entropy-based early exit, two-stage training."""

from __future__ import annotations

import math

from pydantic import Field

from compresskit.data.batches import model_inputs
from compresskit.registry import register_strategy
from compresskit.training.early_exit import EarlyExitStrategy, ExitStageConfig, layer_weighted_loss, train_exits


class DeeBERTConfig(ExitStageConfig):
    """Recipe keys of a `deebert` stage."""

    epochs: float = Field(2.0, gt=0, description="stage 2: exit heads only (backbone and final head frozen)")
    learning_rate: float = Field(5e-4, gt=0, description="of the exit heads (fresh, small modules)")
    thresholds: int = Field(40, ge=2, le=10_000, description="entropy thresholds tried, evenly from 0 to ln(labels)")


@register_strategy
class DeeBERTStrategy(EarlyExitStrategy[DeeBERTConfig]):
    """DeeBERT: exit heads trained on a frozen fine-tuned model; exit when entropy < threshold.

    Stage 1 is the incoming (fine-tuned) model. The threshold is calibrated on held-out training
    rows. Example stage::

        - strategy: deebert
          epochs: 2
          calibration: {target_layers: 3}
    """

    name = "deebert"

    def rule(self):
        return {"name": "entropy", "threshold": 0.0}

    def fit(self, model, rows, state, ctx):
        cfg = self.config
        model.requires_grad_(False)
        model.exit_heads.requires_grad_(True)
        history = train_exits(model, rows, state, ctx, cfg.epochs, cfg.learning_rate, cfg.batch_size, _exits_loss,
                              "exits", parameters=list(model.exit_heads.parameters()))
        model.requires_grad_(True)
        return model, {"history": history}

    def candidates(self, model, state):
        top = math.log(state.task.num_labels)
        return [top * i / (self.config.thresholds - 1) for i in range(self.config.thresholds)]


def _exits_loss(model, batch):
    out = model(**model_inputs(batch))
    return layer_weighted_loss(out, batch["labels"], "uniform", include_final=False)

"""`berxit`: BERxiT (Xin et al., 2021): a learned exit module and alternating fine-tuning."""

from __future__ import annotations

import torch
from pydantic import Field
from torch.nn import functional as F

from compresskit.data.batches import model_inputs
from compresskit.registry import register_strategy
from compresskit.training.early_exit import EarlyExitStrategy, ExitStageConfig, layer_weighted_loss, train_exits
from compresskit.training.trainer import unwrap


class BERxiTConfig(ExitStageConfig):
    """Recipe keys of a `berxit` stage."""

    epochs: int = Field(2, ge=2, description="alternating epochs: odd ones train the final head's loss, even "
                        "ones the exits' losses and the exit module")
    learning_rate: float = Field(2e-5, gt=0, description="of the backbone")
    exit_learning_rate: float = Field(5e-4, gt=0, description="of the exit heads and the exit module")
    thresholds: int = Field(40, ge=2, le=10_000, description="certainty thresholds tried, evenly in [0, 1]")


@register_strategy
class BERxiTStrategy(EarlyExitStrategy[BERxiTConfig]):
    """BERxiT: a shared learning-to-exit module predicts whether a layer's answer is right.

    Trained by alternating epochs (final loss / exits' losses + exit-module MSE to "this layer is
    right"); the exit threshold is calibrated on held-out training rows. Example stage::

        - strategy: berxit
          epochs: 4
          calibration: {target_layers: 3}
    """

    name = "berxit"
    regression_refusal = None

    def rule(self):
        return {"name": "learned", "threshold": 0.5}

    def fit(self, model, rows, state, ctx):
        cfg = self.config
        backbone = [p for n, p in model.named_parameters() if not n.startswith(("exit_heads.", "exit_rule."))]
        exits = list(model.exit_heads.parameters()) + list(model.exit_rule.parameters())
        history = []
        for epoch in range(cfg.epochs):
            final_phase = epoch % 2 == 0
            groups = [{"params": backbone}] + ([] if final_phase else [{"params": exits, "lr": cfg.exit_learning_rate}])
            history += train_exits(model, rows, state, ctx, 1, cfg.learning_rate, cfg.batch_size,
                                   _final_loss if final_phase else _exits_and_lte_loss,
                                   f"{'final' if final_phase else 'exits'} {epoch + 1}", parameters=groups,
                                   seed=ctx.seed + epoch)
        return model, {"history": history}

    def candidates(self, model, state):
        return [i / (self.config.thresholds - 1) for i in range(self.config.thresholds)]


def _final_loss(model, batch):
    return model(**model_inputs(batch, labels=True)).loss


def _exits_and_lte_loss(model, batch):
    out = model(**model_inputs(batch))
    rule = unwrap(model).exit_rule
    loss = layer_weighted_loss(out, batch["labels"], "uniform")
    layers = sorted(out.exit_logits)
    certainty = torch.stack([rule.certainty(out.exit_summaries[i]) for i in layers], 1)
    right = torch.stack([_certainty_target(out.exit_logits[i], batch["labels"]) for i in layers], 1)
    return loss + F.mse_loss(certainty, right)


def _certainty_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What the LTE module learns to predict of an exit: 1 if its class is right; on a regression
    (one output) 1 - tanh(|error|), BERxiT's regression form."""
    if logits.shape[-1] == 1:
        return 1 - torch.tanh((logits[:, 0] - labels.to(logits.dtype)).abs()).detach()
    return (logits.argmax(-1) == labels).float()

"""`structured_prune`: remove attention heads and FFN neurons with torch-pruning's dependency graph
(the machinery: compresskit/modeling/pruning.py). The result reloads with `from_pretrained` in a
fresh process. The hidden size is never pruned (residual streams couple every layer; the ratios
name heads/FFN).
"""

from __future__ import annotations

import itertools
import logging
from typing import Literal

from pydantic import Field, model_validator

from compresskit.data.batches import loader, model_inputs
from compresskit.evaluation.flops import count_parameters
from compresskit.modeling.backbones import adapter_for
from compresskit.modeling.pruning import PruneSettings, prune
from compresskit.registry import StageConfig, Strategy, register_strategy
from compresskit.stage import ModelShape, PipelineState, PlanContext, StageContext

log = logging.getLogger(__name__)


class StructuredPruneConfig(StageConfig):
    """Recipe keys of a `structured_prune` stage."""

    head_ratio: float = Field(0.5, ge=0, lt=1, description="share of attention heads to remove")
    ffn_ratio: float = Field(0.5, ge=0, lt=1, description="share of FFN neurons to remove")
    importance: Literal["magnitude", "taylor"] = Field("magnitude", description="channel importance "
                                                       "(torch-pruning's group magnitude or Taylor criterion)")
    scope: Literal["uniform", "global"] = Field("uniform", description="the same ratio in every layer, or one "
                                                "ranking across layers (widths may then differ per layer)")
    taylor_batches: int = Field(16, ge=1, description="training batches whose gradients Taylor importance uses")
    batch_size: int = Field(32, ge=1)
    round_ffn_to: int = Field(8, ge=1, description="keep FFN widths a multiple of this (fast matmuls)")

    @model_validator(mode="after")
    def _something(self) -> StructuredPruneConfig:
        if self.head_ratio == 0 and self.ffn_ratio == 0:
            raise ValueError("head_ratio and ffn_ratio are both 0: nothing to prune")
        return self


@register_strategy
class StructuredPruneStrategy(Strategy[StructuredPruneConfig]):
    """Prune attention heads and FFN neurons (torch-pruning dependency graph); config follows the weights.

    Follow it with a recovery `finetune` or `distill` stage. Example stage::

        - strategy: structured_prune
          head_ratio: 0.5
          ffn_ratio: 0.5
          importance: taylor
    """

    name = "structured_prune"
    kind = "static"

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        reason = adapter_for(shape.model_type).head_pruning
        if reason and self.config.head_ratio > 0:
            ctx.problem("head_ratio", reason)
        return shape

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        cfg = self.config
        before = count_parameters(state.model)
        data = loader(state.data["train"], state.tokenizer, cfg.batch_size, shuffle=True, seed=ctx.seed)
        batches = [model_inputs(b, labels=True)
                   for b in itertools.islice(data, cfg.taylor_batches)]
        state.model = prune(state.model, batches, PruneSettings(cfg.head_ratio, cfg.ffn_ratio, cfg.importance,
                                                                cfg.scope, cfg.round_ffn_to))
        after = count_parameters(state.model)
        state.info = {
            "parameters_before": before, "parameters_after": after,
            "layers": [{"heads": s["heads"], "intermediate_size": s["intermediate_size"]}
                       for s in state.model.config.layers],
        }
        log.info("%s: parameters %.1fM -> %.1fM", ctx.name, before / 1e6, after / 1e6)
        return state

"""`budgeted_exit`: the first k layers, fine-tuned (the budgeted-exit baseline)."""

from __future__ import annotations

from pydantic import Field

from compresskit.errors import CompressKitError
from compresskit.modeling.surgery import select_layers
from compresskit.registry import StageConfig, Strategy, register_strategy
from compresskit.stage import ModelShape, PipelineState, PlanContext, StageContext
from compresskit.training.trainer import TrainingConfig, train


class BudgetedExitConfig(StageConfig, TrainingConfig):
    """Recipe keys of a `budgeted_exit` stage: k and the fine-tuning settings."""

    k: int = Field(ge=1, description="layers every example uses (the first k)")


@register_strategy
class BudgetedExitStrategy(Strategy[BudgetedExitConfig]):
    """Budgeted exit: every example uses the first k layers; the truncated model is fine-tuned.

    Example stage::

        - strategy: budgeted_exit
          k: 3
          epochs: 2
    """

    name = "budgeted_exit"
    kind = "static"

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        if self.config.k > shape.num_layers:
            ctx.problem("k", f"k={self.config.k} exceeds the {shape.num_layers} layers of the model this stage "
                             "receives")
        return shape.with_layers(min(self.config.k, shape.num_layers))

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        cfg = self.config
        if cfg.k > state.model.num_layers:
            raise CompressKitError(f"stage {ctx.name!r}: k={cfg.k} but the model has {state.model.num_layers} layers")
        state.model = select_layers(state.model, list(range(cfg.k)))
        settings = TrainingConfig.of(cfg)
        result = train(state.model, state.data["train"], state.data[ctx.eval_split], state.task,
                       state.tokenizer, settings, ctx.seed, desc=ctx.name)
        state.info = {"history": result.history, "k": cfg.k}
        return state

"""`finetune`: train the whole model on the task (the teacher or baseline of later stages)."""

from __future__ import annotations

from compresskit.registry import StageConfig, Strategy, register_strategy
from compresskit.stage import PipelineState, StageContext
from compresskit.training.trainer import TrainingConfig, train


class FinetuneConfig(StageConfig, TrainingConfig):
    """A `finetune` stage: the training settings (see TrainingConfig) and nothing else."""


@register_strategy
class FinetuneStrategy(Strategy[FinetuneConfig]):
    """Fine-tune every weight of the model on the task with the task loss.

    Example stage::

        - strategy: finetune
          name: teacher
          epochs: 3
          learning_rate: 5.0e-5
          batch_size: 32
    """

    name = "finetune"
    kind = "training"

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        settings = TrainingConfig.of(self.config)
        result = train(state.model, state.data["train"], state.data[ctx.eval_split],
                       state.task, state.tokenizer, settings, seed=ctx.seed, desc=ctx.name)
        state.info = {"history": result.history, "seconds_per_epoch": result.seconds_per_epoch,
                      "best": result.best_metrics}
        return state

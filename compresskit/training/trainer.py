"""The one training loop every strategy uses, built on accelerate.

Seeded, dynamic padding, gradient accumulation, linear warm-up/decay, a tqdm bar showing the
loss, evaluation after every epoch and the best epoch's weights restored at the end. The same
code runs in one process or under `accelerate launch --num_processes N` (DDP; metrics gathered
across processes). Strategies change what is optimised through `loss_fn` and `parameters`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from compresskit.data.batches import loader, model_inputs
from compresskit.data.tasks import TaskSpec
from compresskit.errors import TrainingError
from compresskit.evaluation.evaluate import evaluate
from compresskit.training.precision import accelerate_name, current

log = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
# parameters to train: a flat list, or optimizer groups ({"params": [...], "lr": ...})
Parameters = Iterable[torch.nn.Parameter] | list[dict[str, Any]]


class TrainingConfig(BaseModel):
    """Optimisation settings shared by every training stage."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: float = Field(3.0, gt=0, description="passes over the training split (fractions allowed)")
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, ge=1, description="per process, before gradient accumulation")
    eval_batch_size: int = Field(64, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    keep_best: bool = Field(True, description="restore the epoch with the best validation metric")

    @classmethod
    def of(cls, config: BaseModel) -> TrainingConfig:
        """The training settings of a stage config that extends TrainingConfig."""
        return cls(**{name: getattr(config, name) for name in cls.model_fields})


@dataclass
class TrainResult:
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds_per_epoch: float = 0.0  # training only, evaluation excluded


def _param_groups(model: torch.nn.Module, parameters: Parameters | None, config: TrainingConfig
                  ) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and norms; per-group learning rates kept."""
    groups = [{"params": list(model.parameters())}] if parameters is None else list(parameters)
    if groups and isinstance(groups[0], torch.nn.Parameter):
        groups = [{"params": groups}]
    out = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        extra = {k: v for k, v in group.items() if k != "params"}
        out.append({**extra, "params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay})
        out.append({**extra, "params": [p for p in params if p.ndim < 2], "weight_decay": 0.0})
    return [g for g in out if g["params"]]


def require_finite(loss: torch.Tensor, where: str) -> None:
    """Stop a stage whose loss went NaN or infinite: what it trained is worthless, and nothing is kept."""
    if not torch.isfinite(loss.detach()).all():
        raise TrainingError(f"{where}: the loss is {loss.detach().float().sum().item()}; training has diverged. "
                            "Lower the learning rate (or check the data); nothing of this stage was kept")


def default_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**model_inputs(batch, labels=True)).loss


def train(
    model: torch.nn.Module,
    train_set: Any,
    eval_set: Any | None,
    task: TaskSpec,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainingConfig,
    seed: int = 42,
    loss_fn: LossFn = default_loss,
    parameters: Parameters | None = None,
    desc: str = "train",
    collate_fn: Callable[[list[dict]], dict] | None = None,
) -> TrainResult:
    """Train `model` in place; returns the per-epoch history and the best epoch's metrics."""
    set_seed(seed)
    # accelerate keeps one mixed-precision setting per process; stages may differ (`precision`)
    AcceleratorState._reset_state()
    accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                              cpu=not torch.cuda.is_available(), mixed_precision=accelerate_name(current()))
    optimizer = torch.optim.AdamW(_param_groups(model, parameters, config), lr=config.learning_rate)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    data = loader(train_set, tokenizer, config.batch_size, shuffle=True, seed=seed, collate_fn=collate_fn)
    # accelerate steps a prepared scheduler once per process per optimizer step, so the schedule
    # is laid out in single-process steps; the loop itself counts this process's steps.
    schedule_steps = max(1, int(len(data) // config.gradient_accumulation_steps * config.epochs))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * schedule_steps),
                                                schedule_steps)
    wrapped, optimizer, data, scheduler = accelerator.prepare(model, optimizer, data, scheduler)
    total_steps = max(1, int(len(data) // config.gradient_accumulation_steps * config.epochs))

    result, best_state, best_score = TrainResult(), None, None
    n_epochs = int(-(-config.epochs // 1))  # ceil: a fractional last epoch stops early
    step, train_seconds = 0, 0.0
    for epoch in range(n_epochs):
        started, loss_sum, loss_steps = time.perf_counter(), 0.0, 0
        wrapped.train()
        bar = tqdm(data, desc=f"{desc} epoch {epoch + 1}/{n_epochs}", disable=not accelerator.is_local_main_process)
        for batch in bar:
            with accelerator.accumulate(wrapped):
                with accelerator.autocast():  # a teacher's forward too; the model's outputs come back fp32
                    loss = loss_fn(wrapped, batch).float()
                require_finite(loss, f"{desc} epoch {epoch + 1}, step {step + 1}")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            loss_sum, loss_steps = loss_sum + loss.item(), loss_steps + 1
            if accelerator.sync_gradients:
                step += 1
                bar.set_postfix(loss=f"{loss_sum / loss_steps:.4f}")
            if step >= total_steps:
                break
        train_seconds += time.perf_counter() - started
        record: dict[str, float] = {"epoch": epoch + 1, "train_loss": loss_sum / max(loss_steps, 1)}
        if eval_set is not None:
            with _full_precision(accelerator.unwrap_model(wrapped)) as inner:
                metrics = evaluate(inner, eval_set, task, tokenizer, config.eval_batch_size, accelerator)
            record.update(metrics)
            score = metrics[task.main_metric]
            if math.isfinite(score) and (best_score is None or score > best_score):  # a NaN epoch is never best
                best_score, result.best_metrics = score, metrics
                if config.keep_best:
                    best_state = copy.deepcopy(accelerator.unwrap_model(wrapped).state_dict())
            log.info("%s epoch %d: %s", desc, epoch + 1, record)
        result.history.append(record)
        if step >= total_steps:
            break
    result.seconds_per_epoch = train_seconds / max(1, len(result.history))
    if best_state is not None:
        model.load_state_dict(best_state)
    # later stages run the model as it was: no autocast wrapper, nor accelerate's rebinding of forward
    accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False).__dict__.pop("forward", None)
    accelerator.free_memory()
    return result


@contextmanager
def _full_precision(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model without accelerate's autocast around its forward (mixed precision), for evaluation:
    reported metrics are fp32's whatever the training precision."""
    patched = model.__dict__.pop("forward", None)
    try:
        yield model
    finally:
        if patched is not None:
            model.forward = patched


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (loss functions receive the wrapped one)."""
    return getattr(model, "module", model)

"""`hadskip`: learned, budgeted layer skipping (Wang et al., 2023, "HadSkip").

A gate before every layer decides per example whether the layer runs. Three stages:
  I   the incoming model is the fine-tuned vanilla model f_v (or `finetune_epochs` trains it);
  II  everything but the gates is frozen; the gates learn from the task loss alone;
  III layers and gates train together with the budget penalty beta * (mean gate - s/L)^2 and
      distillation from f_v, over the homotopic schedule of budgets L, L-1, ..., s. With
      `teacher`, the predictions are learnt from that earlier stage's model instead (its logits
      computed once for the training rows), e.g. the large model a distilled f_v came from.
Choices the paper leaves open are documented in docs/strategies/hadskip.md.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import PartialState
from pydantic import Field, model_validator
from transformers import AutoTokenizer

from compresskit.data.batches import model_inputs
from compresskit.errors import CompressKitError
from compresskit.evaluation.usage import layer_usage, plot_layer_usage
from compresskit.goal import HELDOUT, GoalTarget
from compresskit.modeling.config import GateSpec
from compresskit.modeling.model import CompressedModelForSequenceClassification
from compresskit.modeling.surgery import with_gates
from compresskit.registry import StageConfig, Strategy, register_strategy
from compresskit.stage import ModelShape, PipelineState, PlanContext, StageContext
from compresskit.training.collate import TeacherStudentCollator
from compresskit.training.distillation import attention_mse, prediction_kl, token_mse
from compresskit.training.estimators import ESTIMATORS
from compresskit.training.teacher_labels import CACHE, teacher_labelled
from compresskit.training.trainer import TrainingConfig, train

log = logging.getLogger(__name__)


class HadSkipConfig(StageConfig):
    """Recipe keys of a `hadskip` stage. Defaults are the paper's where it gives one."""

    budget: float | None = Field(None, gt=0, description="average layers executed per example")
    budget_fraction: float | None = Field(None, gt=0, le=1, description="the budget as a fraction of L")
    gate_hidden_size: int = Field(64, ge=1, description="hidden width of each gate's FFN")
    gate_pooling: Literal["cls", "mean"] = Field("mean", description="what a gate reads of the previous layer "
                                                 "(a [CLS] state before layer 1 is the same for every input)")
    estimator: Literal["reinmax", "ste"] = Field("reinmax", description="gradient estimator of the binary gates")
    tau: float = Field(1.0, ge=1.0, description="ReinMax temperature (the paper's Algorithm 1: 1)")
    gate_forward: Literal["argmax", "sample"] = Field(
        "argmax", description="hard gate of the training forward pass: the argmax, as at inference "
        "(Algorithm 1's One_Hot(pi_0)), or a sample (the ReinMax reference)")
    beta: float = Field(1.0, ge=0, description="weight of the budget penalty")
    finetune_epochs: float = Field(0.0, ge=0, description="stage I: fine-tune first (0: the incoming model is)")
    gate_epochs: float = Field(1.0, ge=0, description="stage II epochs (0 skips stage II: the ablation)")
    gate_learning_rate: float = Field(1e-3, gt=0, description="learning rate of the gates (stages II and III)")
    homotopic: bool = Field(True, description="solve budgets L, L-1, ..., s in turn (False: s directly)")
    epochs_per_budget: float = Field(1.0, gt=0, description="stage III epochs for each budget of the schedule")
    learning_rate: float = Field(2e-5, gt=0, description="stage III learning rate of the layers")
    batch_size: int = Field(32, ge=1)
    distill: bool = Field(True, description="distil from the stage-I model in stage III")
    teacher: str | None = Field(None, description="earlier stage (or 'input') whose predictions stage III "
                                "learns, labelled once for the training rows; default: the stage-I model f_v "
                                "(the paper). Hidden, attention and embedding terms always compare with f_v")
    alpha_prediction: float = Field(1.0, ge=0)
    alpha_hidden: float = Field(1.0, ge=0)
    alpha_attention: float = Field(1.0, ge=0)
    alpha_embedding: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0, description="softening of the prediction KL")
    save_budgets: bool = Field(False, description="also save the model of every budget of the homotopy "
                               "(stage directory, budgets/s<k>): one run gives the whole trade-off")

    @model_validator(mode="after")
    def _one_budget(self) -> HadSkipConfig:
        if (self.budget is None) == (self.budget_fraction is None):
            raise ValueError("give exactly one of budget (layers) or budget_fraction (share of the layers)")
        if self.teacher is not None and not (self.distill and self.alpha_prediction > 0):
            raise ValueError("teacher is only read by prediction distillation: set distill: true and "
                             "alpha_prediction > 0, or drop teacher")
        return self


@register_strategy
class HadSkipStrategy(Strategy[HadSkipConfig]):
    """Learned per-example layer skipping under a layer budget (gates + ReinMax + homotopy + KD).

    Example stage::

        - strategy: hadskip
          budget: 3
          epochs_per_budget: 1
    """

    name = "hadskip"
    kind = "dynamic"
    goal_knob = "the budget: the homotopy descends while the goal holds and keeps the budget it asks for"

    def check(self, stage_names: list[str], index: int) -> list[tuple[str, str]]:
        teacher = self.config.teacher
        if teacher is not None and teacher not in ("input", *stage_names[:index]):
            return [("teacher", f"no earlier stage named {teacher!r}; earlier stages: {stage_names[:index]}")]
        return []

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        if self.config.budget is not None and self.config.budget > shape.num_layers:
            ctx.problem("budget", f"{self.config.budget:g} layers exceeds the {shape.num_layers} layers of the model "
                                  "this stage receives (or use budget_fraction)")
        return replace(shape, dynamic=True)

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        cfg = self.config
        eval_split = ctx.eval_split
        info: dict[str, Any] = {"history": {}}
        # every phase is checkpointed: a killed run resumes after the last finished phase
        phase = functools.partial(_resumable_phase, ctx.checkpoint_dir, info["history"])
        if cfg.finetune_epochs > 0:  # stage I
            phase("I", state.model, lambda: train(
                state.model, state.data["train"], state.data[eval_split], state.task, state.tokenizer,
                self._training(cfg.finetune_epochs, cfg.learning_rate, keep_best=True), ctx.seed,
                desc=f"{ctx.name} I").history)
        teacher = copy.deepcopy(state.model).eval().requires_grad_(False)
        layers = state.model.num_layers
        budget = cfg.budget if cfg.budget is not None else cfg.budget_fraction * layers
        if budget > layers:
            raise CompressKitError(f"stage {ctx.name!r}: budget {budget:g} exceeds the model's {layers} layers")
        model = gated(state.model, cfg)
        data = (state.data["train"], state.data[eval_split], state.task, state.tokenizer)

        if cfg.gate_epochs > 0:  # stage II: gates only, task loss only
            def stage2() -> list[dict]:
                model.requires_grad_(False)
                model.gates.requires_grad_(True)
                result = train(model, *data, self._training(cfg.gate_epochs, cfg.gate_learning_rate), ctx.seed,
                               parameters=list(model.gates.parameters()), desc=f"{ctx.name} II")
                model.requires_grad_(True)
                return result.history
            phase("II", model, stage2)

        if cfg.distill and (cfg.teacher is not None or not _compares_states(cfg)):
            # predictions are labelled once, not recomputed every step, and only when a stage-III
            # phase really trains (a resumed run may need none)
            train_rows = functools.cache(lambda: self._labelled(state, ctx, teacher))
            collate = TeacherStudentCollator(state.tokenizer)
        else:
            train_rows, collate = (lambda: state.data["train"]), None
        schedule = budget_schedule(layers, budget, cfg.homotopic)
        groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("gates.")]},
                  {"params": list(model.gates.parameters()), "lr": cfg.gate_learning_rate}]
        search = _BudgetSearch(ctx.goal, state) if ctx.goal is not None else None
        for k in schedule:  # stage III
            loss = functools.partial(stage3_loss, teacher=teacher if cfg.distill else None, target=k / layers,
                                     cfg=cfg)
            phase(f"III s={k:g}", model, lambda loss=loss, k=k: train(
                model, train_rows(), *data[1:], self._training(cfg.epochs_per_budget, cfg.learning_rate), ctx.seed,
                loss_fn=loss, parameters=groups, desc=f"{ctx.name} III s={k:g}", collate_fn=collate).history)
            if cfg.save_budgets and k != schedule[-1] and PartialState().is_main_process:
                model.save_pretrained(ctx.work_dir / "budgets" / f"s{k:g}")
                state.tokenizer.save_pretrained(ctx.work_dir / "budgets" / f"s{k:g}")
            if search is not None and not search.keep_going(model, k):
                break
        if search is not None:
            budget = search.settle(model)
            info["goal"] = {"candidates": search.points, "chosen": search.chosen}

        usage = layer_usage(model, state.data[eval_split], state.tokenizer)
        plot_layer_usage(usage, ctx.work_dir / "layer_usage.png", f"HadSkip, budget {budget:g} of {layers}")
        info.update(budget=budget, schedule=schedule, layer_usage=usage)
        log.info("%s: layers used per example %.2f (budget %g)", ctx.name,
                 sum(i * p for i, p in enumerate(usage["histogram"])), budget)
        state.model, state.info = model, info
        return state

    def _labelled(self, state: PipelineState, ctx: StageContext, f_v: torch.nn.Module):
        """The training rows with the predictions stage III learns: the `teacher` stage's, or f_v's."""
        cache = ctx.run_dir / CACHE
        if self.config.teacher is None:
            return teacher_labelled(state, f_v, state.tokenizer, cache)
        path = ctx.model_path(self.config.teacher)
        teacher = CompressedModelForSequenceClassification.from_pretrained(path)
        teacher = teacher.to(state.model.device).eval().requires_grad_(False)
        log.info("%s: stage III learns the predictions of %r", ctx.name, self.config.teacher)
        return teacher_labelled(state, teacher, AutoTokenizer.from_pretrained(path), cache)

    def _training(self, epochs: float, lr: float, keep_best: bool = False) -> TrainingConfig:
        # under a budget the best-accuracy epoch may miss the budget: keep the last one
        return TrainingConfig(epochs=epochs, learning_rate=lr, batch_size=self.config.batch_size,
                              keep_best=keep_best)


def _resumable_phase(checkpoint_dir: Path, history: dict[str, Any], name: str, model: torch.nn.Module,
                     run: Callable[[], list[dict]]) -> None:
    """Run one training phase, or load its result if an earlier (killed) run finished it."""
    path = checkpoint_dir / f"phase-{name.replace(' ', '_').replace('=', '')}.pt"
    if path.exists():
        try:
            saved = torch.load(path, weights_only=True)
            model.load_state_dict(saved["model"])
            history[name] = saved["history"]
            log.info("phase %s: resumed from %s", name, path)
            return
        except Exception as err:  # a damaged checkpoint of any kind: the phase runs again
            log.warning("phase %s: checkpoint %s is unreadable (%s); running the phase again", name, path, err)
    history[name] = run()
    if PartialState().is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "history": history[name]}, tmp)
        os.replace(tmp, path)  # whole or not at all


def gated(model: CompressedModelForSequenceClassification, cfg: HadSkipConfig
          ) -> CompressedModelForSequenceClassification:
    """The same model with a gate before every layer, trained through the configured estimator."""
    new = with_gates(model, GateSpec(hidden_size=cfg.gate_hidden_size, pooling=cfg.gate_pooling))
    new.gate_estimator = functools.partial(ESTIMATORS[cfg.estimator], tau=cfg.tau,
                                           stochastic=cfg.gate_forward == "sample")
    return new


def budget_schedule(layers: int, budget: float, homotopic: bool) -> list[float]:
    """L, L-1, ..., down to the budget (the paper's homotopy); just the budget without it."""
    if not homotopic:
        return [budget]
    steps = [float(k) for k in range(layers, math.ceil(budget) - 1, -1) if k > budget]
    return [*steps, budget]


def stage3_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], teacher: torch.nn.Module | None,
                target: float, cfg: HadSkipConfig) -> torch.Tensor:
    """Task loss + beta * (mean gate - s/L)^2 + the four distillation terms (paper, appendix B).

    A batch with `teacher_logits` (another stage's cached predictions) takes its prediction term from
    them; the other terms compare with `teacher` (f_v), which then runs only when one of them is on."""
    inputs = model_inputs(batch)
    cached = batch.get("teacher_logits")
    if cached is not None and not _compares_states(cfg):
        teacher = None  # nothing left to compare with f_v: spare its forward pass
    want_maps = teacher is not None and cfg.alpha_attention > 0
    out = model(**inputs, labels=batch["labels"], output_hidden_states=teacher is not None,
                output_attentions=want_maps)
    gates = torch.stack([out.gate_values[i] for i in sorted(out.gate_values)], 1)
    loss = out.loss + cfg.beta * (gates.mean() - target) ** 2
    if cached is not None:
        loss = loss + cfg.alpha_prediction * prediction_kl(out.logits, cached.to(out.logits), cfg.temperature)
    if teacher is None:
        return loss
    with torch.no_grad():
        ref = teacher(**inputs, output_hidden_states=True, output_attentions=want_maps, dynamic=False)
    mask = inputs["attention_mask"]
    layers = range(1, len(out.hidden_states))
    if cached is None:
        loss = loss + cfg.alpha_prediction * prediction_kl(out.logits, ref.logits, cfg.temperature)
    loss = loss + cfg.alpha_hidden * sum(token_mse(out.hidden_states[i], ref.hidden_states[i], mask)
                                         for i in layers) / len(layers)
    loss = loss + cfg.alpha_embedding * token_mse(out.hidden_states[0], ref.hidden_states[0], mask)
    if want_maps:
        loss = loss + cfg.alpha_attention * sum(attention_mse(s, t, mask) for s, t in
                                                zip(out.attentions, ref.attentions, strict=True)) / len(layers)
    return loss


def _compares_states(cfg: HadSkipConfig) -> bool:
    """Whether stage III compares hidden states, attention or embeddings with f_v (needs its forward pass)."""
    return bool(cfg.alpha_hidden or cfg.alpha_embedding or cfg.alpha_attention)


class _BudgetSearch:
    """The recipe's goal over the homotopy: each budget's model is scored (and timed) on the held-out
    rows as it finishes; the descent stops once a budget falls below the accuracy bound (lower ones
    would too) or, for a speed-only goal, once one is fast enough (the most accurate that is)."""

    def __init__(self, goal: GoalTarget, state: PipelineState):
        self.goal, self.state = goal, state
        self.points: list[dict[str, Any]] = []
        self.kept: dict[float, dict[str, torch.Tensor]] = {}
        self.chosen: dict[str, Any] | None = None

    def keep_going(self, model: torch.nn.Module, budget: float) -> bool:
        point = {"budget": budget, **self.goal.measure(model, self.state.data[HELDOUT], self.state.tokenizer)}
        self.points.append(point)
        log.info("goal: budget %g scores %s", budget, point)
        floor = self.goal.floor
        if floor is not None and point[self.goal.metric] < floor:
            return False
        if self.goal.meets(point):
            self.kept[budget] = {n: t.detach().clone() for n, t in model.state_dict().items()}
            return floor is not None  # within the accuracy bound a lower budget may be faster still
        return True

    def settle(self, model: torch.nn.Module) -> float:
        """Load the chosen budget's weights (raises, naming the best point, when none meets the goal)."""
        self.chosen = self.goal.choose(self.points, "budget of the homotopy")
        budget = self.chosen["budget"]
        if budget != self.points[-1]["budget"]:
            model.load_state_dict(self.kept[budget])
        log.info("goal: keeping budget %g (%s)", budget, self.goal.config.describe())
        return budget

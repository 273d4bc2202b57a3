"""`distill`: TinyBERT task-specific distillation (Jiao et al., 2020).

Phase 1 (intermediate layers): the student's embedding output, hidden states and raw attention
scores learn the teacher's (MSE; a learned projection when the hidden sizes differ; each student
layer mapped to a teacher layer, uniformly by default). Phase 2 (prediction): soft cross-entropy
to the teacher's logits at temperature T, optionally mixed with the hard-label loss.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
import torch
from pydantic import Field, model_validator
from torch.nn import functional as F

from compresskit.data.batches import model_inputs
from compresskit.data.loading import tokenize
from compresskit.errors import CompressKitError
from compresskit.modeling.loading import load_model
from compresskit.modeling.model import CompressedModelForSequenceClassification
from compresskit.modeling.surgery import select_layers
from compresskit.registry import StageConfig, Strategy, register_strategy
from compresskit.stage import ModelShape, PipelineState, PlanContext, StageContext
from compresskit.training.augment import WordNeighbours, augment_dataset
from compresskit.training.collate import TEACHER_PREFIX, TeacherStudentCollator
from compresskit.training.distillation import attention_mse, soft_cross_entropy, token_mse
from compresskit.training.teacher_labels import (
    CACHE,
    same_tokenizer,
    teacher_inputs,
    with_teacher_ids,
    with_teacher_logits,
)
from compresskit.training.trainer import TrainingConfig, train, unwrap

log = logging.getLogger(__name__)


class DistillConfig(StageConfig):
    """Recipe keys of a `distill` stage."""

    teacher: str | None = Field(None, description="stage (or 'input') whose model teaches; default: the "
                                "model the previous stage left")
    student: str | None = Field(None, description="student model (packaged name, directory, hub name); "
                                "with neither this nor student_layers the incoming model is the student "
                                "(recovery after pruning, `teacher` then names an earlier stage)")
    student_layers: list[int] | None = Field(None, description="or: a student made of these teacher layers "
                                             "(0-based)")
    layer_map: list[int] | None = Field(None, description="teacher layer (1-based) each student layer learns "
                                        "from; default uniform (student i -> teacher i * L_t / L_s)")
    intermediate_epochs: float = Field(3.0, ge=0, description="phase 1 epochs (0: prediction-only distillation)")
    prediction_epochs: float = Field(3.0, ge=0, description="phase 2 epochs")
    intermediate_learning_rate: float = Field(5e-5, gt=0)
    learning_rate: float = Field(3e-5, gt=0, description="phase 2 learning rate")
    batch_size: int = Field(32, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    alpha_embedding: float = Field(1.0, ge=0)
    alpha_hidden: float = Field(1.0, ge=0)
    alpha_attention: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0, description="softening of the prediction loss")
    hard_label_weight: float = Field(0.0, ge=0, le=1, description="share of the hard-label loss in phase 2 "
                                     "(augmented copies keep their source's label)")
    augment_copies: int = Field(0, ge=0, description="TinyBERT data augmentation: altered copies of each training "
                                "example, labelled by the teacher (the paper uses 20; 0: off)")
    augment_replace_prob: float = Field(0.4, gt=0, le=1, description="chance that a word of a copy is replaced")
    augment_neighbours: int = Field(15, ge=1, description="a word is replaced by one of its this many nearest "
                                    "words (cosine of the student's input embeddings)")

    @model_validator(mode="after")
    def _one_student(self) -> DistillConfig:
        if self.student is not None and self.student_layers is not None:
            raise ValueError("give one of student (a model) or student_layers (layers of the teacher), not both")
        if self.student is None and self.student_layers is None and self.teacher is None:
            raise ValueError("give student (a model), student_layers (layers of the teacher), or teacher (an "
                             "earlier stage that teaches the incoming model, e.g. to recover after pruning)")
        if self.intermediate_epochs == 0 and self.prediction_epochs == 0:
            raise ValueError("intermediate_epochs and prediction_epochs are both 0: nothing to train")
        return self


@register_strategy
class DistillStrategy(Strategy[DistillConfig]):
    """TinyBERT distillation: intermediate-layer then prediction distillation into a smaller student.

    Example stage::

        - strategy: distill
          student: minilm-l6
          intermediate_epochs: 2
          prediction_epochs: 2
    """

    name = "distill"
    kind = "static"

    def check(self, stage_names: list[str], index: int) -> list[tuple[str, str]]:
        teacher = self.config.teacher
        if teacher is not None and teacher not in ("input", *stage_names[:index]):
            return [("teacher", f"no earlier stage named {teacher!r}; earlier stages: {stage_names[:index]}")]
        return []

    def reads(self) -> list[str]:
        return [self.config.student] if self.config.student is not None else []

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        cfg = self.config
        teacher = ctx.shapes.get(cfg.teacher, shape) if cfg.teacher is not None else shape
        student: ModelShape | None = shape
        if cfg.student is not None:
            student = ctx.read_shape(cfg.student, "student")
        elif cfg.student_layers is not None:
            bad = [i for i in cfg.student_layers if not 0 <= i < teacher.num_layers]
            if bad:
                ctx.problem("student_layers", f"{bad}: the teacher has layers 0..{teacher.num_layers - 1}")
            elif len(set(cfg.student_layers)) != len(cfg.student_layers) or not cfg.student_layers:
                ctx.problem("student_layers", f"{cfg.student_layers}: give distinct teacher layers, at least one")
            student = teacher.with_layers(len(cfg.student_layers))
        if student is None:
            return shape  # the student could not be read: that problem is reported already
        if cfg.layer_map is not None and (len(cfg.layer_map) != student.num_layers
                                          or not all(1 <= t <= teacher.num_layers for t in cfg.layer_map)):
            ctx.problem("layer_map", f"{cfg.layer_map}: need one teacher layer (1..{teacher.num_layers}) for each "
                                     f"of the student's {student.num_layers} layers")
        if cfg.intermediate_epochs > 0 and cfg.alpha_attention > 0 and student.num_heads != teacher.num_heads:
            ctx.problem("alpha_attention", f"attention distillation compares head by head, but the student has "
                                           f"{student.num_heads} heads and the teacher {teacher.num_heads}; set "
                                           "alpha_attention: 0")
        return student

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        cfg = self.config
        teacher = state.model if cfg.teacher is None else ctx.load_model(cfg.teacher)
        teacher_tokenizer = state.tokenizer if cfg.teacher is None else _tokenizer(ctx.model_path(cfg.teacher))
        device = state.model.device  # the pipeline's: a model loaded here starts on the host
        teacher = teacher.to(device).eval().requires_grad_(False)
        if cfg.student is not None:
            student, student_tokenizer = load_model(cfg.student, state.task, seed=ctx.seed)
        elif cfg.student_layers is not None:
            student, student_tokenizer = select_layers(teacher, cfg.student_layers), teacher_tokenizer
            student.requires_grad_(True)
        else:  # recovery: the model the previous stage left learns from an earlier one
            student, student_tokenizer = state.model, state.tokenizer
        student.to(device)
        layer_map = self._layer_map(student.num_layers, teacher.num_layers)
        student_state = PipelineState(model=student, tokenizer=student_tokenizer, task=state.task, raw=state.raw,
                                      max_length=state.max_length)
        shared_ids = same_tokenizer(teacher_tokenizer, student_tokenizer)
        raw_train, train_set = state.raw["train"], student_state.data["train"]
        if cfg.augment_copies:
            neighbours = WordNeighbours(student_tokenizer, student.backbone.get_input_embeddings().weight,
                                        cfg.augment_neighbours)
            raw_train = augment_dataset(raw_train, neighbours, cfg.augment_copies, cfg.augment_replace_prob, ctx.seed)
            train_set = tokenize(datasets.DatasetDict(train=raw_train), student_tokenizer, state.max_length)["train"]
        if not shared_ids:
            train_set = with_teacher_ids(train_set, raw_train, teacher_tokenizer, state.max_length)
        collate = TeacherStudentCollator(student_tokenizer, None if shared_ids else teacher_tokenizer)
        eval_set = student_state.data[ctx.eval_split]
        info: dict[str, Any] = {"layer_map": layer_map, "teacher_layers": teacher.num_layers,
                                "student_layers": student.num_layers, "train_rows": len(train_set), "history": {}}

        if cfg.intermediate_epochs > 0:
            if not shared_ids:
                _require_alignment(train_set)
            if cfg.alpha_attention > 0:
                _require_equal_heads(student, teacher)
            self._intermediate(student, teacher, layer_map, train_set, eval_set, student_state, ctx, collate, info)
        if cfg.prediction_epochs > 0:
            train_set = with_teacher_logits(train_set, teacher, student_tokenizer, collate, ctx.run_dir / CACHE)
            loss = _PredictionLoss(cfg.temperature, cfg.hard_label_weight, state.task.is_regression)
            result = train(student, train_set, eval_set, state.task, student_tokenizer,
                           self._training(cfg.prediction_epochs, cfg.learning_rate), ctx.seed, loss_fn=loss,
                           desc=f"{ctx.name} prediction", collate_fn=collate)
            info["history"]["prediction"] = result.history
        return PipelineState(model=student, tokenizer=student_tokenizer, task=state.task, raw=state.raw,
                             max_length=state.max_length, info=info)

    def _intermediate(self, student, teacher, layer_map, train_set, eval_set, student_state, ctx, collate, info):
        cfg = self.config
        s_hidden, t_hidden = student.config.backbone["hidden_size"], teacher.config.backbone["hidden_size"]
        # attached to the student while it trains, so accelerate/DDP treat it as one of its parameters
        student.distill_projection = (torch.nn.Linear(s_hidden, t_hidden) if s_hidden != t_hidden
                                      else torch.nn.Identity())
        loss = _IntermediateLoss(teacher, layer_map, cfg)
        try:
            result = train(student, train_set, None, student_state.task, student_state.tokenizer,
                           self._training(cfg.intermediate_epochs, cfg.intermediate_learning_rate), ctx.seed,
                           loss_fn=loss, desc=f"{ctx.name} intermediate", collate_fn=collate)
        finally:
            del student.distill_projection
        info["history"]["intermediate"] = result.history

    def _layer_map(self, student_layers: int, teacher_layers: int) -> list[int]:
        layer_map = self.config.layer_map
        if layer_map is None:
            return [round((i + 1) * teacher_layers / student_layers) for i in range(student_layers)]
        if len(layer_map) != student_layers or not all(1 <= t <= teacher_layers for t in layer_map):
            raise CompressKitError(f"layer_map {layer_map}: need one teacher layer (1..{teacher_layers}) for each "
                                   f"of the student's {student_layers} layers")
        return list(layer_map)

    def _training(self, epochs: float, lr: float) -> TrainingConfig:
        cfg = self.config
        return TrainingConfig(epochs=epochs, learning_rate=lr, batch_size=cfg.batch_size,
                              warmup_ratio=cfg.warmup_ratio)


class _IntermediateLoss:
    """Embedding + mapped hidden-state + mapped attention-score MSE (TinyBERT sums over layers)."""

    def __init__(self, teacher: CompressedModelForSequenceClassification, layer_map: list[int], cfg: DistillConfig):
        self.teacher, self.layer_map, self.cfg = teacher, layer_map, cfg

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg, scores = self.cfg, self.cfg.alpha_attention > 0
        inputs = model_inputs(batch)
        out = model(**inputs, output_hidden_states=True, output_attention_scores=scores)
        with torch.no_grad():
            # dynamic=False: a gated or early-exit teacher still yields every layer's states (full pass)
            ref = self.teacher(**teacher_inputs(batch), output_hidden_states=True, output_attention_scores=scores,
                               dynamic=False)
        project = unwrap(model).distill_projection
        mask = inputs["attention_mask"]
        loss = cfg.alpha_embedding * token_mse(project(out.hidden_states[0]), ref.hidden_states[0], mask)
        for i, t in enumerate(self.layer_map):
            loss = loss + cfg.alpha_hidden * token_mse(project(out.hidden_states[i + 1]), ref.hidden_states[t], mask)
            if scores:
                loss = loss + cfg.alpha_attention * attention_mse(out.attention_scores[i], ref.attention_scores[t - 1],
                                                                  mask, average_heads=False)
        return loss


class _PredictionLoss:
    """Soft cross-entropy to the teacher's (cached) logits, mixed with the hard-label loss."""

    def __init__(self, temperature: float, hard_weight: float, regression: bool):
        self.t, self.hard, self.regression = temperature, hard_weight, regression

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(**model_inputs(batch), labels=batch["labels"])
        target = batch["teacher_logits"]
        if self.regression:
            soft = F.mse_loss(out.logits, target)
        else:
            soft = soft_cross_entropy(out.logits / self.t, F.softmax(target / self.t, -1))
        return (1 - self.hard) * soft + self.hard * out.loss


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _require_alignment(train_set: datasets.Dataset) -> None:
    """Intermediate losses compare position by position: both sequences must have one length."""
    student, teacher = train_set["input_ids"], train_set[f"{TEACHER_PREFIX}input_ids"]
    bad = sum(len(s) != len(t) for s, t in zip(student, teacher, strict=True))
    if bad:
        raise CompressKitError(
            f"the teacher's and the student's tokenizers give different lengths for {bad} of {len(student)} "
            "training examples, so hidden states and attention cannot be compared position by position "
            "(e.g. MPNet adds a separator to sentence pairs). Use prediction-only distillation: "
            "intermediate_epochs: 0"
        )


def _require_equal_heads(student, teacher) -> None:
    s_heads = {len(spec.heads) for spec in student.config.layer_specs()}
    t_heads = {len(spec.heads) for spec in teacher.config.layer_specs()}
    if len(s_heads | t_heads) != 1:
        raise CompressKitError(f"attention distillation compares head by head, but the student has {s_heads} heads "
                               f"per layer and the teacher {t_heads}: set alpha_attention: 0")

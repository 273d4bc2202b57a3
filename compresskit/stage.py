"""What a stage receives and may use; imports nothing of the runner.

`PipelineState` is what flows from stage to stage, `StageContext` what a stage may use besides
(where to write, its seed, the models of earlier stages, the evaluation split). Before anything
runs, validation hands each stage's `plan` a `ModelShape` (what is known of the model it will
receive, from configs alone) and a `PlanContext`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from compresskit.data.loading import tokenize
from compresskit.data.tasks import TaskSpec
from compresskit.errors import CompressKitError
from compresskit.goal import GoalTarget
from compresskit.modeling.model import CompressedModelForSequenceClassification


@dataclass
class PipelineState:
    """What flows from stage to stage."""

    model: CompressedModelForSequenceClassification
    tokenizer: PreTrainedTokenizerBase
    task: TaskSpec
    raw: datasets.DatasetDict  # text splits; tokenized on demand for the current tokenizer
    max_length: int
    info: dict[str, Any] = field(default_factory=dict)  # what the last stage wants reported
    _encoded: dict[str, datasets.DatasetDict] = field(default_factory=dict, repr=False)

    @property
    def data(self) -> datasets.DatasetDict:
        key = f"{self.tokenizer.name_or_path}:{len(self.tokenizer)}:{self.max_length}"
        if key not in self._encoded:
            self._encoded[key] = tokenize(self.raw, self.tokenizer, self.max_length)
        return self._encoded[key]


@dataclass
class StageContext:
    """What a stage may use besides the state: where to write, the seed, earlier stages."""

    index: int
    name: str
    seed: int
    run_dir: Path
    work_dir: Path  # extra artifacts of this stage; kept when the stage finishes
    checkpoint_dir: Path  # a long stage's own progress; survives a kill, removed when the stage finishes
    stage_dirs: dict[str, Path]  # finished earlier stages by name, plus "input"
    eval_split: str  # the split every stage is evaluated on (a stage may select its best epoch on it)
    goal: GoalTarget | None = None  # the recipe's goal with the baseline's held-out numbers (compresskit.goal)

    def model_path(self, stage: str) -> Path:
        if stage not in self.stage_dirs:
            raise CompressKitError(f"stage {self.name!r} asks for the model of {stage!r}, which has not run")
        return self.stage_dirs[stage]

    def load_model(self, stage: str) -> CompressedModelForSequenceClassification:
        return CompressedModelForSequenceClassification.from_pretrained(self.model_path(stage))


@dataclass(frozen=True)
class ModelShape:
    """What validation knows of the model a stage receives, read from configs (never weights)."""

    model_type: str  # the backbone's (bert, roberta, mpnet, ...)
    num_layers: int
    num_heads: int
    hidden_size: int
    dynamic: bool = False  # gates or exit heads

    def with_layers(self, num_layers: int) -> ModelShape:
        return replace(self, num_layers=num_layers)


@dataclass
class PlanContext:
    """What `Strategy.plan` may use: the task, the shapes of earlier stages' models, a way to read another
    model's shape (a student), and where to put problems."""

    task: TaskSpec
    shapes: dict[str, ModelShape]  # earlier stages by name, and "input"
    read_shape: Callable[[str, str], ModelShape | None]  # (model name, field) -> shape; None after a problem
    problems: list[tuple[str, str]] = field(default_factory=list)

    def problem(self, where: str, message: str) -> None:
        self.problems.append((where, message))

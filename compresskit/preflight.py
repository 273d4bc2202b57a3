"""Checks that read the task's files and the models' configs (never weights) before anything runs.

The schema (recipe.py) knows the shape of a recipe; these checks know what it points at: every
data file and column exists, every label is one the task declares, every split asked for exists,
the model is a safetensors directory of a supported architecture, and every number that refers to
the model (a layer index, a budget, a layer count) fits the model each stage will really receive
(`Strategy.plan` carries the shape from stage to stage). `validate` runs them after the schema and
`apply` before the first stage, so a recipe that passes `validate` does not fail later on them.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoConfig

from compresskit.data.loading import check_split_names, load_splits, resolve_task
from compresskit.data.tasks import TaskSpec
from compresskit.errors import CompressKitError, RecipeError
from compresskit.modeling.backbones import adapter_for
from compresskit.modeling.config import CompressedConfig
from compresskit.modeling.loading import check_model_directory, resolve_model_path
from compresskit.recipe import ResolvedRecipe
from compresskit.stage import ModelShape, PlanContext
from compresskit.training import precision

log = logging.getLogger(__name__)


def read_config(name: str) -> Any:
    """The config of a model (packaged name, directory or hub id), after the safetensors check."""
    path = resolve_model_path(name)
    check_model_directory(name, path)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise CompressKitError(f"model {name!r}: its config could not be read ({str(err).splitlines()[0]}); a hub "
                               "name needs a network") from None


def shape_of(config: Any) -> ModelShape:
    if config.model_type == CompressedConfig.model_type:
        backbone = config.backbone
        return ModelShape(model_type=backbone["model_type"], num_layers=len(config.layers),
                          num_heads=backbone["num_attention_heads"], hidden_size=backbone["hidden_size"],
                          dynamic=config.gate is not None or config.exit_rule is not None)
    adapter_for(config.model_type)  # an unsupported architecture: an error naming the supported ones
    return ModelShape(model_type=config.model_type, num_layers=config.num_hidden_layers,
                      num_heads=config.num_attention_heads, hidden_size=config.hidden_size)


def _head_problem(name: str, config: Any, task: TaskSpec) -> str | None:
    has_head = config.model_type == CompressedConfig.model_type or any(
        a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if has_head and config.num_labels != task.num_labels:
        return (f"model {name!r} has a {config.num_labels}-label head but task {task.name!r} has {task.num_labels} "
                "labels; start from the encoder without a head or a matching model")
    return None


def check_inputs(resolved: ResolvedRecipe, source: str | None = None) -> list[tuple[str, ModelShape]]:
    """Raise RecipeError with every problem found; return each stage's planned model shape."""
    recipe = resolved.recipe
    problems: list[tuple[str, str]] = []
    task = resolve_task(recipe.task)
    wanted = {"train": "task", recipe.evaluation.split: "evaluation.split"}
    wanted.update({s: "evaluation.final_splits" for s in recipe.evaluation.final_splits if s not in wanted})
    for split, setting in wanted.items():  # one at a time, so that every broken split is reported
        try:
            check_split_names(task, [split])
        except CompressKitError as err:
            problems.append((setting, str(err)))
            continue
        try:
            load_splits(task, [split])
        except CompressKitError as err:
            name = task.splits.get(split, split)
            problems.append((f"task.data_files.{name}" if task.source == "files" else "task", str(err)))
    shapes: dict[str, ModelShape] = {}

    def read_shape(name: str, where: str) -> ModelShape | None:
        try:
            config = read_config(name)
            head = _head_problem(name, config, task)
            if head:
                problems.append((where, head))
            return shape_of(config)
        except CompressKitError as err:
            problems.append((where, str(err)))
            return None

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # what training will run on
    for where, requested in [("precision", recipe.precision)] + [
            (f"stages[{i}].precision", stage.precision) for i, stage in enumerate(resolved.stages) if stage.precision]:
        reason = precision.problem(requested, device)
        if reason:
            problems.append((where, reason))
    shape = read_shape(recipe.model, "model")
    planned: list[tuple[str, ModelShape]] = []
    if shape is not None:
        shapes["input"] = shape
        for i, stage in enumerate(resolved.stages):
            ctx = PlanContext(task=task, shapes=dict(shapes), read_shape=lambda n, f, i=i: read_shape(
                n, f"stages[{i}].{f}"))
            shape = resolved.strategy(i).plan(shape, ctx)
            problems += [(f"stages[{i}].{f}" if f else f"stages[{i}]", m) for f, m in ctx.problems]
            shapes[stage.name] = shape
            planned.append((stage.name, shape))
    if problems:
        raise RecipeError(problems, source)
    return planned

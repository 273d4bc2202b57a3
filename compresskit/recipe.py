"""Recipes: YAML in, a validated pipeline description out, every error with its location.

A recipe is validated whole before any stage runs: the top level against `Recipe`, each stage
against its strategy's config, then each strategy's cross-stage checks. All problems are
collected and raised together as one `RecipeError` (`stages[2].budget: ...`).
"""

from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compresskit.data.tasks import KNOWN_TASKS, TaskSpec
from compresskit.errors import RecipeError
from compresskit.goal import GoalConfig
from compresskit.registry import StageConfig, Strategy, strategies, unknown_strategy_message
from compresskit.report.baselines import ReportConfig
from compresskit.training.precision import Precision
from compresskit.yamlfile import load_yaml, parse_yaml

RECIPE_VERSION = 1
# names become directory names: no separators, no leading dot (never `.` or `..`), no spaces
SAFE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"
SAFE_NAME_HINT = "letters, digits, '_', '.', '-', not starting with '.' or '-', at most 100 characters"
MAX_SEED = 2**32 - 1  # numpy's seed range


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_length: int = Field(128, ge=8, le=4096, description="tokens per example (longer are truncated)")
    max_train_samples: int | None = Field(None, ge=1, description="shrink the train split (quick runs)")
    max_eval_samples: int | None = Field(None, ge=1, description="shrink every evaluation split")
    group_by_length: bool = Field(False, description="train on batches of rows of similar length (shuffled): "
                                  "less padding, faster steps on short texts")


class EvaluationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    split: str = Field("validation", description="split evaluated after every stage")
    final_splits: list[str] = Field(default_factory=lambda: ["test"],
                                    description="extra splits evaluated for the baseline and final model")
    batch_size: int = Field(64, ge=1)
    flops_examples: int = Field(128, ge=1, description="examples whose executed FLOPs are counted")
    latency_examples: int = Field(64, ge=0, description="examples of the evaluation split timed at batch 1 and "
                                  "32 on each final artifact (the model, its export), for report.json's `latency` "
                                  "and the model cards; 0 = not timed")


class Recipe(BaseModel):
    """The top level of a recipe file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    version: Literal[1] = Field(description="recipe format version")
    name: str = Field(pattern=SAFE_NAME, description=f"names the default run directory runs/NAME ({SAFE_NAME_HINT})")
    seed: int = Field(42, ge=0, le=MAX_SEED)
    model: str = Field(description="packaged model name, local directory or hub name")
    task: str | TaskSpec = Field(description="known task name, or a task mapping")
    data: DataConfig = Field(default_factory=DataConfig)
    precision: Precision = Field("fp32", description="training precision of every stage: fp32, bf16, fp16 (GPU) "
                                 "or auto (bf16 where the device multiplies it natively: AVX512-BF16/AMX CPUs, "
                                 "bf16 GPUs; fp32 elsewhere). Evaluation and export stay fp32")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    baseline: str | None = Field(
        None, description="stage whose model is the reference in the report ('input' = the recipe's "
        "model); default: the first stage"
    )
    goal: GoalConfig | None = Field(None, description="what the result must reach (accuracy kept, speed "
                                    "gained), met on held-out training rows by every stage with a trade-off knob")
    report: ReportConfig = Field(default_factory=ReportConfig, description="what the report adds: the trivial "
                                 "routes (first_k, smaller_model) trained and measured beside the result")
    stages: list[dict[str, Any]] = Field(min_length=1)


class ResolvedRecipe(BaseModel):
    """A validated recipe with each stage's config object and strategy class."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    recipe: Recipe
    stages: list[StageConfig]

    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def strategy(self, index: int) -> Strategy:
        return strategies()[self.stages[index].strategy](self.stages[index])

    def to_dict(self) -> dict[str, Any]:
        data = self.recipe.model_dump(mode="json", exclude={"stages"})
        data["stages"] = [s.model_dump(mode="json") for s in self.stages]
        return data


def location(loc: tuple[Any, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pydantic_problems(err: ValidationError, root: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        loc, branch = _clean_location(root, e["loc"])
        if branch == "str" and e["type"] == "string_type":
            continue  # the other branch of `str | mapping`: that branch's errors say what is wrong
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and loc:
            msg = "unknown key"
            model = _model_at(root, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1) if model else []
            if close:
                msg += f"; did you mean {close[0]!r}?"
        if e["type"] == "string_pattern_mismatch" and loc and loc[-1] == "name":
            msg = f"unsafe name {e['input']!r} (it becomes a directory name): use {SAFE_NAME_HINT}"
        problems.append((location(loc, prefix), msg))
    return problems


def _clean_location(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], str | None]:
    """Drop pydantic's union-branch tags (`task.TaskSpec.x` -> `task.x`); return the branch too."""
    out: list[Any] = []
    model: type[BaseModel] | None = root
    branch, i = None, 0
    while i < len(loc):
        part = loc[i]
        out.append(part)
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        model = None
        if field is not None:
            # `X | None` is nullable, not a union: pydantic names no branch for it
            options = tuple(a for a in get_args(field.annotation) if a is not type(None))
            if len(options) > 1 and i + 1 < len(loc):  # a union: pydantic names the branch next
                branch = str(loc[i + 1])
                i += 1
            nested = [a for a in options or (field.annotation,) if isinstance(a, type) and issubclass(a, BaseModel)]
            model = nested[0] if nested else None
        i += 1
    return tuple(out), branch


def _model_at(root: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `path` (to suggest its keys)."""
    model = root
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        options = get_args(field.annotation) or (field.annotation,)
        nested = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def validate_recipe(raw: Any, source: str | None = None) -> ResolvedRecipe:
    """Validate a parsed recipe; raises RecipeError listing every problem with its location."""
    if not isinstance(raw, dict):
        raise RecipeError([("", f"a recipe is a mapping at the top level, got {type(raw).__name__}")], source)
    problems: list[tuple[str, str]] = _huge_numbers(raw)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        problems += _pydantic_problems(err, Recipe)
        recipe = None
    raw_stages = raw.get("stages")
    stages: list[StageConfig] = []
    if isinstance(raw_stages, list):
        stages, stage_problems = _validate_stages(raw_stages)
        problems += [p for p in stage_problems if p not in problems]
    if isinstance(raw.get("task"), str) and raw["task"] not in KNOWN_TASKS:
        close = difflib.get_close_matches(raw["task"], list(KNOWN_TASKS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        problems.append(("task", f"unknown task {raw['task']!r}; {hint}known: {', '.join(KNOWN_TASKS)}"))
    if recipe is not None and len(stages) == len(raw_stages or []):
        names = [s.name for s in stages]
        for i, stage in enumerate(stages):
            problems += [(f"stages[{i}].{f}" if f else f"stages[{i}]", m)
                         for f, m in strategies()[stage.strategy](stage).check(names, i)]
        if recipe.baseline not in (None, "input", *names):
            problems.append(("baseline", f"no stage named {recipe.baseline!r}; stages: {names}"))
        elif recipe.goal is not None:
            problems += _goal_problems(recipe, stages)
    if problems:
        raise RecipeError(problems, source)
    return ResolvedRecipe(recipe=recipe, stages=stages)


def _goal_problems(recipe: Recipe, stages: list[StageConfig]) -> list[tuple[str, str]]:
    """A goal needs a stage whose knob it can set, after the baseline it is judged against."""
    known = strategies()
    knobs = [i for i, s in enumerate(stages) if known[s.strategy].goal_knob]
    if not knobs:
        with_knob = sorted(name for name, cls in known.items() if cls.goal_knob)
        return [("goal", f"no stage of this recipe has a knob the goal can set; add a stage of "
                         f"{', '.join(with_knob)}, or remove the goal")]
    names = [s.name for s in stages]
    baseline = recipe.baseline or names[0]
    first = -1 if baseline == "input" else names.index(baseline)
    problems = []
    for i in knobs:
        if i <= first:
            problems.append((f"stages[{i}]", f"the goal is judged against the baseline ({baseline!r}), which must "
                                             "finish before this stage: set `baseline:` to an earlier stage or "
                                             "'input'"))
        calibration = getattr(stages[i], "calibration", None)
        if calibration is not None and calibration.target_layers is not None:
            problems.append((f"stages[{i}].calibration.target_layers", "the recipe's goal chooses this stage's "
                                                                       "setting: remove target_layers or the goal"))
    return problems


MAX_MAGNITUDE = 1e9  # no count, rate or size of a recipe comes near it; larger is a typo or an attack


def _huge_numbers(raw: Any, loc: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    """Every number beyond MAX_MAGNITUDE (the seed has its own range), located."""
    if isinstance(raw, dict):
        return [p for k, v in raw.items() for p in _huge_numbers(v, (*loc, k))]
    if isinstance(raw, list):
        return [p for i, v in enumerate(raw) for p in _huge_numbers(v, (*loc, i))]
    if isinstance(raw, int | float) and not isinstance(raw, bool) and loc != ("seed",) and math.isfinite(raw) \
            and abs(raw) > MAX_MAGNITUDE:
        return [(location(loc), f"{raw:g} is out of range (numbers in a recipe stay within +-{MAX_MAGNITUDE:g})")]
    return []


def default_stage_name(raw: dict[str, Any], index: int, earlier: list[str]) -> str | None:
    """A stage's name: its `name`, else its strategy's, else `strategy_INDEX` when that is taken."""
    if raw.get("name") is not None:
        return raw["name"]
    strategy = raw.get("strategy")
    if not isinstance(strategy, str):
        return None
    return strategy if strategy not in earlier else f"{strategy}_{index}"


def stage_names(raw_stages: list[Any]) -> list[str | None]:
    names: list[str | None] = []
    for i, raw in enumerate(raw_stages):
        names.append(default_stage_name(raw, i, [n for n in names if n]) if isinstance(raw, dict) else None)
    return names


def _validate_stages(raw_stages: list[Any]) -> tuple[list[StageConfig], list[tuple[str, str]]]:
    known = strategies()
    stages, problems, seen = [], [], set()
    names = stage_names(raw_stages)
    for i, raw in enumerate(raw_stages):
        where = f"stages[{i}]"
        if not isinstance(raw, dict):
            problems.append((where, f"a stage is a mapping with a `strategy` key, got {type(raw).__name__}"))
            continue
        name = raw.get("strategy")
        if not isinstance(name, str):
            problems.append((f"{where}.strategy", f"missing; known strategies: {', '.join(known)}"))
            continue
        if name not in known:
            problems.append((f"{where}.strategy", unknown_strategy_message(name, list(known))))
            continue
        try:
            stage = known[name].Config.model_validate(raw)
        except ValidationError as err:
            problems += _pydantic_problems(err, known[name].Config, where)
            continue
        if stage.name is None:
            stage.name = names[i]
        if stage.name in seen:
            problems.append((f"{where}.name", f"stage name {stage.name!r} is used twice; names must be unique"))
        seen.add(stage.name)
        stages.append(stage)
    return stages, problems


# ---- files and overrides ------------------------------------------------------------------

def apply_overrides(raw: Any, overrides: list[str]) -> Any:
    """`--set a.b=1` style overrides; `stages.NAME_OR_INDEX.key=value`; values parsed as YAML."""
    raw = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append((f"--set {item}", "expected KEY=VALUE, e.g. data.max_train_samples=500"))
            continue
        try:
            parsed = parse_yaml(value)
        except RecipeError as err:
            problems += [(f"--set {item}", msg) for _, msg in err.problems if "not valid YAML" not in msg]
            parsed = value  # plain text, e.g. a path with a colon
        parts = key.replace("[", ".").replace("]", "").split(".")
        node = raw
        for j, part in enumerate(parts[:-1]):
            node, err = _step(node, part, parts[: j + 1])
            if err:
                problems.append((f"--set {key}", err))
                break
        else:
            if isinstance(node, list):
                node, last = node, parts[-1]
                index, err = _list_index(node, last)
                if err:
                    problems.append((f"--set {key}", err))
                else:
                    node[index] = parsed
            elif isinstance(node, dict):
                node[parts[-1]] = parsed
            else:
                problems.append((f"--set {key}", f"{'.'.join(parts[:-1])} is not a mapping"))
    if problems:
        raise RecipeError(problems)
    return raw


def _step(node: Any, part: str, path: list[str]) -> tuple[Any, str | None]:
    if isinstance(node, dict):
        if part not in node or node[part] is None:
            node[part] = {}
        return node[part], None
    if isinstance(node, list):
        index, err = _list_index(node, part)
        return (node[index], None) if err is None else (None, err)
    return None, f"{'.'.join(path[:-1])} is not a mapping"


def _list_index(items: list[Any], part: str) -> tuple[int, str | None]:
    if part.lstrip("-").isdigit():
        index = int(part)
        if -len(items) <= index < len(items):
            return index, None
        return 0, f"index {index} is out of range ({len(items)} items)"
    names = stage_names(items)  # stages can be named instead of numbered, as `validate` names them
    if part in names:
        return names.index(part), None
    return 0, f"no stage named {part!r}; stages: {', '.join(n for n in names if n)}"


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> ResolvedRecipe:
    raw = apply_overrides(load_yaml(path), overrides or [])
    return validate_recipe(raw, str(path))

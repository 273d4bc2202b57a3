"""Strategy registry: name -> strategy class.

Built-in strategies are the modules of `compresskit.strategies` (each registers itself with
`@register_strategy`, so a new strategy is one new file). Other packages add theirs through the
`compresskit.strategies` entry-point group; a broken plugin is an error that names it, never a
silently missing strategy.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from compresskit.errors import CompressKitError

if TYPE_CHECKING:
    from compresskit.data.tasks import TaskSpec
    from compresskit.pipeline import PipelineState, StageContext

ENTRY_POINT_GROUP = "compresskit.strategies"
Kind = Literal["training", "static", "dynamic", "export"]


class StageConfig(BaseModel):
    """Fields every stage has; a strategy's config adds its own (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    strategy: str
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$",
                             description="stage name, part of its directory name (default: the strategy name)")
    max_train_samples: int | None = Field(
        None, ge=1, description="train this stage on this many rows of the train split (the first rows of one "
        "seeded shuffle, so smaller subsets are nested in larger ones); evaluation splits are untouched")


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


class Strategy:
    """A pipeline stage kind. Subclasses set `name`, `kind`, `Config`, and implement `apply`.

    `check` runs for every stage before any stage runs and must not touch models or data;
    `plan` then runs with the task and the model shapes read from configs, so that every number
    that refers to the model (a layer index, a budget) is checked before anything trains;
    `apply` receives the state left by the previous stage and returns the new one, whose
    model's config must describe its real architecture.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, config: StageConfig):
        self.config = config

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def check(self, stage_names: list[str], index: int) -> list[tuple[str, str]]:
        """Cross-stage problems as (field, message); `stage_names` are all stages in order."""
        return []

    def reads(self) -> list[str]:
        """Models or files this stage reads besides the incoming model (their contents are part of the
        stage's fingerprint, so replacing one reruns the stage)."""
        return []

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        """The shape of the model this stage leaves, given the one it receives; problems go to
        `ctx.problem(field, message)`. The default: a stage that keeps the architecture."""
        return shape

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        raise NotImplementedError


_REGISTRY: dict[str, type[Strategy]] = {}
_loaded = False


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available to recipes under `cls.name`."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise CompressKitError(f"strategy name {cls.name!r} is registered twice ({existing} and {cls})")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    import compresskit.strategies as builtin

    for module in pkgutil.iter_modules(builtin.__path__):
        importlib.import_module(f"{builtin.__name__}.{module.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as err:  # any import failure of a plugin must surface, named
            raise CompressKitError(f"strategy plugin {ep.name!r} ({ep.value}) failed to import: {err}") from err
        register_strategy(cls)
    _loaded = True


def strategies() -> dict[str, type[Strategy]]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_strategy(name: str) -> type[Strategy]:
    known = strategies()
    if name not in known:
        raise CompressKitError(unknown_strategy_message(name, list(known)))
    return known[name]


def unknown_strategy_message(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown strategy {name!r}; {hint}known: {', '.join(known)}"


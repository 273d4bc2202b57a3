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
from typing import Any, ClassVar, Generic, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

from compresskit.errors import CompressKitError
from compresskit.plugins import load_entry_points
from compresskit.stage import ModelShape, PipelineState, PlanContext, StageContext
from compresskit.training.precision import Precision

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
    precision: Precision | None = Field(None, description="training precision of this stage (default: the "
                                        "recipe's `precision`)")


C = TypeVar("C", bound=StageConfig)


class Strategy(Generic[C]):
    """A pipeline stage kind, typed by its config: `class MyStrategy(Strategy[MyConfig])`.

    Subclasses set `name` and `kind` and implement `apply`; `Config` is the type parameter.
    `check` runs for every stage before any stage runs and must not touch models or data;
    `plan` then runs with the task and the model shapes read from configs, so that every number
    that refers to the model (a layer index, a budget) is checked before anything trains;
    `apply` receives the state left by the previous stage and returns the new one, whose
    model's config must describe its real architecture.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    # what a recipe's `goal:` sets in this stage (None: the stage has no trade-off knob)
    goal_knob: ClassVar[str | None] = None
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):  # Strategy[MyConfig] -> Config = MyConfig
            if get_origin(base) is not None and issubclass(get_origin(base), Strategy):
                args = [a for a in get_args(base) if isinstance(a, type) and issubclass(a, StageConfig)]
                if args:
                    cls.Config = args[0]

    def __init__(self, config: C):
        self.config: C = config

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


S = TypeVar("S", bound=type[Strategy])


def register_strategy(cls: S) -> S:
    """Class decorator: make a strategy available to recipes under `cls.name` (a name taken by
    another class is an error, whoever registers it)."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise CompressKitError(f"strategy name {cls.name!r} is registered twice: by {existing.__module__}."
                               f"{existing.__qualname__} and by {cls.__module__}.{cls.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    import compresskit.strategies as builtin

    for module in pkgutil.iter_modules(builtin.__path__):
        importlib.import_module(f"{builtin.__name__}.{module.name}")
    for _, cls in load_entry_points(ENTRY_POINT_GROUP, "strategy", CompressKitError):
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


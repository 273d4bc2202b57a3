"""Generate docs/recipe-reference.md from the recipe schema and every registered strategy.

`python -m compresskit.docs_gen > docs/recipe-reference.md`; a test keeps the file in sync.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from compresskit.data.tasks import KNOWN_TASKS, TaskSpec
from compresskit.recipe import DataConfig, EvaluationConfig, Recipe
from compresskit.registry import StageConfig, strategies

SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "min length", "max_length": "max length",
           "pattern": "matches"}


def _type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("compresskit.data.tasks.", "").replace("NoneType", "None")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):  # a nested block: its own keys are listed under "Blocks"
        return f"`{value.model_dump(exclude_none=True)}`"
    return f"`{value!r}`"


def _block(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def fields_table(model: type[BaseModel], skip: tuple[str, ...] = (), blocks: dict | None = None) -> str:
    """The keys of `model` as a table; nested blocks go into `blocks` to be listed once, by name."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        block = _block(field.annotation)
        if block is not None and blocks is not None:
            blocks[block.__name__] = block
        limits = [f"{SYMBOLS[attr]} {getattr(m, attr)}" for m in field.metadata for attr in SYMBOLS
                  if getattr(m, attr, None) is not None]
        meaning = (field.description or "") + (f" ({', '.join(limits)})" if limits else "")
        kind = _type(field.annotation).replace("|", "\\|")  # a bare | would split the table cell
        if block is not None:
            kind = f"[{block.__name__}](#{block.__name__.lower()})"
        else:
            kind = f"`{kind}`"
        rows.append(f"| `{name}` | {kind} | {_default(field)} | {meaning} |")
    return "\n".join(rows)


def render() -> str:
    parts = [
        "# Recipe reference",
        "",
        "Generated from the schema by `python -m compresskit.docs_gen`; do not edit by hand.",
        "Unknown keys are errors everywhere. Every value can be overridden on the command line with",
        "`--set KEY=VALUE` (`data.max_train_samples=500`, `stages.NAME.epochs=1`, `stages[0].epochs=1`).",
        "",
        "## Top level",
        "",
        fields_table(Recipe),
        "",
        "## `data`",
        "",
        fields_table(DataConfig),
        "",
        "## `evaluation`",
        "",
        fields_table(EvaluationConfig),
        "",
        "## `task`",
        "",
        "A known task name: " + ", ".join(f"`{n}`" for n in KNOWN_TASKS) + ". Or a mapping:",
        "",
        fields_table(TaskSpec),
        "",
        "## Stages",
        "",
        "Every stage has these keys; its strategy adds its own.",
        "",
        fields_table(StageConfig),
    ]
    blocks: dict[str, type[BaseModel]] = {}
    for name, cls in strategies().items():
        if not cls.__module__.startswith("compresskit."):
            continue  # plugins document themselves
        doc = inspect.cleandoc(cls.__doc__ or "").replace("::\n", ":\n")
        table = fields_table(cls.Config, skip=("strategy", "name"), blocks=blocks)
        parts += ["", f"### `{name}` ({cls.kind})", "", doc, "", table]
    if blocks:
        parts += ["", "## Blocks", "", "Keys of the nested mappings above; a key left out keeps its default."]
        for block_name, block in sorted(blocks.items()):
            parts += ["", f"### {block_name}", "", inspect.cleandoc(block.__doc__ or ""), "", fields_table(block)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")

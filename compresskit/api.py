"""The Python side of `compresskit apply`: the same run, from a recipe file or a recipe built in code.

    import compresskit
    result = compresskit.apply("recipes/tinybert_hadskip.yaml", output_dir="runs/mine",
                               overrides={"stages.skip.budget": 2})
    result.summary, result.final_model_dir, result.export_dir
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compresskit.recipe import apply_overrides, validate_recipe
from compresskit.yamlfile import load_yaml


@dataclass(frozen=True)
class RunResult:
    """What a run left: its directory and report.json's contents."""

    run_dir: Path
    report: dict[str, Any]

    @property
    def summary(self) -> dict[str, Any]:
        """Final against baseline (what `compresskit apply` prints)."""
        return self.report["summary"]

    def stage_dir(self, name: str) -> Path:
        index = [s["name"] for s in self.report["stages"]].index(name)
        return self.run_dir / "stages" / f"{index:02d}-{name}"

    @property
    def final_model_dir(self) -> Path:
        """The last model-producing stage's model (`from_pretrained` loads it)."""
        return self.stage_dir(self.report["final"]["stage"]) / "model"

    @property
    def export_dir(self) -> Path | None:
        """The last export stage's ONNX directory, if the recipe exports."""
        exports = [s for s in self.report["stages"] if s["strategy"] == "export"]
        return self.stage_dir(exports[-1]["name"]) / exports[-1]["info"]["directory"] if exports else None


def apply(recipe: str | Path | Mapping[str, Any], output_dir: str | Path | None = None,
          overrides: Mapping[str, Any] | None = None) -> RunResult:
    """Run a recipe (a YAML file, or the same mapping built in code) into `output_dir` (default
    runs/NAME); rerunning resumes after the last finished stage, as the CLI does. `overrides` are
    the CLI's `--set KEY=VALUE` as a mapping, values as Python objects. A broken recipe raises
    `RecipeError` (every problem with its location) before anything runs."""
    from compresskit.pipeline import Pipeline

    if not isinstance(recipe, Mapping | str | Path):
        raise TypeError(f"recipe: a YAML file's path or the recipe as a mapping, not {type(recipe).__name__}")
    source = None if isinstance(recipe, Mapping) else str(recipe)
    raw = copy.deepcopy(dict(recipe)) if isinstance(recipe, Mapping) else load_yaml(recipe)
    # JSON is YAML: each value reaches the recipe exactly as `--set key=<its JSON>` would
    raw = apply_overrides(raw, [f"{key}={json.dumps(value)}" for key, value in (overrides or {}).items()])
    resolved = validate_recipe(raw, source)
    run_dir = Path(output_dir or Path("runs") / resolved.recipe.name)
    return RunResult(run_dir, Pipeline(resolved, run_dir).run())

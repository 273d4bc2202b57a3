"""Every recipe in recipes/ runs end to end, shrunk onto the tiny random model and task."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from compresskit.registry import get_strategy

RECIPES = sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml"))
MODEL_KEYS = ("student",)  # stage keys that name a model: the tiny one stands in


def shrink(stage: dict, model_dir: str) -> dict:
    """The same stage with every epoch count cut to a fraction and small batches."""
    small = {}
    for key, value in stage.items():
        if key.endswith("epochs") and isinstance(value, int | float) and value > 0:
            small[key] = 0.5
        elif key in MODEL_KEYS and isinstance(value, str):
            small[key] = model_dir
        else:
            small[key] = value
    if stage["strategy"] == "layer_prune":
        small.update(workers=1, candidate_max_samples=16)
    if "batch_size" in get_strategy(stage["strategy"]).Config.model_fields:
        small["batch_size"] = 8
    return small


def shrunk_recipe(path: Path, model_dir: Path, task: dict, directory: Path) -> tuple[Path, dict]:
    """The recipe at `path` on the tiny model and task, every stage shrunk: its file and contents."""
    raw = yaml.safe_load(path.read_text())
    raw.update(model=str(model_dir), task=task,
               data={**raw.get("data", {}), "max_length": 16, "max_train_samples": 64, "max_eval_samples": 32},
               evaluation={**raw.get("evaluation", {}), "batch_size": 16, "flops_examples": 8})
    raw["stages"] = [shrink(stage, str(model_dir)) for stage in raw["stages"]]
    shrunk = directory / path.name
    shrunk.write_text(yaml.safe_dump(raw, sort_keys=False))
    return shrunk, raw


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_runs_on_a_tiny_model(path, tiny_model_dir, tiny_task, tmp_path):
    shrunk, raw = shrunk_recipe(path, tiny_model_dir, tiny_task, tmp_path)
    report = Pipeline(load_recipe(shrunk), tmp_path / "run").run()
    assert [s["name"] for s in report["stages"]] == [s.get("name", s["strategy"]) for s in raw["stages"]]
    assert report["final"]["validation"]["examples"] > 0
    dynamic = False
    for stage in report["stages"]:
        dynamic |= get_strategy(stage["strategy"]).kind == "dynamic"
        if stage["strategy"] == "export":  # the ONNX model computes what the PyTorch one does, route by route
            checked = stage["info"]["validation"]
            assert checked["mismatched"] == 0 and checked["max_abs_diff"] <= 1e-4
            assert checked["prediction_agreement"] >= 0.9  # any difference is a near-tie (counted in `flipped`)
            if dynamic:  # and so does its batch-1 path (the one-call graph), example by example
                alone = checked["one_at_a_time"]
                assert alone["mismatched"] == 0 and alone["max_abs_diff"] <= 1e-4 and alone["examples"] > 0

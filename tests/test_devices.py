"""Every stage keeps its tensors on the model's device (a stand-in accelerator, tests/device_guard.py),
and, where CUDA is present, the shipped recipes run on it (`-m gpu`)."""

from __future__ import annotations

import json

import pytest
import torch

from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from tests.device_guard import accelerator_stand_in
from tests.test_shipped_recipes import RECIPES, shrunk_recipe
from tests.test_strategies import STAGES, TEACHER


@pytest.mark.parametrize("name", list(STAGES))
def test_no_stage_leaves_a_tensor_on_the_host(name, tiny_recipe, tmp_path):
    stage = {**STAGES[name], "name": "stage"}
    recipe = load_recipe(tiny_recipe([TEACHER, stage, {"strategy": "export", "name": "onnx"}]))
    with accelerator_stand_in() as guard:
        Pipeline(recipe, tmp_path / "run").run()
    assert not guard.violations, "\n".join(guard.violations)


def test_the_guard_catches_a_host_tensor_beside_the_models():
    """The guard itself: a tensor built without `device=` next to the model's output, and `.numpy()`
    of an accelerator tensor, are what CUDA would refuse."""
    layer = torch.nn.Linear(4, 4)
    with accelerator_stand_in() as guard:
        layer.to(torch.device("cuda" if torch.cuda.is_available() else "cpu", 0))
        out = layer(torch.ones(2, 4).to(layer.weight.device))
        assert not guard.violations  # moved: fine
        _ = out + torch.ones(2, 4)
        out.detach().numpy()
    assert [v.split(" at ")[0] for v in guard.violations] == ["add mixes accelerator and host tensors",
                                                               ".numpy() of a tensor on the accelerator"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_runs_on_cuda(path, tiny_model_dir, tiny_task, tmp_path):
    shrunk, raw = shrunk_recipe(path, tiny_model_dir, tiny_task, tmp_path)
    report = Pipeline(load_recipe(shrunk), tmp_path / "run").run()
    assert [s["name"] for s in report["stages"]] == [s.get("name", s["strategy"]) for s in raw["stages"]]
    assert json.loads((tmp_path / "run" / "environment.json").read_text())["device"].startswith("cuda")

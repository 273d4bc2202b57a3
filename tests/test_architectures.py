"""The strategy battery over every architecture an adapter serves (tiny random models).

Each strategy runs after a short fine-tune on a tiny model of each architecture, its model is
exported (the export stage fails on a real disagreement with PyTorch, route by route) and reloaded
from its directory alone with the same logits. The support table in docs/benchmarks.md is this test.
BERT runs the full battery with golden values in tests/test_strategies.py.
"""

from __future__ import annotations

import json

import pytest

from compresskit.modeling import CompressedModelForSequenceClassification
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from tests.conftest import CONFIGS, make_model_dir
from tests.test_strategies import STAGES, TEACHER

ARCHITECTURES = [name for name in CONFIGS if name != "bert"]
# why a cell of the table is empty: the architecture refuses the strategy, with this message
REFUSED = {("mpnet", "structured_prune"): "relative-position bias", ("mpnet", "cost_eff"): "relative-position bias"}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return {name: make_model_dir(tmp_path_factory.mktemp(name), backbone=name) for name in ARCHITECTURES}


@pytest.mark.parametrize("name", list(STAGES))
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_strategy_on_every_architecture_trains_exports_and_reloads(architecture, name, model_dirs, tiny_recipe,
                                                                         tiny_task_file, cli, tmp_path):
    stage = {**STAGES[name], "name": "stage"}
    if name == "consistentee":  # a tiny random model may have no operating point within BERT's 0.01 goal
        stage["calibration"] = {**stage["calibration"], "max_accuracy_drop": 0.3}
    recipe = load_recipe(tiny_recipe([TEACHER, stage, {"strategy": "export", "name": "onnx"}],
                                     model=str(model_dirs[architecture])))
    if (architecture, name) in REFUSED:
        with pytest.raises(Exception, match=REFUSED[architecture, name]):
            Pipeline(recipe, tmp_path / "run").run()
        return
    report = Pipeline(recipe, tmp_path / "run").run()
    export = report["stages"][2]["info"]["validation"]
    assert export["mismatched"] == 0 and export["max_abs_diff"] <= 1e-4
    model_dir = tmp_path / "run" / "stages" / "01-stage" / "model"
    model = CompressedModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert model.config.backbone["model_type"] == architecture
    if model.is_dynamic:
        assert export["one_at_a_time"]["mismatched"] == 0
    # a process that never saw the model evaluates it from its directory alone: the same numbers
    fresh = cli("evaluate", model_dir, "--task", tiny_task_file, "--max-length", "16", "--batch-size", "16")
    assert fresh.code == 0, fresh.stderr[-2000:]
    validation = report["stages"][1]["evaluation"]["validation"]
    assert {k: v for k, v in json.loads(fresh.stdout).items() if k != "parameters"} == validation


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_bert_student_learns_from_a_teacher_of_every_architecture(architecture, model_dirs, tiny_recipe,
                                                                   tiny_model_dir, tmp_path):
    """Cross-architecture distillation, hidden states (through the student's projection, 64 -> 32),
    attention scores and predictions: the tiny models share one tokenizer, so tokens align."""
    stages = [{**TEACHER, "epochs": 1},
              {"strategy": "distill", "name": "student", "student": str(tiny_model_dir), "intermediate_epochs": 1,
               "prediction_epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "intermediate_learning_rate": 1e-3}]
    report = Pipeline(load_recipe(tiny_recipe(stages, model=str(model_dirs[architecture]))), tmp_path / "run").run()
    info = report["stages"][1]["info"]
    assert report["final"]["stage"] == "student" and info["teacher_layers"] == 4
    assert {"intermediate", "prediction"} <= set(info["history"])
    student = tmp_path / "run" / "stages" / "01-student" / "model"
    model = CompressedModelForSequenceClassification.from_pretrained(student)
    assert model.config.backbone["model_type"] == "bert"


@pytest.mark.parametrize("name", sorted({n for _, n in REFUSED}))
def test_a_refused_head_pruning_still_prunes_the_ffn(name, model_dirs, tiny_recipe, tmp_path):
    """The table's "FFN only" cells: with head_ratio 0, MPNet's FFN is pruned and the export agrees."""
    stage = {**STAGES[name], "name": "stage", "head_ratio": 0.0}
    recipe = load_recipe(tiny_recipe([TEACHER, stage, {"strategy": "export", "name": "onnx"}],
                                     model=str(model_dirs["mpnet"])))
    report = Pipeline(recipe, tmp_path / "run").run()
    export = report["stages"][2]["info"]["validation"]
    assert export["mismatched"] == 0 and export["max_abs_diff"] <= 1e-4
    layers = report["stages"][1]["info"]["layers"]
    assert all(len(layer["heads"]) == 4 if isinstance(layer["heads"], list) else layer["heads"] == 4
               for layer in layers)
    assert any(layer["intermediate_size"] < 64 for layer in layers)

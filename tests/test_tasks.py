"""Tasks beyond single-sentence binary classification, through every strategy that serves them.

A regression (one output, MSE, Pearson/Spearman) and a three-class sentence-pair task run each
strategy after a fine-tune, then the export stage (which fails on a real disagreement with PyTorch,
route by route). Strategies without a regression form are refused at validation (tests/test_bad_input.py).
Calibration aims at the task's first metric: a case built so that F1 and accuracy disagree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compresskit.data.tasks import TaskSpec
from compresskit.modeling.dynamic import build_exit_rule
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from compresskit.training import calibration
from compresskit.training.calibration import CalibrationConfig, calibrate
from tests.conftest import make_encoder_dir, make_pair_files, make_regression_files
from tests.test_modeling import compressed
from tests.test_strategies import STAGES, TEACHER

# the strategies with a regression form (the rest decide from class distributions: refused)
REGRESSION = ["finetune", "distill", "hadskip", "structured_prune", "layer_prune", "budgeted_exit", "pabee",
              "berxit"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return make_encoder_dir(tmp_path_factory.mktemp("encoder"))


def regression_task(directory) -> dict:
    return {"name": "scores", "source": "files", "data_files": make_regression_files(directory),
            "text_fields": ["review"], "label_field": "score", "num_labels": 1, "metrics": ["pearson", "spearman"]}


def pair_task(directory) -> dict:
    return {"name": "verdicts", "source": "files", "data_files": make_pair_files(directory),
            "text_fields": ["first", "second"], "label_field": "verdict", "num_labels": 3,
            "labels": ["none", "one", "both"], "metrics": ["accuracy", "f1"]}


def run(tiny_recipe, encoder_dir, task, name, tmp_path) -> dict:
    stage = {**STAGES[name], "name": "stage"}
    if "calibration" in stage and "target_layers" not in stage["calibration"]:
        # a goal on the first metric every tiny model can meet (the full depth always does)
        stage["calibration"] = {**stage["calibration"], "max_accuracy_drop": 0.3}
    recipe = load_recipe(tiny_recipe([{**TEACHER, "epochs": 4}, stage, {"strategy": "export", "name": "onnx"}],
                                     model=str(encoder_dir), task=task, data={"max_length": 24}))
    return Pipeline(recipe, tmp_path / "run").run()


def assert_exported_alike(report: dict) -> None:
    export = report["stages"][2]["info"]["validation"]
    assert export["mismatched"] == 0 and export["max_abs_diff"] <= 1e-4
    if "one_at_a_time" in export:
        assert export["one_at_a_time"]["mismatched"] == 0


@pytest.mark.parametrize("name", REGRESSION)
def test_a_regression_runs_through_every_strategy_with_a_regression_form(name, tiny_recipe, encoder_dir, tmp_path):
    report = run(tiny_recipe, encoder_dir, regression_task(tmp_path / "data"), name, tmp_path)
    teacher, final = (report["stages"][0]["evaluation"]["validation"], report["final"]["validation"])
    assert set(final) >= {"pearson", "spearman"} and "accuracy" not in final
    assert teacher["pearson"] > 0.5, "the fine-tuned regressor learns the score"
    # a constant prediction scores 0; tiny HadSkip at budget 2 of 4 collapses to ~1 layer (0.28), as on BERT
    assert final["pearson"] > 0.2, f"{name} keeps a regressor that predicts the score"
    assert_exported_alike(report)


@pytest.mark.parametrize("name", list(STAGES))
def test_a_three_class_sentence_pair_task_runs_through_every_strategy(name, tiny_recipe, encoder_dir, tmp_path):
    report = run(tiny_recipe, encoder_dir, pair_task(tmp_path / "data"), name, tmp_path)
    final = report["final"]["validation"]
    assert 0 <= final["f1"] <= 1 and 0 <= final["accuracy"] <= 1
    assert_exported_alike(report)


def test_pabee_on_a_regression_counts_a_value_within_the_tolerance_as_unchanged():
    rule = build_exit_rule({"name": "patience", "patience": 2, "tolerance": 0.1}, 4, 8)
    state, rows = rule.init_state(3, torch.device("cpu")), torch.arange(3)
    leaves = [rule.decide(layer, torch.tensor(values), rows, state)
              for layer, values in enumerate([[0.5, 0.5, 0.5], [0.55, 0.9, 0.52], [0.58, 0.95, 0.9]])]
    # row 0 moves 0.05 then 0.03: unchanged twice; row 1 moves 0.4 then 0.05; row 2 0.02 then 0.38
    assert [leave.tolist() for leave in leaves] == [[False] * 3, [False] * 3, [True, False, False]]


def test_calibration_aims_at_the_tasks_first_metric(monkeypatch):
    """98 negatives and 2 positives: an exit that calls everything negative keeps 98% accuracy and
    no F1. Within 0.03, accuracy takes the exit; F1 keeps the full depth."""
    model = compressed("bert", exits="entropy")
    labels = torch.tensor([1, 1] + [0] * 98)
    confident_negative = torch.tensor([4.0, -4.0]).expand(100, 2)
    right = torch.nn.functional.one_hot(labels, 2).float() * 8 - 4
    logits = torch.stack([confident_negative, confident_negative, right])  # two exits and the head
    states = torch.zeros(3, 100, 32)
    monkeypatch.setattr(calibration, "all_exit_logits", lambda *args: (logits, states, labels))
    chosen = {}
    for metric in ("accuracy", "f1"):
        task = TaskSpec(name="rare", text_fields=["t"], num_labels=2,
                        metrics=[metric, "f1" if metric == "accuracy" else "accuracy"],
                        data_files={"train": "-"})
        result = calibrate(model, None, None, task, "threshold", [0.0, 0.5],
                           CalibrationConfig(max_accuracy_drop=0.03))
        assert result["metric"] == metric and result["full_score"] == 1.0
        chosen[metric] = result["chosen"]
    assert chosen["accuracy"]["threshold"] == 0.5 and chosen["accuracy"]["avg_layers"] == 1.0
    assert chosen["accuracy"]["accuracy"] == pytest.approx(0.98) and chosen["accuracy"]["f1"] == 0.0
    assert chosen["f1"]["threshold"] == 0.0 and chosen["f1"]["avg_layers"] == 3.0
    assert np.isclose(chosen["f1"]["f1"], 1.0)

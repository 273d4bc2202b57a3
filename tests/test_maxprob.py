"""`maxprob` (the worked example of docs/adding-a-strategy.md): its rule and its stage."""

from __future__ import annotations

import torch

from compresskit.modeling.dynamic import MaxProbabilityRule
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe

TEACHER = {"strategy": "finetune", "name": "teacher", "epochs": 6, "learning_rate": 2e-3, "batch_size": 8}


def test_the_rule_exits_what_is_confident_and_keeps_what_is_not():
    rule = MaxProbabilityRule(num_layers=4, hidden_size=8, threshold=0.8)
    logits = torch.tensor([[3.0, 0.0], [0.2, 0.0], [0.0, 2.0], [1.0, 1.0]])  # P(top): 0.95, 0.55, 0.88, 0.5
    score = rule.score(0, logits, None)
    torch.testing.assert_close(score, torch.softmax(logits, -1).max(-1).values)
    assert rule.decide(0, score, torch.arange(4), {}).tolist() == [True, False, True, False]
    assert rule.margin(0, logits, score)[3] == 0.3  # |0.5 - 0.8|: how far from exiting


def test_the_stage_trains_calibrates_and_exits_earlier(tiny_recipe, tmp_path):
    stage = {"strategy": "maxprob", "name": "exits", "epochs": 3, "learning_rate": 1e-3, "exit_learning_rate": 5e-3,
             "batch_size": 8, "calibration": {"max_accuracy_drop": 0.05, "fraction": 0.25}}
    report = Pipeline(load_recipe(tiny_recipe([TEACHER, stage])), tmp_path / "run").run()
    calibration = report["stages"][1]["info"]["calibration"]
    assert calibration["parameter"] == "threshold" and calibration["examples"] == 24
    assert calibration["chosen"]["threshold"] < 1.0  # some threshold let examples leave on held-out rows
    assert report["final"]["validation"]["avg_layers"] < 4.0 and report["final"]["validation"]["accuracy"] >= 0.8

"""Early-exit strategies on tiny models: they train, calibrate on held-out rows, and really exit."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from compresskit.data.tasks import KNOWN_TASKS
from compresskit.modeling import CompressedConfig
from compresskit.modeling.dynamic import entropy
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from compresskit.training.calibration import CalibrationConfig, all_exit_logits, calibrate, replay
from tests.conftest import make_tokenizer
from tests.test_modeling import compressed, inputs

TEACHER = {"strategy": "finetune", "name": "teacher", "epochs": 6, "learning_rate": 2e-3, "batch_size": 8}


@pytest.mark.parametrize("stage", [
    {"strategy": "deebert", "epochs": 3, "learning_rate": 5e-3, "batch_size": 8,
     "calibration": {"target_layers": 2, "fraction": 0.25}},
    {"strategy": "pabee", "epochs": 3, "learning_rate": 1e-3, "exit_learning_rate": 5e-3, "batch_size": 8,
     "calibration": {"max_accuracy_drop": 0.05, "fraction": 0.25}},
    {"strategy": "pcee", "epochs": 3, "learning_rate": 1e-3, "exit_learning_rate": 5e-3, "batch_size": 8,
     "patience": 1, "calibration": {"target_layers": 2, "fraction": 0.25}},
    {"strategy": "berxit", "epochs": 4, "learning_rate": 1e-3, "exit_learning_rate": 5e-3, "batch_size": 8,
     "calibration": {"target_layers": 2, "fraction": 0.25}},
    {"strategy": "berxit", "epochs": 4, "learning_rate": 1e-3, "exit_learning_rate": 5e-3, "batch_size": 8,
     "calibration": {"target_layers": 2, "fraction": 0.25}, "exit_pooling": "mean"},
], ids=lambda s: s["strategy"] + (f"-{s['exit_pooling']}-pooled" if "exit_pooling" in s else ""))
def test_exit_strategies_train_calibrate_and_exit_early(tiny_recipe, tmp_path, stage):
    report = Pipeline(load_recipe(tiny_recipe([TEACHER, {**stage, "name": "exits"}])), tmp_path / "run").run()
    info = report["stages"][1]["info"]
    chosen = info["calibration"]["chosen"]
    assert info["calibration"]["examples"] == 24  # a quarter of the 96 training rows, not the evaluation split
    assert chosen in info["calibration"]["table"]  # which row a goal picks: test_the_goal_picks_*
    final = report["final"]["validation"]
    assert final["avg_layers"] < 4.0, "the calibrated rule should exit before the last layer on this easy task"
    assert final["accuracy"] >= 0.8
    assert report["final"]["flops_per_example"] < report["baseline"]["flops_per_example"]
    saved = CompressedConfig.from_pretrained(tmp_path / "run" / "stages" / "01-exits" / "model")
    assert saved.exit_head_spec().pooling == stage.get("exit_pooling", "cls")


def test_budgeted_exit_keeps_the_first_k_layers(tiny_recipe, tmp_path):
    stage = {"strategy": "budgeted_exit", "name": "first2", "k": 2, "epochs": 2, "learning_rate": 2e-3,
             "batch_size": 8}
    report = Pipeline(load_recipe(tiny_recipe([TEACHER, stage])), tmp_path / "run").run()
    assert report["final"]["num_layers"] == 2 and report["final"]["validation"]["avg_layers"] == 2.0


@pytest.mark.parametrize("rule, parameter, pooling", [
    ("entropy", "threshold", "cls"), ("patience", "patience", "cls"), ("patience_confidence", "threshold", "cls"),
    ("learned", "threshold", "cls"), ("learned", "threshold", "mean")])
def test_calibration_replays_exactly_what_inference_does(rule, parameter, pooling, tmp_path):
    """The held-out depth and accuracy calibration reports are what the routed model then does."""
    model = compressed("bert", exits=rule, exit_pooling=pooling)
    # examples that differ and confident, disagreeing heads, so that exits really vary
    torch.nn.init.normal_(model.backbone.bert.embeddings.word_embeddings.weight, std=1.0)
    for head in [*model.exit_heads.values(), model.backbone.classifier]:
        torch.nn.init.normal_(head.weight if isinstance(head, torch.nn.Linear) else head.classifier.weight, std=3.0)
    batch = inputs(batch=24, seed=3)
    rows = [{"input_ids": [t for t, m in zip(ids, mask, strict=True) if m], "labels": i % 2}
            for i, (ids, mask) in enumerate(zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(),
                                                strict=True))]
    heldout, tokenizer = Dataset.from_list(rows), make_tokenizer(tmp_path)
    if parameter == "patience":
        candidates = [1, 2]
    elif rule == "learned":  # thresholds among the exit module's own certainties
        states = all_exit_logits(model, heldout, tokenizer)[1][:-1]
        candidates = model.exit_rule.certainty(states.flatten(0, 1)).quantile(torch.tensor([0.2, 0.5, 0.8])).tolist()
    else:  # thresholds among this model's own entropies, so that some examples exit and some do not
        exit_logits = all_exit_logits(model, heldout, tokenizer)[0][:-1]
        ent = entropy(exit_logits.flatten(0, 1), normalized=rule == "patience_confidence")
        candidates = ent.quantile(torch.tensor([0.2, 0.4, 0.6, 0.8])).tolist()

    task = KNOWN_TASKS["rotten_tomatoes"]
    result = calibrate(model, heldout, tokenizer, task, parameter, candidates, CalibrationConfig(target_layers=2))
    assert model.config.exit_rule[parameter] == result["chosen"][parameter]
    exit_layer, logits = replay(model, *all_exit_logits(model, heldout, tokenizer)[:2])
    preds = logits.argmax(-1)
    padded = tokenizer.pad([{"input_ids": r["input_ids"]} for r in rows], return_tensors="pt")
    with torch.no_grad():
        out = model.eval()(**padded)  # the routed inference a user runs
    assert len(set(exit_layer.tolist())) > 1, "examples should leave at different layers"
    assert torch.equal(out.exit_layer, exit_layer)
    assert torch.equal(out.logits.argmax(-1), preds)
    assert result["chosen"]["avg_layers"] == pytest.approx(exit_layer.float().mean().item())


TABLE = [{"threshold": t, "accuracy": a, "avg_layers": n}
         for t, a, n in [(0.1, 0.90, 3.6), (0.3, 0.89, 2.4), (0.5, 0.86, 1.9), (0.7, 0.80, 1.2)]]


@pytest.mark.parametrize("goal, threshold", [
    ({"target_layers": 2}, 0.5),  # 1.9 is the closest depth to 2
    ({"target_layers": 3.2}, 0.1),  # 3.6 (0.4 away) beats 2.4 (0.8 away)
    ({"max_accuracy_drop": 0.01}, 0.3),  # the fastest within one point of 0.90: 0.89 at 2.4 layers
    ({"max_accuracy_drop": 0.05}, 0.5),  # 0.86 is within 5 points, 0.80 is not
    ({"max_accuracy_drop": 0.0}, 0.1),  # nothing may be lost: only the full-accuracy setting
])
def test_the_goal_picks_the_setting_it_names(goal, threshold):
    from compresskit.training.calibration import choose_setting

    assert choose_setting(TABLE, 0.90, CalibrationConfig(**goal), "threshold")["threshold"] == threshold


def test_an_unreachable_accuracy_goal_is_a_clear_error():
    from compresskit.errors import CompressKitError
    from compresskit.training.calibration import choose_setting

    with pytest.raises(CompressKitError, match="allow a larger drop"):
        choose_setting(TABLE[1:], 0.95, CalibrationConfig(max_accuracy_drop=0.01), "threshold")


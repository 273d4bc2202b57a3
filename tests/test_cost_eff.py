"""cost_eff: a slender multi-exit model that really exits, reports its curve and reloads."""

from __future__ import annotations

import pytest
import torch

from compresskit.modeling import CompressedModelForSequenceClassification
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from compresskit.strategies.cost_eff import CostEffConfig
from compresskit.training.distillation import soft_targets


def test_exits_learn_from_the_teacher_averaged_with_the_label():
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    target = soft_targets(teacher, torch.tensor([1, 0]), temperature=1.0)
    p = torch.softmax(teacher, -1)
    torch.testing.assert_close(target, 0.5 * p + 0.5 * torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    torch.testing.assert_close(target.sum(-1), torch.ones(2))


def test_no_slenderizing_is_a_recipe_error():
    with pytest.raises(ValueError, match="slenderizes"):
        CostEffConfig(strategy="cost_eff", head_ratio=0.0, ffn_ratio=0.0)


def test_cost_eff_stage_slenderizes_exits_and_reloads(tiny_recipe, tmp_path):
    recipe = tiny_recipe([
        {"strategy": "finetune", "name": "teacher", "epochs": 4, "learning_rate": 2e-3, "batch_size": 8},
        {"strategy": "cost_eff", "name": "slim", "head_ratio": 0.5, "ffn_ratio": 0.5, "prune_steps": 2,
         "exit_epochs": 1, "recover_epochs": 0.5, "representation_epochs": 0.5, "prediction_epochs": 1,
         "learning_rate": 1e-3, "batch_size": 8, "taylor_batches": 2, "curve_points": 4,
         "calibration": {"max_accuracy_drop": 0.5}},
    ])
    run_dir = tmp_path / "run"
    report = Pipeline(load_recipe(recipe), run_dir).run()
    info = report["stages"][1]["info"]
    assert info["parameters_after"] < info["parameters_before"]
    assert info["layers"] == [{"heads": 2, "intermediate_size": 32}] * 4
    assert set(info["history"]) == {"exits", "recover 1", "recover 2", "representation", "prediction"}
    curve, unpruned = info["curve"], info["curve_unpruned"]
    assert [r["threshold"] for r in curve] == [r["threshold"] for r in unpruned] and len(curve) == 4
    assert curve[0]["avg_layers"] == 4.0  # threshold 0: nobody exits
    assert curve[-1]["avg_layers"] < curve[0]["avg_layers"]  # ln(2): everybody leaves at the first exit
    assert curve[-1]["flops_per_example"] < curve[0]["flops_per_example"]
    assert curve[0]["flops_per_example"] < unpruned[0]["flops_per_example"]  # slender: cheaper at full depth
    assert (run_dir / "stages" / "01-slim" / "curve.png").exists()

    model = CompressedModelForSequenceClassification.from_pretrained(run_dir / "stages" / "01-slim" / "model")
    chosen = info["calibration"]["chosen"]["threshold"]
    assert model.config.exit_rule == {"name": "entropy", "threshold": chosen}
    assert [s["exit"] for s in model.config.layers] == [True, True, True, False]

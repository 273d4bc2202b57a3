"""Training precision: `auto` resolves by what the hardware multiplies natively; bf16 really trains
in bf16, follows fp32's loss trajectory, and reports fp32 metrics; bad settings fail validate."""

from __future__ import annotations

import pytest
import torch
import yaml

from compresskit.data.loading import load_splits, resolve_task, tokenize
from compresskit.data.tasks import TaskSpec
from compresskit.errors import CompressKitError
from compresskit.evaluation.evaluate import evaluate
from compresskit.modeling.loading import load_model
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from compresskit.training import precision
from compresskit.training.trainer import TrainingConfig, train
from tests.test_bad_input import expect_2

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, resolved", [
    (["avx2", "avx512f", "avx512_bf16", "avx512_vnni"], "bf16"),  # AVX512-BF16 (this project's machines)
    (["avx2", "amx_bf16", "amx_tile"], "bf16"),  # AMX
    (["avx2", "fma", "avx512f"], "fp32"),  # bf16 would be emulated: slower than fp32
])
def test_auto_picks_bf16_only_where_the_cpu_multiplies_it_natively(monkeypatch, flags, resolved):
    monkeypatch.setattr(precision.hardware, "cpu", lambda: {"model": "x", "matrix_instructions": flags})
    assert precision.resolve("auto", CPU) == resolved
    assert precision.resolve("fp32", CPU) == "fp32" and precision.resolve("bf16", CPU) == "bf16"


def test_fp16_without_a_gpu_is_a_clear_error():
    with pytest.raises(CompressKitError, match="fp16 training needs a GPU"):
        precision.resolve("fp16", CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid on a GPU")
@pytest.mark.parametrize("where", ["recipe", "stage"])
def test_validate_rejects_fp16_on_a_machine_without_a_gpu(cli, tiny_recipe, where):
    stage = {"strategy": "finetune", "name": "teacher", "epochs": 1}
    recipe = (tiny_recipe([stage], precision="fp16") if where == "recipe"
              else tiny_recipe([{**stage, "precision": "fp16"}]))
    expect_2(cli("validate", recipe), "precision: fp16 training needs a GPU" if where == "recipe"
             else "stages[0].precision: fp16 training needs a GPU")


def _train(tiny_model_dir, tiny_task, kind, probe=None):
    task = TaskSpec(**tiny_task)
    model, tokenizer = load_model(str(tiny_model_dir), task, seed=3)
    data = tokenize(load_splits(resolve_task(task), ["train", "validation"]), tokenizer, 16)
    if probe is not None:
        model.backbone.bert.encoder.layer[0].attention.self.query.register_forward_hook(probe)
    settings = TrainingConfig(epochs=3, learning_rate=1e-3, batch_size=16)
    with precision.training_precision(kind):
        result = train(model, data["train"], data["validation"], task, tokenizer, settings, seed=5)
    return model, tokenizer, data, task, result


def test_bf16_trains_in_bf16_along_fp32s_loss_trajectory_and_reports_fp32_metrics(tiny_model_dir, tiny_task):
    seen = []
    model, tokenizer, data, task, bf16 = _train(tiny_model_dir, tiny_task, "bf16",
                                                probe=lambda m, i, out: seen.append((m.training, out.dtype)))
    _, _, _, _, fp32 = _train(tiny_model_dir, tiny_task, "fp32")
    assert (True, torch.bfloat16) in seen, "the training forward passes run their matrix products in bf16"
    assert (False, torch.float32) in seen and (False, torch.bfloat16) not in seen, "evaluation stays fp32"
    bf16_losses = [r["train_loss"] for r in bf16.history]
    fp32_losses = [r["train_loss"] for r in fp32.history]
    assert bf16_losses != fp32_losses  # really another precision
    assert bf16_losses == pytest.approx(fp32_losses, rel=0.05, abs=0.02)
    # the best epoch's metrics are what a plain fp32 evaluation of the trained weights gives
    assert "forward" not in model.__dict__, "accelerate's autocast wrapper is gone after training"
    assert evaluate(model, data["validation"], task, tokenizer) == bf16.best_metrics


def test_a_stage_says_what_precision_it_trained_in(tiny_recipe, tmp_path):
    import json

    recipe = tiny_recipe([{"strategy": "finetune", "name": "teacher", "epochs": 1, "batch_size": 16},
                          {"strategy": "finetune", "name": "again", "epochs": 1, "batch_size": 16,
                           "precision": "bf16"}], precision="auto")
    Pipeline(load_recipe(recipe), tmp_path / "run").run()
    stages = tmp_path / "run" / "stages"
    assert json.loads((stages / "00-teacher" / "stage.json").read_text())["precision"] == \
        precision.resolve("auto", CPU)
    assert json.loads((stages / "01-again" / "stage.json").read_text())["precision"] == "bf16"
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["precision"] == {"requested": "auto", "resolved": precision.resolve("auto", CPU)}
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["precision"] == "auto"

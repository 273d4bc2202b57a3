"""One battery every strategy runs, with stored golden values that fail when the maths changes.

Each strategy runs as a stage after a short fine-tune on the tiny model and task, then the model it
leaves is saved, reloaded from its directory alone (the same logits), exported (the export's check
fails on any real disagreement with PyTorch) and compared with tests/golden.json: the losses of its
training steps, its validation metrics, what it chose, and the logits of four fixed examples.

The golden values were written by the code as it was before a refactoring and must survive it;
when a change of the maths is meant, rewrite them and say why in the commit:

    COMPRESSKIT_WRITE_GOLDEN=1 python -m pytest tests/test_strategies.py -n 0
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from compresskit.modeling import CompressedModelForSequenceClassification
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from tests.test_modeling import inputs

GOLDEN = Path(__file__).with_name("golden.json")
WRITE = os.environ.get("COMPRESSKIT_WRITE_GOLDEN") == "1"
TOLERANCE = 1e-4  # relative and absolute: rounding differs across CPUs and thread counts, maths does not

TEACHER = {"strategy": "finetune", "name": "teacher", "epochs": 2, "learning_rate": 2e-3, "batch_size": 16}
STAGES = {
    "finetune": {"strategy": "finetune", "epochs": 1, "learning_rate": 1e-3, "batch_size": 16},
    "distill": {"strategy": "distill", "teacher": "teacher", "student_layers": [0, 2], "intermediate_epochs": 1,
                "prediction_epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "intermediate_learning_rate": 1e-3},
    "hadskip": {"strategy": "hadskip", "budget": 2, "gate_epochs": 0.5, "epochs_per_budget": 0.5, "batch_size": 16},
    "structured_prune": {"strategy": "structured_prune", "head_ratio": 0.5, "ffn_ratio": 0.5,
                         "importance": "taylor", "batch_size": 16, "taylor_batches": 2},
    "layer_prune": {"strategy": "layer_prune", "target_layers": 3, "candidate_epochs": 0.5, "batch_size": 16},
    "budgeted_exit": {"strategy": "budgeted_exit", "k": 2, "epochs": 1, "learning_rate": 1e-3, "batch_size": 16},
    "deebert": {"strategy": "deebert", "epochs": 1, "learning_rate": 5e-3, "batch_size": 16,
                "calibration": {"target_layers": 2, "fraction": 0.25}},
    "pabee": {"strategy": "pabee", "epochs": 1, "learning_rate": 1e-3, "exit_learning_rate": 5e-3, "batch_size": 16,
              "calibration": {"max_accuracy_drop": 0.05, "fraction": 0.25}},
    "pcee": {"strategy": "pcee", "epochs": 1, "learning_rate": 1e-3, "exit_learning_rate": 5e-3, "batch_size": 16,
             "calibration": {"target_layers": 2, "fraction": 0.25}},
    "maxprob": {"strategy": "maxprob", "epochs": 1, "learning_rate": 1e-3, "exit_learning_rate": 5e-3,
                "batch_size": 16, "calibration": {"max_accuracy_drop": 0.05, "fraction": 0.25}},
    "berxit": {"strategy": "berxit", "epochs": 2, "learning_rate": 1e-3, "exit_learning_rate": 5e-3,
               "batch_size": 16, "calibration": {"target_layers": 2, "fraction": 0.25}},
    "consistentee": {"strategy": "consistentee", "init_epochs": 0.5, "rounds": 1, "policy_epochs": 1,
                     "task_epochs": 0.5, "alphas": [0.05, 0.1], "batch_size": 16,
                     "calibration": {"fraction": 0.25}},
    "cost_eff": {"strategy": "cost_eff", "exit_epochs": 0.5, "prune_steps": 2, "recover_epochs": 0.25,
                 "representation_epochs": 0.25, "prediction_epochs": 0.25, "batch_size": 16, "taylor_batches": 2,
                 "calibration": {"fraction": 0.25}},
}


def losses(value) -> list[float]:
    """Every training loss a stage recorded, in order (the keys ending in `_loss`)."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in ([v] if k.endswith("_loss") and isinstance(v, float)
                                                       else losses(v))]
    if isinstance(value, list):
        return [x for v in value for x in losses(v)]
    return []


def choices(info: dict) -> dict:
    """What a stage decided (discrete or calibrated): checked exactly, or to the tolerance."""
    out = {}
    for key in ("removed", "kept", "steps", "layer_map", "budget", "schedule", "layers"):
        if key in info:
            out[key] = info[key]
    if "calibration" in info:
        out["chosen"] = info["calibration"]["chosen"]
    return out


def observed(report: dict, model_dir: Path) -> tuple[dict, torch.nn.Module]:
    stage = report["stages"][1]
    model = CompressedModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = model(**inputs(batch=4, seed=11))
    return {"losses": losses(stage["info"]), "validation": stage["evaluation"]["validation"],
            "choices": choices(stage["info"]), "logits": out.logits.tolist(),
            "layers_executed": out.layers_executed.tolist()}, model


def close(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{where}: {len(got)} values, golden {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=TOLERANCE, abs_tol=TOLERANCE), f"{where}: {got} != golden {want}"
    else:
        assert got == want, f"{where}: {got!r} != golden {want!r}"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_strategy_trains_saves_reloads_exports_and_keeps_its_golden_values(name, tiny_recipe, tiny_task_file,
                                                                                 cli, tmp_path):
    stage = {**STAGES[name], "name": "stage"}
    recipe = tiny_recipe([TEACHER, stage, {"strategy": "export", "name": "onnx"}])
    report = Pipeline(load_recipe(recipe), tmp_path / "run").run()
    model_dir = tmp_path / "run" / "stages" / "01-stage" / "model"
    values, reloaded = observed(report, model_dir)

    # a process that never saw the model evaluates it from its directory alone: the same numbers
    fresh = cli("evaluate", model_dir, "--task", tiny_task_file, "--max-length", "16", "--batch-size", "16")
    assert fresh.code == 0, fresh.stderr[-2000:]
    assert {k: v for k, v in json.loads(fresh.stdout).items() if k != "parameters"} == values["validation"]

    # the model that the stage left really changed, and it reloads from its directory alone
    # it trained (a pruning stage instead chose: its choices are golden too)
    assert values["losses"] or name in ("structured_prune", "layer_prune"), "a training stage recorded no loss"
    export = report["stages"][2]["info"]["validation"]
    assert export["mismatched"] == 0 and export["max_abs_diff"] <= 1e-4  # same function, route by route
    assert report["final"]["validation"] == report["stages"][1]["evaluation"]["validation"]
    if reloaded.is_dynamic:
        assert export["one_at_a_time"]["mismatched"] == 0

    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if WRITE:
        golden[name] = values
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    assert name in golden, f"no golden values for {name!r}: COMPRESSKIT_WRITE_GOLDEN=1 to record them"
    close(values, golden[name], name)

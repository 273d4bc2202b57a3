"""Reproducible runs: the same recipe and seed give the same numbers and weights, bit for bit,
in any run directory, resumed or not, whatever the process did before."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe

STAGES = [
    # the encoder has no head: the first stage trains a fresh one, drawn from the recipe's seed
    {"strategy": "finetune", "name": "teacher", "epochs": 1, "learning_rate": 1e-3, "batch_size": 16},
    {"strategy": "hadskip", "name": "skip", "budget": 3, "gate_epochs": 0.5, "epochs_per_budget": 0.5,
     "batch_size": 16, "homotopic": False},
]


def without_timings(value):
    """A report minus what a clock measured (the only thing allowed to differ between two runs)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def weights(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted((run_dir / "stages").rglob("*.safetensors"))}


def run(recipe: Path, run_dir: Path) -> dict:
    torch.manual_seed(int.from_bytes(run_dir.name.encode(), "little") % 2**31)  # whatever ran before
    return Pipeline(load_recipe(recipe), run_dir).run()


def test_two_runs_and_a_resumed_one_are_bit_identical(tiny_recipe, tiny_encoder_dir, tmp_path):
    recipe = tiny_recipe(STAGES, model=str(tiny_encoder_dir))
    first, second = run(recipe, tmp_path / "a"), run(recipe, tmp_path / "elsewhere" / "b")
    assert without_timings(first) == without_timings(second)
    assert weights(tmp_path / "a") and weights(tmp_path / "a") == weights(tmp_path / "elsewhere" / "b")

    # a run that stopped after its first stage, resumed by a later process
    run(tiny_recipe(STAGES[:1], model=str(tiny_encoder_dir)), tmp_path / "resumed")
    resumed = run(tiny_recipe(STAGES, model=str(tiny_encoder_dir)), tmp_path / "resumed")
    assert "resuming: 1 of 2" in (tmp_path / "resumed" / "run.log").read_text()
    assert without_timings(resumed) == without_timings(first)
    assert weights(tmp_path / "resumed") == weights(tmp_path / "a")


def test_evaluate_is_deterministic(cli, tiny_encoder_dir, tiny_task_file):
    # a model without a head gets a fresh one: drawn from --seed, not from whatever the RNG held
    args = ("evaluate", tiny_encoder_dir, "--task", tiny_task_file, "--max-samples", "32")
    first, second = cli(*args), cli(*args)
    assert first.code == 0, first.stderr
    assert json.loads(first.stdout) == json.loads(second.stdout)
    other_seed = cli(*args, "--seed", "1")
    assert other_seed.code == 0 and json.loads(other_seed.stdout)["examples"] == 32


def test_length_grouped_training_is_reproducible_and_really_grouped(tiny_recipe, tiny_encoder_dir, tmp_path):
    grouped = tiny_recipe(STAGES[:1], model=str(tiny_encoder_dir), data={"max_length": 16, "group_by_length": True})
    first, second = run(grouped, tmp_path / "a"), run(grouped, tmp_path / "b")
    assert without_timings(first) == without_timings(second)
    assert weights(tmp_path / "a") == weights(tmp_path / "b")
    run(tiny_recipe(STAGES[:1], model=str(tiny_encoder_dir)), tmp_path / "random")
    assert weights(tmp_path / "random") != weights(tmp_path / "a")  # other batches: other weights

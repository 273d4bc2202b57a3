"""The pipeline: runs stages, reports, resumes after a kill, reruns what changed, never half-writes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from compresskit import registry
from compresskit.errors import RecipeError
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from compresskit.registry import strategies
from compresskit.strategies.finetune import FinetuneStrategy
from compresskit.training.trainer import TrainingConfig, default_loss, train
from tests.conftest import single_threaded_after_fork


def run(recipe: Path, run_dir: Path, overrides: list[str] | None = None) -> dict:
    return Pipeline(load_recipe(recipe, overrides), run_dir).run()


def stage_mtimes(run_dir: Path) -> dict[str, float]:
    return {p.name: (p / "stage.json").stat().st_mtime for p in sorted((run_dir / "stages").iterdir())
            if not p.name.startswith(".")}


def test_a_recipe_trains_evaluates_and_reports(tiny_recipe, tmp_path):
    recipe = tiny_recipe([{"strategy": "finetune", "name": "teacher", "epochs": 6, "learning_rate": 2e-3,
                           "batch_size": 8}])
    report = run(recipe, tmp_path / "run")
    stage = report["stages"][0]
    assert stage["name"] == "teacher" and stage["strategy"] == "finetune" and stage["seconds"] > 0
    # the keyword task is learnable: a real fine-tune gets well past chance
    assert stage["evaluation"]["validation"]["accuracy"] >= 0.9
    for model in ("baseline", "final"):
        profile = report[model]
        assert {"validation", "test"} <= set(profile)
        assert profile["validation"]["avg_layers"] == 4.0
        assert profile["flops_per_example"] > 0 and profile["parameters"] > 0
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"recipe.yaml", "environment.json", "run.log", "report.json", "progress.json", "stages"} <= files
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["seed"] == 7 and env["packages"]["torch"].startswith("2.")


def test_rerun_reuses_finished_stages_and_a_changed_stage_reruns_with_the_ones_after(tiny_recipe, tmp_path):
    recipe, run_dir = tiny_recipe(), tmp_path / "run"
    first = run(recipe, run_dir)
    before = stage_mtimes(run_dir)
    again = run(recipe, run_dir)
    assert stage_mtimes(run_dir) == before  # nothing retrained
    assert again["final"]["test"] == first["final"]["test"]
    run(recipe, run_dir, ["stages.again.learning_rate=1e-4"])
    after = stage_mtimes(run_dir)
    assert after["00-teacher"] == before["00-teacher"]
    assert after["01-again"] != before["01-again"]


def test_a_broken_recipe_is_rejected_before_any_stage_runs(tiny_recipe, tmp_path):
    recipe = tiny_recipe([{"strategy": "finetune", "name": "a", "epochs": 1},
                          {"strategy": "finetune", "name": "b", "epoch": 1}])
    with pytest.raises(RecipeError, match=r"stages\[1\].epoch"):
        run(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


class RowRecorder(FinetuneStrategy):
    """A fine-tune that records the training texts it was given."""

    name = "row_recorder"
    seen: ClassVar[dict[str, list[str]]] = {}

    def apply(self, state, ctx):
        self.seen[ctx.name] = list(state.raw["train"]["text_a"])
        return super().apply(state, ctx)


def test_a_stage_can_train_on_a_subset_and_the_stages_after_it_see_every_row(tiny_recipe, tmp_path, monkeypatch):
    strategies()
    monkeypatch.setitem(registry._REGISTRY, RowRecorder.name, RowRecorder)
    stage = {"strategy": "row_recorder", "epochs": 1, "learning_rate": 1e-3, "batch_size": 16}
    recipe = tiny_recipe([{**stage, "name": "small", "max_train_samples": 20},
                          {**stage, "name": "larger", "max_train_samples": 40},
                          {**stage, "name": "all"}])
    report = run(recipe, tmp_path / "run")
    seen = RowRecorder.seen
    assert len(seen["small"]) == 20 and len(seen["larger"]) == 40 and len(seen["all"]) > 40
    assert seen["larger"][:20] == seen["small"]  # nested subsets: one shuffle, cut at different lengths
    assert set(seen["larger"]) <= set(seen["all"])
    # evaluation splits are never cut
    evaluated = {s["name"]: s["evaluation"]["validation"]["examples"] for s in report["stages"]}
    assert len(set(evaluated.values())) == 1


class PausingFinetune(FinetuneStrategy):
    """A fine-tune that, when told to, stops mid-training and waits to be killed."""

    name = "pausing_finetune"
    pause_at_step: int | None = None  # set in the child process that is going to be killed

    def apply(self, state, ctx):
        if self.pause_at_step is None:
            return super().apply(state, ctx)
        steps = 0

        def loss_then_pause(model, batch):
            nonlocal steps
            steps += 1
            if steps == self.pause_at_step:
                (ctx.run_dir / "paused").write_text(str(steps))
                time.sleep(600)
            return default_loss(model, batch)

        settings = TrainingConfig.of(self.config)
        train(state.model, state.data["train"], None, state.task, state.tokenizer, settings, ctx.seed,
              loss_then_pause)
        return state


def run_and_pause(recipe: Path, run_dir: Path) -> None:
    single_threaded_after_fork()
    PausingFinetune.pause_at_step = 5
    run(recipe, run_dir)


@pytest.fixture
def pausing_strategy(monkeypatch):
    """Registered for one test only, so the registry the other tests see stays the built-in one."""
    strategies()  # load the built-ins first
    monkeypatch.setitem(registry._REGISTRY, PausingFinetune.name, PausingFinetune)


def test_a_run_killed_in_its_second_stage_resumes_there_and_ends_the_same(tiny_recipe, tmp_path, pausing_strategy):
    recipe = tiny_recipe([
        {"strategy": "finetune", "name": "teacher", "epochs": 2, "learning_rate": 1e-3, "batch_size": 16},
        {"strategy": "pausing_finetune", "name": "recover", "epochs": 2, "learning_rate": 5e-4, "batch_size": 8},
    ])
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    child = multiprocessing.get_context("fork").Process(target=run_and_pause, args=(recipe, killed))
    child.start()
    deadline = time.time() + 300
    while not (killed / "paused").exists():
        assert child.is_alive() and time.time() < deadline, "the run never reached its second stage"
        time.sleep(0.1)
    progress = json.loads((killed / "progress.json").read_text())
    assert progress == {**progress, "stage": 1, "status": "running"}
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert [p.name for p in (killed / "stages").iterdir() if not p.name.startswith(".")] == ["00-teacher"]
    teacher_written = stage_mtimes(killed)["00-teacher"]

    resumed = run(recipe, killed)
    assert stage_mtimes(killed)["00-teacher"] == teacher_written  # resumed, not redone
    assert "resuming: 1 of 2 stages already finished" in (killed / "run.log").read_text()
    assert not any(p.name.startswith(".tmp") for p in (killed / "stages").iterdir())

    uninterrupted = run(recipe, clean)
    assert resumed["final"]["test"] == uninterrupted["final"]["test"]
    assert resumed["final"]["validation"] == uninterrupted["final"]["validation"]


def test_a_stage_with_fresh_modules_ends_the_same_whether_earlier_stages_ran_or_were_loaded(tiny_recipe, tmp_path):
    """Exit heads are drawn at random: resuming after the teacher must not change them."""
    from compresskit.modeling.loading import load_model

    teacher = {"strategy": "finetune", "name": "teacher", "epochs": 1, "learning_rate": 1e-3, "batch_size": 16}
    exits = {"strategy": "pabee", "name": "exits", "epochs": 1, "batch_size": 16}
    run(tiny_recipe([teacher]), tmp_path / "resumed")  # the run that died after its first stage
    torch.manual_seed(1234)  # the resuming process starts from another RNG state
    resumed = run(tiny_recipe([teacher, exits]), tmp_path / "resumed")
    uninterrupted = run(tiny_recipe([teacher, exits]), tmp_path / "clean")
    assert resumed["final"]["validation"] == uninterrupted["final"]["validation"]
    a, _ = load_model(str(tmp_path / "resumed" / "stages" / "01-exits" / "model"))
    b, _ = load_model(str(tmp_path / "clean" / "stages" / "01-exits" / "model"))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_the_report_compares_the_final_model_with_the_chosen_baseline(tiny_recipe, tmp_path):
    recipe = tiny_recipe(baseline="input")
    report = run(recipe, tmp_path / "run")
    assert report["baseline"]["stage"] == "input" and report["final"]["stage"] == "again"
    # the ratios are taken against the input model, profiled in the same run
    retained = report["summary"]["validation_accuracy_retained"]
    assert retained == report["final"]["validation"]["accuracy"] / report["baseline"]["validation"]["accuracy"]
    assert report["summary"]["flops_speedup"] == 1.0 and report["summary"]["parameter_ratio"] == 1.0


def test_report_command_writes_markdown_and_plots(tiny_recipe, tmp_path):
    from compresskit.report.markdown import write_report

    recipe = tiny_recipe([
        {"strategy": "finetune", "name": "teacher", "epochs": 1, "learning_rate": 1e-3, "batch_size": 16},
        {"strategy": "hadskip", "name": "skip", "budget": 2, "gate_epochs": 0.5, "epochs_per_budget": 0.5,
         "batch_size": 16},
    ])
    run_dir = tmp_path / "run"
    Pipeline(load_recipe(recipe), run_dir).run()
    path = write_report(run_dir, measure=True, batch_size=4)
    text = path.read_text()
    assert "| teacher | finetune |" in text and "| skip | hadskip |" in text and "measured speed-up" in text
    assert (run_dir / "report" / "pareto.png").exists() and (run_dir / "report" / "layer_usage_skip.png").exists()
    assert "## Layer usage of `skip`" in text


def test_the_summary_ratios_of_known_profiles():
    from compresskit.report.results import summary

    def profile(flops, parameters, validation, test, layers):
        return {"flops_per_example": flops, "parameters": parameters, "validation": {"accuracy": validation,
                "avg_layers": layers}, "test": {"accuracy": test, "avg_layers": layers}}

    report = {"baseline": profile(8e9, 100, 0.9, 0.8, 12.0), "final": profile(2e9, 25, 0.81, 0.76, 3.0)}
    assert summary(report, ["validation", "test"], "accuracy") == pytest.approx(
        {"flops_speedup": 4.0, "parameter_ratio": 0.25, "layers_ratio": 0.25, "validation_accuracy_retained": 0.9,
         "test_accuracy_retained": 0.95})
    report["baseline"]["validation"]["avg_layers"] = 0.0  # a baseline that runs no layer: no ratio, no crash
    assert summary(report, ["validation", "test"], "accuracy")["layers_ratio"] is None

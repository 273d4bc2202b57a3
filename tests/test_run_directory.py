"""The run directory: the user's files are never touched, one run at a time, a cache keyed on contents."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from compresskit.errors import CompressKitError, TrainingError
from compresskit.files import DirectoryLock
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from tests.conftest import make_model_dir

TWO_STAGES = [
    {"strategy": "finetune", "name": "teacher", "epochs": 1, "learning_rate": 1e-3, "batch_size": 16},
    {"strategy": "finetune", "name": "again", "epochs": 1, "learning_rate": 5e-4, "batch_size": 16},
]


def run(recipe: Path, run_dir: Path) -> dict:
    return Pipeline(load_recipe(recipe), run_dir).run()


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def stage_written(run_dir: Path, stage: str) -> int:
    return (run_dir / "stages" / stage / "stage.json").stat().st_mtime_ns


@pytest.fixture
def users_directory(tmp_path) -> Path:
    """A directory of the user's own, with files whose names a run would also write."""
    home = tmp_path / "project"
    (home / "stages").mkdir(parents=True)
    (home / "recipe.yaml").write_text("my own recipe\n")
    (home / "report.json").write_text('{"mine": true}\n')
    (home / "stages" / "mine.txt").write_text("keep me\n")
    return home


@pytest.mark.parametrize("output", [".", "..", "{home}", "{home}/stages/.."])
def test_apply_never_writes_into_the_current_directory_its_parents_or_a_users_directory(
        cli, tiny_recipe, users_directory, output):
    recipe = tiny_recipe(TWO_STAGES[:1])
    before = snapshot(users_directory.parent)
    result = cli("apply", recipe, "-o", output.format(home=users_directory), cwd=users_directory)
    assert result.code == 2 and "Traceback" not in result.stderr
    assert "current directory" in result.stderr or "did not write" in result.stderr
    assert snapshot(users_directory.parent) == before


def test_a_recipe_named_dot_dot_is_rejected_before_anything_is_written(cli, tiny_recipe, users_directory):
    recipe = tiny_recipe(TWO_STAGES[:1], name="..")
    before = snapshot(users_directory)
    for command in ("validate", "apply"):
        result = cli(command, recipe, cwd=users_directory / "stages")
        assert result.code == 2 and "unsafe name '..'" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(users_directory) == before


def test_a_rerun_removes_only_what_compresskit_wrote(tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    run(tiny_recipe(TWO_STAGES), run_dir)
    (run_dir / "stages" / "mine.txt").write_text("keep me\n")
    (run_dir / "stages" / "99-notes").mkdir()  # looks like a stage directory, is not one of ours
    (run_dir / "stages" / "99-notes" / "a.txt").write_text("mine too\n")
    run(tiny_recipe(TWO_STAGES[:1]), run_dir)  # one stage fewer: the second stage's directory goes
    assert not (run_dir / "stages" / "01-again").exists()
    assert (run_dir / "stages" / "mine.txt").read_text() == "keep me\n"
    assert (run_dir / "stages" / "99-notes" / "a.txt").read_text() == "mine too\n"


def test_a_second_apply_on_a_busy_directory_is_refused_and_the_first_finishes(cli, tiny_recipe, tmp_path):
    long = [{**TWO_STAGES[0], "epochs": 40, "batch_size": 4}]
    recipe, run_dir = tiny_recipe(long), tmp_path / "run"
    first = subprocess.Popen([str(Path(sys.executable).with_name("compresskit")), "apply", str(recipe), "-o",
                              str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run_dir / "progress.json").exists():  # written once the first holds the lock
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.2)
    second = cli("apply", recipe, "-o", run_dir)
    assert first.poll() is None, "the first run ended too early for the test to mean anything"
    assert second.code == 2 and "in use by another `compresskit apply`" in second.stderr
    assert "Traceback" not in second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert json.loads((run_dir / "report.json").read_text())["stages"][0]["name"] == "teacher"


def test_the_lock_is_free_again_once_its_holder_is_gone(tmp_path):
    with DirectoryLock(tmp_path, "test"):
        with pytest.raises(CompressKitError, match="in use"), DirectoryLock(tmp_path, "test"):
            pass
    with DirectoryLock(tmp_path, "test"):  # released
        pass


def test_replacing_the_input_model_at_the_same_path_reruns_every_stage(tiny_recipe, tmp_path):
    model_dir = make_model_dir(tmp_path / "model", seed=0)
    recipe, run_dir = tiny_recipe(TWO_STAGES, model=str(model_dir)), tmp_path / "run"
    run(recipe, run_dir)
    written = stage_written(run_dir, "00-teacher")
    trained = (run_dir / "stages" / "00-teacher" / "model" / "model.safetensors").read_bytes()
    make_model_dir(model_dir, seed=1)  # other weights, same path, same file names and sizes
    run(recipe, run_dir)
    assert stage_written(run_dir, "00-teacher") != written
    assert (run_dir / "run.log").read_text().count("stage 1/2 'teacher' (finetune) started") == 2  # trained again
    assert (run_dir / "stages" / "00-teacher" / "model" / "model.safetensors").read_bytes() != trained


def test_replacing_a_data_file_reruns_the_stages(tiny_recipe, tiny_task, tmp_path):
    task = dict(tiny_task, data_files=dict(tiny_task["data_files"]))
    train = tmp_path / "train.csv"
    train.write_text(Path(task["data_files"]["train"]).read_text())
    task["data_files"]["train"] = str(train)
    recipe, run_dir = tiny_recipe(TWO_STAGES[:1], task=task), tmp_path / "run"
    run(recipe, run_dir)
    written = stage_written(run_dir, "00-teacher")
    run(recipe, run_dir)
    assert stage_written(run_dir, "00-teacher") == written  # unchanged inputs: reused
    lines = train.read_text().splitlines()
    train.write_text("\n".join(lines[:1] + lines[1:][::-1]) + "\n")  # the same rows, another order
    run(recipe, run_dir)
    assert stage_written(run_dir, "00-teacher") != written


@pytest.mark.parametrize("damage", ["truncate", "flip a bit", "delete"])
def test_a_damaged_finished_stage_is_detected_and_recomputed(tiny_recipe, tmp_path, caplog, damage):
    recipe, run_dir = tiny_recipe(TWO_STAGES), tmp_path / "run"
    first = run(recipe, run_dir)
    weights = run_dir / "stages" / "01-again" / "model" / "model.safetensors"
    intact = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(intact[: len(intact) // 2])
    elif damage == "flip a bit":  # deep inside a tensor: the file still loads, the numbers are wrong
        flipped = bytearray(intact)
        flipped[len(flipped) // 2] ^= 0x10
        weights.write_bytes(bytes(flipped))
    else:
        weights.unlink()
    teacher = stage_written(run_dir, "00-teacher")
    again = run(recipe, run_dir)
    assert "stage 'again' is damaged" in caplog.text
    assert stage_written(run_dir, "00-teacher") == teacher  # only the damaged stage ran again
    assert weights.read_bytes() == intact  # recomputed, bit for bit
    assert again["final"] == first["final"]


def test_a_killed_exports_leftovers_are_removed_by_the_next_export(tiny_model_dir, tmp_path):
    from compresskit.export import export_model
    from compresskit.modeling.loading import load_model

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid no longer runs
    leftover = tmp_path / f".onnx.partial-{dead.pid}-abc123"
    leftover.mkdir()
    (leftover / "layer_0.onnx").write_bytes(b"\0" * 1000)
    model, tokenizer = load_model(str(tiny_model_dir))
    export_model(model, tokenizer, tmp_path / "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


def test_a_pickle_only_model_is_refused_with_how_to_convert_it(cli, tiny_recipe, tiny_task_file, tmp_path):
    from transformers import AutoModelForSequenceClassification

    pickled = tmp_path / "pickled"
    AutoModelForSequenceClassification.from_pretrained(make_model_dir(tmp_path / "source")).save_pretrained(
        pickled, safe_serialization=False)
    (tmp_path / "source" / "vocab.txt").rename(pickled / "vocab.txt")
    assert (pickled / "pytorch_model.bin").exists() and not list(pickled.glob("*.safetensors"))
    for args in (("validate", tiny_recipe(TWO_STAGES[:1], model=str(pickled))),
                 ("evaluate", pickled, "--task", tiny_task_file),
                 ("export", pickled, "--output", tmp_path / "onnx")):
        result = cli(*args)
        assert result.code == 2 and "safetensors only" in result.stderr and "save_pretrained" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "onnx").exists()


def test_a_diverging_loss_stops_the_stage_and_leaves_no_pretend_result(tiny_recipe, tmp_path, monkeypatch):
    from compresskit.strategies import finetune

    def nan_after_a_step(model, batch, calls=[0]):  # noqa: B006  (counts calls)
        calls[0] += 1
        loss = model(**{k: v for k, v in batch.items() if k != "idx"}).loss
        return loss * torch.tensor(float("nan")) if calls[0] > 2 else loss

    original = finetune.train
    monkeypatch.setattr(finetune, "train", lambda *a, **k: original(*a, **{**k, "loss_fn": nan_after_a_step}))
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError, match="the loss is nan.*Lower the learning rate"):
        run(tiny_recipe(TWO_STAGES[:1]), run_dir)
    assert not (run_dir / "report.json").exists()
    assert not [p for p in (run_dir / "stages").iterdir() if not p.name.startswith(".")]


def test_validate_prints_each_stage_with_the_depth_it_leaves(cli, tiny_recipe):
    recipe = tiny_recipe([TWO_STAGES[0], {"strategy": "budgeted_exit", "k": 2, "epochs": 1}])
    result = cli("validate", recipe)
    assert result.code == 0, result.stderr
    assert "teacher (finetune, 4 layers), budgeted_exit (budgeted_exit, 2 layers)" in result.stdout
    assert yaml.safe_load(recipe.read_text())["stages"][1]["k"] == 2

"""The CLI: bad input is a message and exit code 2, never a traceback; the commands work.

Every command runs as a process of its own (the `cli` fixture: tests/cli_zygote.py), so exit codes
and tracebacks are what a user's shell sees; the installed console script itself is run too.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import console_script


def test_strategies_lists_names_kinds_and_descriptions(cli):
    result = cli("strategies")
    assert result.code == 0
    assert any(line.split()[:2] == ["finetune", "training"] for line in result.output.splitlines())


def test_assets_lists_every_packaged_asset(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_CACHE", str(tmp_path))
    result = cli("assets")
    assert result.code == 0
    for name in ("minilm-l6", "minilm-l3", "mpnet-12", "rotten_tomatoes", "subjectivity"):
        assert name in result.output
    assert "missing" in result.output


def test_validate_accepts_a_good_recipe(cli, tiny_recipe):
    result = cli("validate", str(tiny_recipe()))
    assert result.code == 0 and "2 stage(s)" in result.output


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("version: 1\nstages: [\n", "not valid YAML"),
    ({"version": 1, "name": "x", "model": "m", "task": "rotten_tomatoes",
      "stages": [{"strategy": "finetune", "epochs": -1}]}, "stages[0].epochs"),
    ({"version": 1, "name": "x", "model": "m", "task": "sst3", "stages": [{"strategy": "finetune"}]},
     "did you mean 'sst2'"),
])
@pytest.mark.parametrize("command", ["validate", "apply"])
def test_bad_recipes_exit_2_with_a_located_message(cli, tmp_path, command, content, message):
    path = tmp_path / "r.yaml"
    if content is not None:
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    result = cli(command, str(path))
    assert result.code == 2
    assert message in result.output


def test_a_bad_override_exits_2(cli, tiny_recipe):
    result = cli("validate", str(tiny_recipe()), "--set", "stages.nosuch.epochs=1")
    assert result.code == 2 and "no stage named 'nosuch'" in result.output


def test_an_unknown_model_exits_2_naming_the_packaged_ones(cli, tiny_recipe, tmp_path):
    result = cli("apply", str(tiny_recipe()), "-o", str(tmp_path / "run"), "--set", f"model={tmp_path}/none")
    assert result.code == 2
    assert "no such directory" in result.output and "minilm-l6" in result.output


def test_evaluate_prints_metrics_and_rejects_unknown_tasks(cli, tiny_model_dir, tiny_task_file, tmp_path,
                                                          monkeypatch):
    result = cli("evaluate", str(tiny_model_dir), "--task", str(tiny_task_file), "--split", "test")
    assert result.code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["examples"] == 48 and 0 <= metrics["accuracy"] <= 1 and metrics["avg_layers"] == 4.0
    monkeypatch.setenv("COMPRESSKIT_CACHE", str(tmp_path))
    result = cli("evaluate", str(tiny_model_dir), "--task", "rotten_tomatoe")
    assert result.code == 2 and "Did you mean 'rotten_tomatoes'" in result.output
    result = cli("evaluate", str(tiny_model_dir), "--task", "rotten_tomatoes")
    assert result.code == 2 and "compresskit assets install rotten_tomatoes" in result.output


def test_debug_shows_the_traceback_and_without_it_there_is_none(cli, tmp_path):
    absent = tmp_path / "absent.yaml"
    plain = cli("validate", absent)
    assert plain.code == 2 and "does not exist" in plain.stderr and "Traceback" not in plain.stderr
    debug = cli("--debug", "validate", absent)
    assert debug.code == 1 and "Traceback (most recent call last)" in debug.stderr and "RecipeError" in debug.stderr


def test_apply_runs_a_recipe_prints_the_summary_and_writes_the_report(cli, tiny_recipe, tmp_path):
    result = cli("apply", str(tiny_recipe()), "-o", str(tmp_path / "run"), "--set", "stages.again.epochs=1")
    assert result.code == 0, result.output
    assert "flops_speedup" in result.output
    assert (tmp_path / "run" / "report.json").exists()
    assert {"report.md", "pareto.png"} <= {p.name for p in (tmp_path / "run" / "report").iterdir()}


def test_the_console_script_is_installed_and_answers_bad_input_with_exit_2(tmp_path):
    shown = console_script("--help")
    assert shown.code == 0 and "apply" in shown.stdout
    bad = console_script("validate", tmp_path / "absent.yaml")
    assert bad.code == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_two_processes_train_and_gather_metrics_correctly(tiny_recipe, tmp_path):
    """`--num-processes 2` runs DDP on CPU; metrics cover each example exactly once."""
    recipe = tiny_recipe([{"strategy": "finetune", "name": "teacher", "epochs": 10, "learning_rate": 2e-3,
                           "batch_size": 8}])
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "compresskit", "apply", str(recipe), "-o", str(run_dir),
                          "--num-processes", "2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["processes"] == 2
    validation = report["final"]["validation"]
    assert validation["examples"] == 48  # gathered, with the padding duplicates dropped
    # the gathered metric equals a single-process evaluation of the saved model
    from compresskit.data.loading import load_splits, resolve_task, tokenize
    from compresskit.evaluation.evaluate import evaluate
    from compresskit.modeling.loading import load_model

    task = resolve_task(yaml.safe_load(recipe.read_text())["task"])
    model, tokenizer = load_model(str(run_dir / "stages/00-teacher/model"), task)
    data = tokenize(load_splits(task, ["validation"]), tokenizer, 16)
    assert evaluate(model, data["validation"], task, tokenizer, 16)["accuracy"] == validation["accuracy"]
    assert validation["accuracy"] >= 0.8

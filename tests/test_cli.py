"""The CLI: bad input is a message and exit code 2, never a traceback; the commands work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from compresskit.cli import main


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    return result


def test_strategies_lists_names_kinds_and_descriptions():
    result = invoke("strategies")
    assert result.exit_code == 0
    assert any(line.split()[:2] == ["finetune", "training"] for line in result.output.splitlines())


def test_assets_lists_every_packaged_asset(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_CACHE", str(tmp_path))
    result = invoke("assets")
    assert result.exit_code == 0
    for name in ("minilm-l6", "minilm-l3", "mpnet-12", "rotten_tomatoes", "subjectivity"):
        assert name in result.output
    assert "missing" in result.output


def test_validate_accepts_a_good_recipe(tiny_recipe):
    result = invoke("validate", str(tiny_recipe()))
    assert result.exit_code == 0 and "2 stage(s)" in result.output


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("version: 1\nstages: [\n", "not valid YAML"),
    ({"version": 1, "name": "x", "model": "m", "task": "rotten_tomatoes",
      "stages": [{"strategy": "finetune", "epochs": -1}]}, "stages[0].epochs"),
    ({"version": 1, "name": "x", "model": "m", "task": "sst3", "stages": [{"strategy": "finetune"}]},
     "did you mean 'sst2'"),
])
@pytest.mark.parametrize("command", ["validate", "apply"])
def test_bad_recipes_exit_2_with_a_located_message(tmp_path, command, content, message):
    path = tmp_path / "r.yaml"
    if content is not None:
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    result = invoke(command, str(path))
    assert result.exit_code == 2
    assert message in result.output


def test_a_bad_override_exits_2(tiny_recipe):
    result = invoke("validate", str(tiny_recipe()), "--set", "stages.nosuch.epochs=1")
    assert result.exit_code == 2 and "no stage named 'nosuch'" in result.output


def test_an_unknown_model_exits_2_naming_the_packaged_ones(tiny_recipe, tmp_path):
    result = invoke("apply", str(tiny_recipe()), "-o", str(tmp_path / "run"), "--set", f"model={tmp_path}/none")
    assert result.exit_code == 2
    assert "no such directory" in result.output and "minilm-l6" in result.output


def test_evaluate_prints_metrics_and_rejects_unknown_tasks(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_CACHE", str(tmp_path))
    result = invoke("evaluate", str(tiny_model_dir), "--task", "rotten_tomatoe")
    assert result.exit_code == 2 and "Did you mean 'rotten_tomatoes'" in result.output
    result = invoke("evaluate", str(tiny_model_dir), "--task", "rotten_tomatoes")
    assert result.exit_code == 2 and "compresskit assets install rotten_tomatoes" in result.output


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "validate", str(tmp_path / "absent.yaml")])
    assert result.exit_code != 0 and result.exception is not None


def test_apply_runs_a_recipe_prints_the_summary_and_writes_the_report(tiny_recipe, tmp_path):
    result = invoke("apply", str(tiny_recipe()), "-o", str(tmp_path / "run"), "--set", "stages.again.epochs=1")
    assert result.exit_code == 0, result.output
    assert "flops_speedup" in result.output
    assert (tmp_path / "run" / "report.json").exists()
    assert {"report.md", "pareto.png"} <= {p.name for p in (tmp_path / "run" / "report").iterdir()}


def test_the_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "compresskit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "apply" in out.stdout


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

"""Greedy layer pruning: the search, its baselines, parallel candidates and resuming a killed search."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import pytest

from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from compresskit.strategies import layer_prune
from tests.conftest import single_threaded_after_fork

TEACHER = {"strategy": "finetune", "name": "teacher", "epochs": 6, "learning_rate": 2e-3, "batch_size": 8}
GREEDY = {"strategy": "layer_prune", "name": "prune", "target_layers": 2, "candidate_epochs": 1,
          "learning_rate": 1e-3, "batch_size": 8}


def run(recipe, run_dir):
    return Pipeline(load_recipe(recipe), run_dir).run()


@pytest.mark.parametrize("workers", [1, 2])
def test_greedy_search_scores_every_candidate_and_removes_the_best(tiny_recipe, tmp_path, workers):
    report = run(tiny_recipe([TEACHER, {**GREEDY, "workers": workers}]), tmp_path / "run")
    info = report["stages"][1]["info"]
    steps = info["steps"]
    assert [len(s["scores"]) for s in steps] == [4, 3]  # every remaining layer was a candidate
    for step in steps:
        best = max(step["scores"].values())
        assert step["scores"][str(step["removed"])] == best
        ties = [int(k) for k, v in step["scores"].items() if v == best]
        assert step["removed"] == max(ties)  # ties: the higher layer goes
    assert sorted(info["kept"] + info["removed"]) == [0, 1, 2, 3]
    assert report["final"]["num_layers"] == 2 and info["search_seconds"] > 0
    assert not any(p.name.startswith(".checkpoint") for p in (tmp_path / "run" / "stages").iterdir())


@pytest.mark.parametrize("stage, kept", [
    ({"method": "top", "target_layers": 3}, [0, 1, 2]),
    ({"method": "explicit", "layers": [0, 2]}, [1, 3]),
])
def test_baselines_drop_the_layers_they_say(tiny_recipe, tmp_path, stage, kept):
    report = run(tiny_recipe([TEACHER, {"strategy": "layer_prune", "name": "prune", **stage}]), tmp_path / "run")
    assert report["stages"][1]["info"]["kept"] == kept
    config = json.loads((tmp_path / "run/stages/01-prune/model/config.json").read_text())
    assert [layer["source"] for layer in config["layers"]] == kept


def search_until_killed(recipe, run_dir):
    single_threaded_after_fork()
    real = layer_prune.score_candidate
    calls = {"n": 0}

    def pausing(*args):
        calls["n"] += 1
        if calls["n"] == 3:  # two candidates are scored and checkpointed, the third never finishes
            (run_dir / "paused").write_text("3")
            time.sleep(600)
        return real(*args)

    layer_prune.score_candidate = pausing
    run(recipe, run_dir)


def test_a_killed_search_resumes_at_the_candidate_it_was_on(tiny_recipe, tmp_path, monkeypatch):
    recipe, run_dir = tiny_recipe([TEACHER, GREEDY]), tmp_path / "run"
    child = multiprocessing.get_context("fork").Process(target=search_until_killed, args=(recipe, run_dir))
    child.start()
    deadline = time.time() + 300
    while not (run_dir / "paused").exists():
        assert child.is_alive() and time.time() < deadline
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.join()

    scored = []
    real = layer_prune.score_candidate
    monkeypatch.setattr(layer_prune, "score_candidate", lambda *a: scored.append(a[1]) or real(*a))
    report = run(recipe, run_dir)
    assert len(scored) == 7 - 2  # 4 + 3 candidates in all, 2 already scored before the kill
    assert report["final"]["num_layers"] == 2

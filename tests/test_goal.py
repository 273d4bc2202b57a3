"""The recipe's `goal:`: validated before anything runs, met on held-out training rows, reported."""

from __future__ import annotations

import json

import pytest

from compresskit.data.tasks import KNOWN_TASKS
from compresskit.errors import CompressKitError, RecipeError
from compresskit.goal import GoalConfig, GoalTarget
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe

TEACHER = {"strategy": "finetune", "name": "teacher", "epochs": 6, "learning_rate": 2e-3, "batch_size": 8}
EXITS = {"strategy": "pabee", "name": "exits", "epochs": 3, "learning_rate": 1e-3, "exit_learning_rate": 5e-3,
         "batch_size": 8}
SKIP = {"strategy": "hadskip", "name": "skip", "budget": 1, "beta": 50.0, "gate_epochs": 0.5, "epochs_per_budget": 1,
        "homotopic": True, "batch_size": 8, "learning_rate": 1e-3}
TASK = KNOWN_TASKS["rotten_tomatoes"]


def target(baseline: float = 0.9, ms: float | None = None, **goal) -> GoalTarget:
    return GoalTarget(GoalConfig(**goal), TASK, baseline, ms)


# ---- choosing -------------------------------------------------------------------------------

POINTS = [{"budget": 4, "accuracy": 0.90, "avg_layers": 4.0}, {"budget": 3, "accuracy": 0.89, "avg_layers": 3.1},
          {"budget": 2, "accuracy": 0.86, "avg_layers": 2.0}, {"budget": 1, "accuracy": 0.70, "avg_layers": 1.0}]


def test_an_accuracy_goal_keeps_the_fastest_point_within_the_bound():
    assert target(max_accuracy_drop=0.02).choose([dict(p) for p in POINTS], "budget")["budget"] == 3
    assert target(max_accuracy_drop=0.05).choose([dict(p) for p in POINTS], "budget")["budget"] == 2
    # relative: 95% of 0.9 is 0.855
    assert target(max_relative_drop=0.05).choose([dict(p) for p in POINTS], "budget")["budget"] == 2


def test_a_speed_goal_keeps_the_most_accurate_point_fast_enough_and_times_only_what_it_needs():
    timed = []

    def timing(point):
        timed.append(point["budget"])
        return {"ms_per_example": point["avg_layers"], "speedup": 8.0 / point["avg_layers"]}

    goal = target(ms=8.0, min_speedup=2.5)
    assert goal.choose([dict(p) for p in POINTS], "budget", timing)["budget"] == 3  # 8 / 3.1 = 2.6x
    assert sorted(timed) == [1, 2, 3, 4]
    timed.clear()  # with an accuracy bound, points below it are never timed
    both = target(ms=8.0, min_speedup=2.5, max_accuracy_drop=0.05)
    assert both.choose([dict(p) for p in POINTS], "budget", timing)["budget"] == 2
    assert sorted(timed) == [2, 3, 4]


def test_a_goal_no_point_meets_fails_naming_the_best_point_reached():
    with pytest.raises(CompressKitError, match=r"no budget meets the goal.*Best reached: accuracy 0.9000 at 4.00"):
        target(max_accuracy_drop=0.0, baseline=0.95).choose([dict(p) for p in POINTS], "budget")


@pytest.mark.parametrize("goal, message", [
    ({}, "at least one of"),
    ({"max_accuracy_drop": 0.01, "max_relative_drop": 0.05}, "only one of"),
    ({"min_speedup": 0.5}, "greater than or equal to 1"),
    ({"max_accuracy_drop": 2}, "less than 1"),
    ({"max_latency_ms": 0}, "greater than 0"),
    ({"max_accuracy_drop": 0.01, "runtime": "tensorrt"}, "pytorch"),
    ({"max_accuracy_drop": 0.01, "speed": 3}, "unknown key"),
], ids=["empty", "two-drops", "speedup-below-1", "drop-above-1", "zero-latency", "unknown-runtime", "typo"])
def test_a_meaningless_goal_is_rejected_at_validate(tiny_recipe, goal, message):
    with pytest.raises(RecipeError, match=message) as err:
        load_recipe(tiny_recipe([TEACHER, EXITS], goal=goal))
    assert "goal" in str(err.value)


def test_a_goal_without_a_stage_it_can_steer_or_before_its_baseline_is_rejected(tiny_recipe):
    with pytest.raises(RecipeError, match="goal: no stage of this recipe has a knob"):
        load_recipe(tiny_recipe(goal={"max_accuracy_drop": 0.01}))
    with pytest.raises(RecipeError, match=r"stages\[0\]: the goal is judged against the baseline \('exits'\)"):
        load_recipe(tiny_recipe([EXITS], goal={"max_accuracy_drop": 0.01}))
    with pytest.raises(RecipeError, match=r"stages\[1\].calibration.target_layers: the recipe's goal chooses"):
        load_recipe(tiny_recipe([TEACHER, {**EXITS, "calibration": {"target_layers": 2}}],
                                goal={"max_accuracy_drop": 0.01}))
    assert load_recipe(tiny_recipe([EXITS], goal={"max_accuracy_drop": 0.01}, baseline="input"))


# ---- on tiny models ---------------------------------------------------------------------------

def test_hadskip_descends_while_the_goal_holds_and_keeps_the_budget_it_asks_for(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    report = Pipeline(load_recipe(tiny_recipe([TEACHER, SKIP], goal={"max_accuracy_drop": 0.1})), run).run()
    goal, info = report["goal"], report["stages"][1]["info"]
    floor = goal["heldout"]["floor"]
    points = info["goal"]["candidates"]
    chosen = info["goal"]["chosen"]
    assert chosen["accuracy"] >= floor and info["budget"] == chosen["budget"]
    # the descent stopped at the first budget below the bound, or at the lowest budget
    assert all(p["accuracy"] >= floor for p in points[:-1])
    assert points[-1]["accuracy"] < floor or points[-1]["budget"] == 1
    # no budget the goal accepts is faster than the chosen one
    assert chosen["avg_layers"] == min(p["avg_layers"] for p in points if p["accuracy"] >= floor)
    # the final model is the chosen budget's: its held-out depth is the chosen point's
    assert report["final"]["validation"]["avg_layers"] == pytest.approx(chosen["avg_layers"], abs=1.0)
    saved = json.loads((run / "goal.json").read_text())
    assert saved["score"] == goal["heldout"]["baseline_score"] and saved["baseline"] == "teacher"
    assert set(goal["splits"]) == {"validation", "test"} and isinstance(goal["met"], bool)


def test_an_unmeetable_goal_stops_the_run_naming_the_best_point_and_leaves_no_model(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    recipe = load_recipe(tiny_recipe([TEACHER, {**SKIP, "homotopic": False, "budget": 1}],
                                     goal={"max_accuracy_drop": 0.0, "min_speedup": 50}))
    with pytest.raises(CompressKitError, match=r"no budget of the homotopy meets the goal.*Best reached"):
        Pipeline(recipe, run).run()
    assert not list(run.glob("stages/01-skip*/model")) and not (run / "report.json").exists()


def test_early_exits_calibrate_on_the_goals_heldout_rows(tiny_recipe, tmp_path):
    report = Pipeline(load_recipe(tiny_recipe([TEACHER, EXITS], goal={"max_accuracy_drop": 0.2})),
                      tmp_path / "run").run()
    calibration = report["stages"][1]["info"]["calibration"]
    assert calibration["examples"] == 10  # the goal's held-out rows (10% of 96), not the stage's own split
    chosen, floor = calibration["chosen"], report["goal"]["heldout"]["floor"]
    assert chosen["accuracy"] >= floor
    assert chosen["avg_layers"] == min(r["avg_layers"] for r in calibration["table"] if r["accuracy"] >= floor)
    assert report["goal"]["chosen"]["exits"] == chosen


def test_a_speed_goal_is_timed_and_rechecked_on_the_evaluation_split(tiny_recipe, tmp_path):
    # tiny models are all overhead (exits at batch 1 are slower than no exits): a bound every point meets
    goal = {"max_latency_ms": 1e4, "timing_examples": 8, "timing_rounds": 1}
    report = Pipeline(load_recipe(tiny_recipe([TEACHER, EXITS], goal=goal)), tmp_path / "run").run()
    table = report["stages"][1]["info"]["calibration"]["table"]
    assert all(row["speedup"] > 0 and row["ms_per_example"] > 0 for row in table)
    chosen = report["stages"][1]["info"]["calibration"]["chosen"]
    assert chosen["accuracy"] == max(row["accuracy"] for row in table)  # speed only: the most accurate
    speed = report["goal"]["speed"]
    assert speed["split"] == "validation" and speed["batch_size"] == 1 and speed["runtime"] == "pytorch"
    assert speed["speedup"] == pytest.approx(speed["baseline_ms_per_example"] / speed["ms_per_example"])


def test_changing_the_goal_reruns_only_the_stages_it_steers(tiny_recipe, tmp_path):
    first = Pipeline(load_recipe(tiny_recipe([TEACHER, EXITS], goal={"max_accuracy_drop": 0.2})), tmp_path / "run")
    first.run()
    second = Pipeline(load_recipe(tiny_recipe([TEACHER, EXITS], goal={"max_accuracy_drop": 0.05})), tmp_path / "run")
    second.fingerprints = second._fingerprints()
    assert second.fingerprints[0] == first.fingerprints[0] and second.fingerprints[1] != first.fingerprints[1]
    assert second.finished_stages() == 1
    other_rows = Pipeline(load_recipe(tiny_recipe([TEACHER, EXITS], goal={"max_accuracy_drop": 0.2,
                                                                          "heldout_fraction": 0.2})), tmp_path / "x")
    assert other_rows._fingerprints()[0] != first.fingerprints[0]  # other held-out rows: other training rows


def test_the_report_and_the_model_card_state_the_goal_and_whether_it_holds(tiny_recipe, tmp_path):
    from compresskit.report.markdown import write_report

    run = tmp_path / "run"
    report = Pipeline(load_recipe(tiny_recipe([TEACHER, EXITS], goal={"max_accuracy_drop": 0.2})), run).run()
    card = (run / "stages" / "01-exits" / "model" / "README.md").read_text()
    goal = report["goal"]
    assert "## Goal" in card and goal["description"] in card
    assert f"{goal['splits']['test']['final']:.4f}" in card and ("NOT met" in card) != goal["met"]
    markdown = write_report(run).read_text()
    assert "## Goal" in markdown and (run / "report" / "goal_exits.png").stat().st_size > 0


def test_the_trivial_routes_are_trained_and_measured_beside_the_result(tiny_recipe, tmp_path, tiny_model_dir):
    from compresskit.report.markdown import write_report

    run = tmp_path / "run"
    skip = {**SKIP, "homotopic": False, "budget": 2}
    settings = {"baselines": ["first_k", "smaller_model"], "smaller_model": str(tiny_model_dir), "epochs": 2,
                "learning_rate": 1e-3, "batch_size": 16, "timing_examples": 8}
    report = Pipeline(load_recipe(tiny_recipe([TEACHER, skip], report=settings)), run).run()
    routes = {m["name"]: m for m in report["trivial_routes"]["models"]}
    assert set(routes) == {"baseline", "final", "first_k", "smaller_model"}
    depth = max(1, round(report["final"]["validation"]["avg_layers"]))  # at least one layer
    assert routes["first_k"]["num_layers"] == depth and f"first {depth} layers of 'teacher'" in \
        routes["first_k"]["description"]
    assert all(m["ms_per_example"] > 0 and m["test"]["accuracy"] >= 0 for m in routes.values())
    assert routes["baseline"]["speedup"] == 1.0
    assert (run / "baselines" / "first_k" / "model" / "config.json").exists()
    # a second report reuses the trained routes
    stamp = (run / "baselines" / "first_k" / "result.json").stat().st_mtime_ns
    Pipeline(load_recipe(tiny_recipe([TEACHER, skip], report=settings)), run).run()
    assert (run / "baselines" / "first_k" / "result.json").stat().st_mtime_ns == stamp
    markdown = write_report(run).read_text()
    assert "first_k" in markdown and "smaller_model" in markdown and (run / "report" / "routes.png").exists()
    card = (run / "stages" / "01-skip" / "model" / "README.md").read_text()
    assert "## Against the trivial routes" in card and f"{routes['first_k']['test']['accuracy']:.4f}" in card


def test_a_bad_goal_key_is_located_inside_the_goal(tiny_recipe):
    # `goal` is optional (GoalConfig | None): its errors were once reported at `goal`, the key lost
    with pytest.raises(RecipeError, match=r"goal\.batch_size: Input should be greater than or equal to 1"):
        load_recipe(tiny_recipe([TEACHER, EXITS], goal={"max_accuracy_drop": 0.01, "batch_size": 0}))


def test_a_speed_goal_times_the_baseline_beside_each_candidate_taking_turns(monkeypatch):
    """A ratio of two clocks read minutes apart on a shared machine is skewed by whatever ran between."""
    import compresskit.goal as goal_module

    calls = []

    class Recorder:  # a model that records its calls (one per batch)
        def __init__(self, name):
            self.name, self.training = name, False

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def __call__(self, **batch):
            calls.append(self.name)

    monkeypatch.setattr(goal_module, "loader", lambda rows, tokenizer, batch_size: [{"input_ids": None}])
    monkeypatch.setattr(goal_module, "model_inputs", lambda batch: {})
    rows = type("Rows", (), {"select": lambda self, index: list(index), "__len__": lambda self: 8})()
    loaded = []
    goal = GoalTarget(GoalConfig(min_speedup=2, timing_rounds=3), TASK, 0.9, 1000.0,
                      baseline_run=lambda: loaded.append(1) or (Recorder("baseline"), rows, None))
    point = goal.timing(Recorder("candidate"), rows, None)
    assert calls == ["baseline", "candidate"] * 4  # a warm-up pass each, then three timed rounds in turn
    assert point["speedup"] == pytest.approx(point["baseline_ms_per_example"] / point["ms_per_example"])
    assert loaded == [1]  # the stale one-off baseline time (1000 ms) is not used


def test_a_speed_only_goal_claims_no_accuracy_bound_in_the_report():
    from compresskit.report.model_card import goal_lines

    split = {"baseline": 0.87, "final": 0.75, "drop": 0.12, "accuracy_holds": True}
    goal = {"metric": "accuracy", "description": ">= 10x faster", "met": False,
            "heldout": {"baseline_score": 0.875, "floor": None}, "chosen": {"skip": {"budget": 3}},
            "splits": {"validation": split, "test": split},
            "speed": {"split": "validation", "runtime": "pytorch", "batch_size": 32, "ms_per_example": 23.7,
                      "baseline_ms_per_example": 198.8, "speedup": 8.38, "speed_holds": False}}
    text = "\n".join(goal_lines(goal))
    assert "| yes |" not in text and text.count("no bound") == 2 and "does NOT hold" in text
    goal["heldout"]["floor"] = 0.86  # with an accuracy bound the table says whether it holds
    assert "| yes |" in "\n".join(goal_lines(goal))


def test_plot_labels_of_close_points_do_not_overlap_and_stay_on_the_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compresskit.report.markdown import _annotate_apart

    # a model's validation and test scores half a point apart, near the right edge, as real reports have
    points = [(1.0, 0.870), (1.0, 0.875), (9.67, 0.810), (9.67, 0.822), (9.17, 0.7948), (9.17, 0.7949),
              (6.94, 0.756), (6.94, 0.789)]
    labels = ["baseline", "baseline", "first_k", "first_k", "smaller_model", "smaller_model", "final", "final"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(*zip(*points, strict=True))
    fig.tight_layout()
    texts = _annotate_apart(ax, points, labels)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    plt.close(fig)
    assert [t.get_text() for t in texts] == labels
    assert not [(labels[i], labels[j]) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    assert all(ax.bbox.x0 <= b.x0 and b.x1 <= ax.bbox.x1 for b in boxes)


def test_the_trivial_routes_train_in_the_recipes_precision_and_batching(tiny_recipe, tmp_path, tiny_model_dir,
                                                                          monkeypatch):
    """A route trained in fp32 on random batches beside stages trained in bf16 on length-grouped ones
    would be compared at another cost (and, on a bf16 machine, trained far slower)."""
    import compresskit.report.baselines as baselines
    from compresskit.data import batches
    from compresskit.training import precision

    seen, real_train = [], baselines.train

    def train(*args, **kwargs):
        seen.append((precision.current(), batches._group_by_length.get()))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(baselines, "train", train)
    settings = {"baselines": ["first_k", "smaller_model"], "smaller_model": str(tiny_model_dir), "epochs": 1,
                "batch_size": 16, "timing_examples": 4}
    skip = {**SKIP, "homotopic": False, "budget": 2}
    Pipeline(load_recipe(tiny_recipe([TEACHER, skip], report=settings, precision="bf16",
                                     data={"max_length": 16, "group_by_length": True})), tmp_path / "run").run()
    assert seen == [("bf16", True), ("bf16", True)]

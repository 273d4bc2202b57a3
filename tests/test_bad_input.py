"""Every bad input has a defined answer: a message that says where and what, exit code 2, no traceback.

Each case runs the command line as a process of its own (the `cli` fixture, tests/cli_zygote.py),
so an exit code of 1 or a traceback on stderr is really what a user would see. Broken recipes are
rejected by `validate` and by `apply` before any stage runs (the run directory is never made).
docs/bad-input.md counts the cases; `python -m pytest tests/test_bad_input.py -v` lists them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_encoder_dir, make_model_dir

TEACHER = {"strategy": "finetune", "name": "teacher", "epochs": 1, "batch_size": 16}


def expect_2(result, message: str) -> None:
    assert result.code == 2, f"exit {result.code}:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert message in result.stderr, result.stderr[-3000:]


# ---- recipes: (id, what to change in a good recipe, a fragment of the message) -----------------
# A change is a dict merged into the recipe, a list of stages, or a callable(recipe dict, tmp_path)
# that returns the file's bytes.

def _text(text: str):
    return lambda recipe, tmp: text.encode()


def _task(**change):
    def make(recipe, tmp):
        recipe["task"] = {**recipe["task"], **change}
        return recipe
    return make


def _csv(body: bytes, **change):
    def make(recipe, tmp):
        path = tmp / "train.csv"
        path.write_bytes(body)
        recipe["task"] = {**recipe["task"], "data_files": {**recipe["task"]["data_files"], "train": str(path)},
                          **change}
        return recipe
    return make


def _model(make_dir):
    def make(recipe, tmp):
        recipe["model"] = str(make_dir(tmp))
        return recipe
    return make


def _pickled(tmp: Path) -> Path:
    from transformers import AutoModelForSequenceClassification

    source = make_model_dir(tmp / "source")
    AutoModelForSequenceClassification.from_pretrained(source).save_pretrained(tmp / "pickled",
                                                                               safe_serialization=False)
    return tmp / "pickled"


def _exported(tmp: Path) -> Path:
    from compresskit.export import export_model
    from compresskit.modeling.loading import load_model

    export_model(*load_model(str(make_model_dir(tmp / "source"))), tmp / "onnx")
    return tmp / "onnx"


HEADER = b"review,sentiment\n"
RECIPES = [
    ("random-bytes", lambda r, t: bytes(range(256)) * 4, "not UTF-8"),
    ("utf-16", lambda r, t: "version: 1\nname: x\n".encode("utf-16"), "UTF-16"),
    ("latin-1", lambda r, t: "version: 1\nname: caf\u00e9\n".encode("latin-1"), "not UTF-8"),
    ("nul-bytes", _text("version: 1\n\0name: x\n"), "not valid YAML"),
    ("5000-nested-brackets", _text("[" * 5000 + "]" * 5000), "nested"),
    ("200-nested-mappings", _text("a: " + "{b: " * 200 + "1" + "}" * 200), "nested"),
    ("not-a-mapping", _text("- version: 1\n"), "a recipe is a mapping"),
    ("empty-file", _text(""), "a recipe is a mapping"),
    ("broken-yaml", _text("version: 1\nstages: [\n"), "not valid YAML"),
    ("duplicate-key", lambda r, t: yaml.safe_dump(r, sort_keys=False).replace("seed: 7", "seed: 7\nseed: 8")
     .encode(), "given twice"),
    ("duplicate-stage-key", lambda r, t: yaml.safe_dump(r, sort_keys=False).replace(
        "epochs: 1", "epochs: 1\n  epochs: 2", 1).encode(), "given twice"),
    ("seed-negative", {"seed": -5}, "seed"),
    ("seed-10**30", {"seed": 10**30}, "seed"),
    ("epochs-inf", [{**TEACHER, "epochs": float("inf")}], "finite number"),
    ("learning-rate-inf", [{**TEACHER, "learning_rate": float("inf")}], "finite number"),
    ("learning-rate-nan", [{**TEACHER, "learning_rate": float("nan")}], "finite number"),
    ("batch-size-10**12", [{**TEACHER, "batch_size": 10**12}], "out of range"),
    ("max-length-huge", {"data": {"max_length": 10**12}}, "out of range"),
    ("evaluation-split-dev", {"evaluation": {"split": "dev"}}, "no 'dev' split"),
    ("final-split-missing", {"evaluation": {"final_splits": ["holdout"]}}, "no 'holdout' split"),
    ("hadskip-budget-beyond-layers", [TEACHER, {"strategy": "hadskip", "budget": 9}], "exceeds the 4 layers"),
    ("hadskip-budget-after-truncation", [{"strategy": "budgeted_exit", "k": 2, "epochs": 1},
                                         {"strategy": "hadskip", "budget": 3}], "exceeds the 2 layers"),
    ("budgeted-exit-k-beyond-layers", [{"strategy": "budgeted_exit", "k": 7}], "exceeds the 4 layers"),
    ("layer-prune-target-beyond-layers", [{"strategy": "layer_prune", "method": "top", "target_layers": 9}],
     "exceeds the 4 layers"),
    ("layer-prune-explicit-99", [{"strategy": "layer_prune", "method": "explicit", "layers": [99]}],
     "layers 0..3"),
    ("layer-prune-every-layer", [{"strategy": "layer_prune", "method": "explicit", "layers": [0, 1, 2, 3]}],
     "keep at least one"),
    ("distill-student-layers-99", [TEACHER, {"strategy": "distill", "student_layers": [0, 99]}],
     "the teacher has layers 0..3"),
    ("distill-layer-map-wrong-length", [TEACHER, {"strategy": "distill", "student_layers": [0, 2],
                                                  "layer_map": [1, 2, 3]}], "layer_map"),
    ("distill-student-missing", [TEACHER, {"strategy": "distill", "student": "/nonexistent/student"}],
     "no such directory"),
    ("distill-teacher-unknown", [TEACHER, {"strategy": "distill", "teacher": "nosuch", "student_layers": [0]}],
     "no earlier stage named 'nosuch'"),
    ("entropy-exits-on-regression", lambda r, t: _regression(r, t, "deebert"), "class distribution of each exit"),
    ("confidence-exits-on-regression", lambda r, t: _regression(r, t, "maxprob"), "is a regression"),
    ("policy-exits-on-regression", lambda r, t: _regression(r, t, "consistentee"), "rewards its exit policies"),
    ("exits-on-one-layer", [{"strategy": "budgeted_exit", "k": 1, "epochs": 1}, {"strategy": "pcee"}],
     "at least 2 layers"),
    ("calibration-target-beyond-layers", [{"strategy": "deebert", "calibration": {"target_layers": 9}}],
     "target_layers"),
    ("stage-name-empty", [{**TEACHER, "name": ""}], "unsafe name ''"),
    ("stage-name-slash", [{**TEACHER, "name": "a/b"}], "unsafe name 'a/b'"),
    ("stage-name-escape", [{**TEACHER, "name": "../../../escape"}], "unsafe name"),
    ("stage-name-dot", [{**TEACHER, "name": "."}], "unsafe name"),
    ("recipe-name-dot-dot", {"name": ".."}, "unsafe name '..'"),
    ("recipe-name-slash", {"name": "runs/../../x"}, "unsafe name"),
    ("baseline-unknown", {"baseline": "nosuch"}, "no stage named 'nosuch'"),
    ("unknown-strategy", [{"strategy": "hadskipp"}], "did you mean 'hadskip'"),
    ("unknown-key", [{**TEACHER, "epoch": 2}], "did you mean 'epochs'"),
    ("model-dir-missing", {"model": "/nonexistent/model"}, "no such directory"),
    ("model-relative-missing", {"model": "./models/mine"}, "no such directory"),
    ("model-is-a-file", lambda r, t: _file_model(r, t), "is a file"),
    ("model-pickle-only", _model(_pickled), "safetensors only"),
    ("model-is-an-export", _model(_exported), "is an ONNX export"),
    ("model-unsupported-architecture", _model(lambda t: _other_architecture(t)), "not supported"),
    ("model-head-mismatch", _task(num_labels=3, labels=["neg", "pos", "meh"]), "2-label head"),
    ("mpnet-heads-pruned", lambda r, t: _mpnet_prune(r, t), "MPNet"),
    ("data-file-missing", _task(data_files={"train": "/nonexistent/train.csv", "validation": "/x.csv",
                                            "test": "/y.csv"}), "does not exist"),
    ("data-file-unknown-format", _task(data_files={"train": "train.xlsx"}), "unknown format"),
    ("label-field-missing", _task(label_field="stars"), "missing column(s) ['stars']"),
    ("text-field-missing", _task(text_fields=["body"]), "missing column(s) ['body']"),
    ("labels-do-not-match", _task(labels=["bad", "good"]), "not in labels"),
    ("csv-empty", _csv(b""), "is empty"),
    ("csv-header-only", _csv(HEADER), "has no rows"),
    ("csv-binary", _csv(bytes(range(256)) * 8), "not a text file"),
    ("csv-latin-1", _csv(HEADER + "caf\u00e9 good,pos\n".encode("latin-1")), "not UTF-8"),
    ("csv-empty-label-cell", _csv(HEADER + b"good film,pos\nbad film,\n"), "row 2 (not counting the header)"),
    ("csv-float-label", _csv(HEADER + b"good film,0.5\n", labels=None), "is a fraction"),
    ("csv-label-out-of-range", _csv(HEADER + b"good film,7\n", labels=None), "outside 0..1"),
    ("csv-unknown-label-name", _csv(HEADER + b"good film,great\n"), "'great': it is not in labels"),
    ("csv-names-without-labels", _csv(HEADER + b"good film,pos\n", labels=None), "list them under `labels:`"),
    ("csv-unterminated-quote", _csv(HEADER + b'"good film,pos\nbad,neg\n'), "cannot be read as csv"),
    ("jsonl-broken-line", lambda r, t: _jsonl(r, t, b'{"review": "good", "sentiment": "pos"}\n{"review": \n'),
     "cannot be read as jsonl"),
    ("regression-label-not-a-number", lambda r, t: _regression(r, t, "finetune", label=b"lots"), "not a number"),
]


def _regression(recipe, tmp, strategy, label=b"0.5"):
    path = tmp / "scores.csv"
    path.write_bytes(b"review,score\n" + b"".join(b"text %d,%s\n" % (i, label) for i in range(8)))
    recipe["task"] = {"name": "scores", "source": "files", "text_fields": ["review"], "label_field": "score",
                      "num_labels": 1, "metrics": ["pearson"],
                      "data_files": {"train": str(path), "validation": str(path), "test": str(path)}}
    recipe["model"] = str(make_encoder_dir(tmp / "regressor"))
    recipe["stages"] = [{"strategy": strategy}] if strategy != "finetune" else [TEACHER]
    return recipe


def _jsonl(recipe, tmp, body):
    path = tmp / "train.jsonl"
    path.write_bytes(body)
    recipe["task"] = {**recipe["task"], "data_files": {**recipe["task"]["data_files"], "train": str(path)}}
    return recipe


def _file_model(recipe, tmp):
    (tmp / "model.bin").write_bytes(b"x")
    recipe["model"] = str(tmp / "model.bin")
    return recipe


def _other_architecture(tmp: Path) -> Path:
    from transformers import AutoModelForSequenceClassification, GPT2Config

    directory = tmp / "gpt2"
    AutoModelForSequenceClassification.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2)).save_pretrained(
        directory)
    return directory


def _mpnet_prune(recipe, tmp):
    recipe["model"] = str(make_model_dir(tmp / "mpnet", backbone="mpnet"))
    recipe["stages"] = [{"strategy": "structured_prune", "head_ratio": 0.5}]
    return recipe


def build(case, tiny_recipe_dict: dict, tmp: Path) -> Path:
    recipe = json.loads(json.dumps(tiny_recipe_dict))
    if callable(case):
        made = case(recipe, tmp)
        data = made if isinstance(made, bytes) else yaml.safe_dump(made, sort_keys=False).encode()
    elif isinstance(case, list):
        data = yaml.safe_dump({**recipe, "stages": case}, sort_keys=False).encode()
    else:
        data = yaml.safe_dump({**recipe, **case}, sort_keys=False).encode()
    path = tmp / "recipe.yaml"
    path.write_bytes(data)
    return path


@pytest.fixture
def base_recipe(tiny_recipe) -> dict:
    return yaml.safe_load(tiny_recipe([TEACHER]).read_text())


@pytest.mark.parametrize("case, message", [pytest.param(c, m, id=i) for i, c, m in RECIPES])
def test_a_bad_recipe_fails_validate_and_apply_with_exit_2_before_anything_runs(cli, base_recipe, tmp_path, case,
                                                                                message):
    work = tmp_path / "work"
    work.mkdir()
    recipe = build(case, base_recipe, work)
    expect_2(cli("validate", recipe), message)
    expect_2(cli("apply", recipe, "-o", tmp_path / "run"), message)
    assert not (tmp_path / "run").exists()


def test_an_override_that_breaks_the_recipe_is_located(cli, tiny_recipe):
    recipe = tiny_recipe([TEACHER, {"strategy": "hadskip", "name": "skip", "budget": 2}])
    expect_2(cli("validate", recipe, "--set", "stages.skip.budget=1e9"), "stages[1].budget")
    expect_2(cli("validate", recipe, "--set", "stages.nosuch.epochs=1"), "no stage named 'nosuch'")
    expect_2(cli("validate", recipe, "--set", "epochs"), "expected KEY=VALUE")
    expect_2(cli("validate", recipe, "--set", "seed={a: 1, a: 2}"), "given twice")


def test_an_unnamed_second_stage_is_reachable_by_the_name_validate_prints(cli, tiny_recipe):
    recipe = tiny_recipe([{"strategy": "finetune", "epochs": 1}, {"strategy": "finetune", "epochs": 1}])
    shown = cli("validate", recipe)
    assert shown.code == 0 and "finetune_1 (finetune" in shown.stdout
    changed = cli("validate", recipe, "--set", "stages.finetune_1.epochs=0")
    expect_2(changed, "stages[1].epochs")  # the override reached the second stage (0 epochs is invalid)
    assert cli("validate", recipe, "--set", "stages.finetune_1.epochs=2").code == 0


# ---- command-line calls ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_model_dir) -> Path:
    from compresskit.export import export_model
    from compresskit.modeling.loading import load_model

    target = tmp_path_factory.mktemp("export") / "onnx"
    export_model(*load_model(str(tiny_model_dir)), target)
    return target


def cli_cases(model: Path, export: Path, task: Path, binary: Path, tmp: Path) -> list[tuple[list, str]]:
    m, e, t = str(model), str(export), str(task)
    cases = []
    for option in ("--max-length", "--batch-size"):
        for value in ("0", "-5"):
            cases.append((["predict", e, "--text", "x", option, value], option))
    cases += [
        (["predict", e, "--file", str(binary)], "not a text file"),
        (["predict", e, "--file", str(tmp / "absent.txt")], "does not exist"),
        (["predict", e], "nothing to classify"),
        (["predict", m, "--text", "x"], "not a compresskit export"),
    ]
    for option in ("--max-samples", "--max-length", "--batch-size", "--seed"):
        for value in ("0", "-3") if option != "--seed" else ("-1", "4294967296"):
            cases.append((["evaluate", m, "--task", t, option, value], option))
    cases += [
        (["evaluate", m, "--task", t, "--split", "nosuch"], "no 'nosuch' split"),
        (["evaluate", e, "--task", t], "is an ONNX export"),
        (["evaluate", m, "--task", "rotten_tomatoe"], "Did you mean 'rotten_tomatoes'"),
        (["evaluate", m, "--task", str(tmp / "absent.yaml")], "does not exist"),
        (["evaluate", m, "--task", str(binary.with_suffix(".yaml"))], "not UTF-8"),
    ]
    for value in ("0", "-1", "1,0", "one", ""):
        cases.append((["benchmark", m, "--task", t, "--batch-sizes", value], "--batch-sizes"))
    for option in ("--examples", "--max-length", "--repeats", "--threads"):
        for value in ("0", "-3"):
            cases.append((["benchmark", m, "--task", t, option, value], option))
    cases += [
        (["benchmark", m, "--task", t, "--split", "nosuch"], "no 'nosuch' split"),
        (["benchmark", str(tmp / "nope"), "--task", t], "not a directory"),
        (["benchmark", f"{m}:int8", "--task", t], "applies to ONNX exports only"),
    ]
    for value in ("0", "-1", "nan", "inf"):
        cases.append((["export", m, "--output", str(tmp / "out"), "--atol", value], "--atol"))
    cases += [
        (["export", m, "--output", str(export)], "exists"),
        (["export", str(tmp / "nope"), "--output", str(tmp / "out")], "no such directory"),
        (["report", str(tmp), "--batch-size", "0"], "--batch-size"),
        (["report", str(tmp / "nope")], "has no report.json"),
        (["apply", str(tmp / "absent.yaml"), "--num-processes", "0"], "--num-processes"),
        (["apply", str(tmp / "absent.yaml")], "does not exist"),
        (["assets", "install", "nosuch"], "unknown asset"),
    ]
    return cases


def test_every_bad_command_line_exits_2_with_a_message(cli, tiny_model_dir, export_dir, tiny_task_file, tmp_path):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    binary.with_suffix(".yaml").write_bytes(b"name: caf\xe9\n")
    cases = cli_cases(tiny_model_dir, export_dir, tiny_task_file, binary, tmp_path)
    failures = []
    for args, message in cases:
        result = cli(*args)
        if result.code != 2 or message not in result.stderr or "Traceback" in result.output:
            failures.append(f"{' '.join(args)} -> exit {result.code}: {result.stderr[-400:]}")
    assert not failures, "\n".join(failures)


# ---- property: a recipe that passes validate runs ---------------------------------------------

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LAYERS = st.integers(-1, 5)  # the tiny model has 4: some of these are out of range on purpose
STAGE_TEMPLATES = st.one_of(
    st.fixed_dictionaries({"strategy": st.just("finetune"), "epochs": st.sampled_from([0.25, 1]),
                           "learning_rate": st.sampled_from([1e-4, 1e-3]), "batch_size": st.sampled_from([4, 16])}),
    st.fixed_dictionaries({"strategy": st.just("budgeted_exit"), "k": st.integers(1, 5), "epochs": st.just(0.25)}),
    st.fixed_dictionaries({"strategy": st.just("layer_prune"), "method": st.just("top"),
                           "target_layers": st.integers(1, 5)}),
    st.fixed_dictionaries({"strategy": st.just("layer_prune"), "method": st.just("explicit"),
                           "layers": st.lists(LAYERS, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"strategy": st.just("hadskip"), "budget": st.sampled_from([0.5, 2, 3, 5]),
                           "gate_epochs": st.just(0.25), "epochs_per_budget": st.just(0.25),
                           "homotopic": st.booleans()}),
    st.fixed_dictionaries({"strategy": st.sampled_from(["deebert", "pabee", "pcee", "maxprob"]),
                           "epochs": st.just(0.25),
                           "calibration": st.fixed_dictionaries({"target_layers": st.sampled_from([1, 2, 5])})}),
    st.fixed_dictionaries({"strategy": st.just("distill"), "student_layers": st.lists(LAYERS, min_size=1, max_size=3),
                           "intermediate_epochs": st.sampled_from([0, 0.25]), "prediction_epochs": st.just(0.25)}),
    st.fixed_dictionaries({"strategy": st.just("structured_prune"), "head_ratio": st.sampled_from([0, 0.5]),
                           "ffn_ratio": st.sampled_from([0.25, 0.5]), "batch_size": st.just(8)}),
    st.fixed_dictionaries({"strategy": st.just("consistentee"), "init_epochs": st.just(0.25), "rounds": st.just(0),
                           "policy_epochs": st.just(0.5), "alphas": st.just([0.05, 0.1])}),
    st.fixed_dictionaries({"strategy": st.just("cost_eff"), "exit_epochs": st.just(0.25), "prune_steps": st.just(1),
                           "recover_epochs": st.just(0), "representation_epochs": st.just(0),
                           "prediction_epochs": st.just(0.25), "head_ratio": st.sampled_from([0, 0.5])}),
    st.fixed_dictionaries({"strategy": st.just("berxit"), "epochs": st.just(2), "batch_size": st.just(16)}),
    st.just({"strategy": "export"}),
)


# derandomized: the same recipes on every machine and run; no shrinking (each example trains models).
# COMPRESSKIT_RECIPE_EXAMPLES=150 tries that many random ones instead (docs/bad-input.md).
THOROUGH = int(os.environ.get("COMPRESSKIT_RECIPE_EXAMPLES", "0"))


@settings(max_examples=THOROUGH or 12, deadline=None, derandomize=not THOROUGH, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stages=st.lists(STAGE_TEMPLATES, min_size=1, max_size=3))
def test_a_recipe_that_passes_validate_runs_to_the_end(tiny_recipe, tmp_path_factory, stages):
    from compresskit.errors import RecipeError
    from compresskit.pipeline import Pipeline
    from compresskit.preflight import check_inputs
    from compresskit.recipe import load_recipe

    recipe = tiny_recipe(stages, data={"max_length": 16, "max_train_samples": 32, "max_eval_samples": 16})
    try:
        resolved = load_recipe(recipe)
        check_inputs(resolved)
    except RecipeError:
        return  # rejected up front, as it should be when it cannot run
    report = Pipeline(resolved, tmp_path_factory.mktemp("run")).run()  # any exception here fails the property
    assert [s["name"] for s in report["stages"]] == [s.name for s in resolved.stages]

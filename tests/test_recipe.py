"""Recipe validation: every problem found at once, each with its location; overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compresskit.errors import RecipeError
from compresskit.recipe import apply_overrides, load_recipe, validate_recipe
from compresskit.registry import strategies

RECIPES = sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml"))


def good() -> dict:
    return {
        "version": 1, "name": "ok", "model": "minilm-l6", "task": "rotten_tomatoes",
        "stages": [{"strategy": "finetune", "name": "teacher", "epochs": 1}],
    }


def problems(raw) -> dict[str, str]:
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw)
    return dict(info.value.problems)


def test_a_good_recipe_validates_with_defaults_filled_in():
    resolved = validate_recipe(good())
    assert resolved.stages[0].learning_rate == 5e-5
    assert resolved.recipe.data.max_length == 128
    assert resolved.to_dict()["stages"][0]["name"] == "teacher"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    load_recipe(path)


def test_every_problem_is_reported_at_once_with_its_location():
    raw = good()
    raw["version"] = 2
    raw["data"] = {"max_train_samples": -5, "max_lenght": 64}
    raw["stages"].append({"strategy": "finetune", "epochs": "many", "colour": "red"})
    found = problems(raw)
    assert set(found) == {"version", "data.max_train_samples", "data.max_lenght", "stages[1].epochs",
                          "stages[1].colour"}
    assert "max_length" in found["data.max_lenght"]  # the closest known key is suggested


def test_a_misspelled_strategy_gets_the_closest_name():
    raw = good()
    raw["stages"][0]["strategy"] = "fintune"
    assert "did you mean 'finetune'" in problems(raw)["stages[0].strategy"]


def test_a_misspelled_stage_key_gets_the_closest_name():
    raw = good()
    raw["stages"][0]["learning_rat"] = 0.1
    assert "learning_rate" in problems(raw)["stages[0].learning_rat"]


def test_unknown_task_and_duplicate_stage_names_are_located():
    raw = good()
    raw["task"] = "rotten_tomato"
    raw["stages"].append({"strategy": "finetune", "name": "teacher"})
    found = problems(raw)
    assert "did you mean 'rotten_tomatoes'" in found["task"]
    assert "used twice" in found["stages[1].name"]


def test_a_task_mapping_is_validated_field_by_field():
    raw = good()
    raw["task"] = {"name": "mine", "source": "files", "text_fields": ["a", "b", "c"], "num_labels": 0}
    found = problems(raw)
    assert {"task.text_fields", "task.num_labels"} <= set(found)


def test_overrides_reach_nested_keys_and_named_stages():
    raw = apply_overrides(good(), ["data.max_train_samples=500", "stages.teacher.epochs=0.5", "stages[0].name=t"])
    assert raw["data"]["max_train_samples"] == 500
    assert raw["stages"][0]["epochs"] == 0.5
    assert raw["stages"][0]["name"] == "t"


def test_overriding_one_calibration_key_keeps_the_default_goal():
    raw = good()
    raw["stages"].append({"strategy": "pabee", "name": "exit"})
    stage = validate_recipe(apply_overrides(raw, ["stages.exit.calibration.fraction=0.2"])).stages[1]
    assert (stage.calibration.fraction, stage.calibration.max_accuracy_drop) == (0.2, 0.01)
    raw["stages"][1]["calibration"] = {"target_layers": 3, "max_accuracy_drop": 0.01}
    assert "only one of target_layers" in problems(raw)["stages[1].calibration"]


@pytest.mark.parametrize("override, where", [("epochs", "--set epochs"), ("stages.nope.epochs=1", "--set stages"),
                                             ("stages.5.epochs=1", "--set stages")])
def test_bad_overrides_are_located(override, where):
    with pytest.raises(RecipeError) as info:
        apply_overrides(good(), [override])
    assert info.value.problems[0][0].startswith(where)


def test_missing_file_and_broken_yaml_are_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nstages: [\n  - oops: {\n")
    with pytest.raises(RecipeError, match="line"):
        load_recipe(broken)


# ---- property: whatever is thrown at the validator, a located RecipeError comes back ----

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=False),
                    st.text(max_size=8), st.sampled_from(["finetune", "fintune", "validation", "minilm-l6"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
KEYS = ["version", "name", "seed", "model", "task", "data", "evaluation", "baseline", "stages"]
STAGE_KEYS = ["strategy", "name", "epochs", "learning_rate", "batch_size", "budget", "colour"]


@st.composite
def malformed_recipes(draw):
    raw = good()
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=3)):
        raw[key] = draw(values)
    if isinstance(raw.get("stages"), list):
        for stage in raw["stages"]:
            if isinstance(stage, dict):
                for key in draw(st.lists(st.sampled_from(STAGE_KEYS), max_size=3)):
                    stage[key] = draw(values)
    if draw(st.booleans()):
        raw[draw(st.text(min_size=1, max_size=6))] = draw(values)
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_recipes())
def test_malformed_recipes_give_located_errors_and_never_crash(raw):
    try:
        validate_recipe(raw)
    except RecipeError as err:
        assert err.problems, "a RecipeError must carry at least one problem"
        for loc, msg in err.problems:
            assert msg
            keys = [str(k) for k in raw] + KEYS
            assert any(loc == k or loc.startswith((k + ".", k + "[")) for k in keys), (
                f"location {loc!r} does not point into the recipe")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_any_yaml_text_is_valid_or_a_recipe_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("y") / "r.yaml"
    path.write_text(text)
    try:
        load_recipe(path)
    except RecipeError:
        pass
    else:
        assert isinstance(yaml.safe_load(text), dict)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_a_recipe_or_a_recipe_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("b") / "r.yaml"
    path.write_bytes(data)
    try:
        load_recipe(path)
    except RecipeError as err:
        assert err.problems and all(msg for _, msg in err.problems)


@settings(max_examples=15, deadline=None)
@given(st.integers(33, 2000), st.sampled_from(["[", "{a: "]))
def test_deep_nesting_is_a_recipe_error_not_a_recursion_error(tmp_path_factory, depth, opener):
    closer = "]" if opener == "[" else "}"
    path = tmp_path_factory.mktemp("n") / "r.yaml"
    path.write_text("stages: " + opener * depth + "1" + closer * depth)
    with pytest.raises(RecipeError, match="nested"):
        load_recipe(path)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(list(good())), st.integers(0, 1))
def test_a_key_given_twice_anywhere_is_reported_with_its_line(tmp_path_factory, key, in_stage):
    text = yaml.safe_dump(good(), sort_keys=False)
    if in_stage:
        text = text.replace("  epochs: 1", "  epochs: 1\n  epochs: 2")
        line = "epochs"
    else:
        text = f"{key}: 1\n" + text
        line = key
    path = tmp_path_factory.mktemp("d") / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert any(f"key {line!r} is given twice" in msg and loc.startswith("line ") for loc, msg in info.value.problems)


FLOAT_FIELDS = sorted({(name, field) for name, cls in strategies().items()
                       for field, info in cls.Config.model_fields.items() if info.annotation in (float, float | None)})


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(FLOAT_FIELDS), st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e10, -1e12]))
def test_no_float_setting_of_any_strategy_takes_a_non_finite_or_absurd_number(field, value):
    strategy, key = field
    raw = good()
    raw["stages"] = [{"strategy": strategy, key: value}]
    assert f"stages[0].{key}" in problems(raw)


SAFE = st.text(alphabet="abcXYZ019_.-", max_size=8)
UNSAFE_NAMES = st.one_of(
    st.sampled_from(["", ".", "..", "../x", "a/b", "/abs", "-rf", ".hidden", "a b", "x" * 101, "~", "a\x00b"]),
    st.builds(lambda a, bad, b: "x" + a + bad + b, SAFE, st.sampled_from(list("/\\ \t\n:*?<>|~$'\"\x00")), SAFE),
    st.builds(lambda lead, rest: lead + rest, st.sampled_from([".", "-"]), SAFE),
)


@settings(max_examples=120, deadline=None)
@given(UNSAFE_NAMES)
def test_unsafe_recipe_and_stage_names_are_refused(name):
    raw = good()
    raw["name"] = name
    raw["stages"][0]["name"] = name
    found = problems(raw)
    assert "unsafe name" in found["name"] and "unsafe name" in found["stages[0].name"]


def example_stages() -> list:
    from compresskit.registry import strategies

    out = []
    for name, cls in strategies().items():
        doc = cls.__doc__ or ""
        assert "Example stage::" in doc, f"strategy {name!r} has no example stage in its docstring"
        out.append(pytest.param(yaml.safe_load(doc.split("Example stage::", 1)[1]), id=name))
    return out


@pytest.mark.parametrize("stages", example_stages())
def test_each_strategy_docstring_example_is_a_valid_stage(stages):
    raw = good()
    raw["stages"] = stages
    validate_recipe(raw)


def test_the_recipe_reference_is_in_sync_with_the_schema():
    from compresskit.docs_gen import render

    path = Path(__file__).parent.parent / "docs" / "recipe-reference.md"
    assert path.read_text() == render(), "regenerate: python -m compresskit.docs_gen > docs/recipe-reference.md"

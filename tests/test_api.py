"""The Python API runs what `compresskit apply` runs: the same numbers and weights."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml

import compresskit
from compresskit.errors import RecipeError


def digest(model_dir) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def test_the_python_api_equals_the_cli_from_a_file_and_from_a_recipe_built_in_code(cli, tiny_recipe, tmp_path):
    recipe = tiny_recipe()
    done = cli("apply", recipe, "-o", tmp_path / "cli", "--set", "stages.again.epochs=0.5")
    assert done.code == 0, done.stderr[-2000:]
    by_cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    from_file = compresskit.apply(recipe, output_dir=tmp_path / "file", overrides={"stages.again.epochs": 0.5})
    in_code = yaml.safe_load(recipe.read_text())
    in_code["stages"][1]["epochs"] = 0.5
    from_code = compresskit.apply(in_code, output_dir=tmp_path / "code")
    for result in (from_file, from_code):
        assert result.summary == by_cli["summary"]
        assert result.report["final"] == by_cli["final"] and result.report["baseline"] == by_cli["baseline"]
        assert result.final_model_dir == result.run_dir / "stages" / "01-again" / "model"
        assert digest(result.final_model_dir) == digest(tmp_path / "cli" / "stages" / "01-again" / "model")
        assert result.export_dir is None  # this recipe does not export


def test_a_broken_recipe_in_code_is_rejected_before_anything_runs(tiny_recipe, tmp_path):
    broken = yaml.safe_load(tiny_recipe().read_text())
    broken["stages"][0]["epochs"] = -1
    with pytest.raises(RecipeError, match=r"stages\[0\]\.epochs"):
        compresskit.apply(broken, output_dir=tmp_path / "run", overrides={"seed": 3})
    assert not (tmp_path / "run").exists()
    with pytest.raises(TypeError, match="a YAML file's path or the recipe as a mapping, not list"):
        compresskit.apply([broken], output_dir=tmp_path / "run")


def test_each_final_artifact_carries_a_model_card_with_report_jsons_numbers(tiny_recipe, tmp_path):
    recipe = yaml.safe_load(tiny_recipe([{"strategy": "finetune", "name": "teacher", "epochs": 1, "batch_size": 16},
                                         {"strategy": "export", "name": "onnx"}]).read_text())
    recipe["evaluation"]["latency_examples"] = 16
    result = compresskit.apply(recipe, output_dir=tmp_path / "run")
    latency = result.report["latency"]
    assert {(r["artifact"], r["batch_size"]) for r in latency["rows"]} == {
        ("pytorch", 1), ("pytorch", 32), ("onnx", 1), ("onnx", 32)}
    assert all(r["median_ms"] > 0 for r in latency["rows"])
    for directory in (result.final_model_dir, result.export_dir):
        card = (directory / "README.md").read_text()
        assert card.startswith("---\n") and "pipeline_tag: text-classification" in card
        for split in ("validation", "test"):
            assert f"{result.report['final'][split]['accuracy']:.4f}" in card
        for row in latency["rows"]:
            assert f"| {row['artifact']} | {row['runtime']} | {row['batch_size']} | {row['median_ms']:.2f} |" in card
        assert "strategy: finetune" in card and "torch " in card  # the recipe and the package versions
    # a static export runs in transformers' pipeline() through Optimum's ORTModel class
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    texts = ["the movie was good", "a very dull plot", "superb actors"]
    tokenizer = AutoTokenizer.from_pretrained(result.export_dir)
    classify = pipeline("text-classification", model=ORTModelForSequenceClassification.from_pretrained(
        result.export_dir), tokenizer=tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(result.final_model_dir).eval()
    with torch.no_grad():
        expected = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits.argmax(-1).tolist()
    assert [r["label"] for r in classify(texts)] == [model.config.id2label[i] for i in expected]

"""The real packaged models and tasks (slow: needs `compresskit assets install`)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from compresskit import assets
from compresskit.data.loading import load_splits, resolve_task, tokenize
from compresskit.modeling.loading import load_model
from tests.conftest import USER_ASSET_CACHE

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def real_assets(monkeypatch):
    """These tests read the packaged assets where the user installed them (the rest of the suite never does)."""
    monkeypatch.setenv(assets.CACHE_ENV, USER_ASSET_CACHE)


def need(*names: str) -> None:
    missing = [n for n in names if not assets.ASSETS[n].installed]
    if missing:
        pytest.skip(f"not installed: {missing} (compresskit assets install)")


@pytest.mark.parametrize("name, layers, hidden", [("minilm-l6", 6, 384), ("minilm-l3", 3, 384),
                                                  ("mpnet-12", 12, 768)])
def test_packaged_models_load_and_match_the_stock_implementation(name, layers, hidden):
    need(name)
    task = resolve_task("rotten_tomatoes")
    model, tokenizer = load_model(name, task)
    assert model.num_layers == layers and model.config.backbone["hidden_size"] == hidden
    stock = AutoModelForSequenceClassification.from_pretrained(assets.ASSETS[name].path, num_labels=2,
                                                               attn_implementation="eager").eval()
    stock.load_state_dict(model.backbone.state_dict())  # same random head on both
    batch = tokenizer(["a gripping, funny film", "dull and far too long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**batch).logits, stock(**batch).logits, atol=1e-5, rtol=1e-4)


def test_minilm_l3_shares_minilm_l6_tokenization():
    need("minilm-l3", "minilm-l6")
    _, l3 = load_model("minilm-l3")
    _, l6 = load_model("minilm-l6")
    text = "An unexpectedly moving portrait of a family."
    assert l3(text)["input_ids"] == l6(text)["input_ids"]


def test_packaged_rotten_tomatoes_has_the_documented_split():
    need("rotten_tomatoes", "minilm-l6")
    info = json.loads((assets.ASSETS["rotten_tomatoes"].path / "info.json").read_text())
    assert sum(info["counts"].values()) == 12808 and info["labels"] == ["rotten", "fresh"]
    task = resolve_task("rotten_tomatoes")
    splits = load_splits(task, ["train", "validation", "test"])
    _, tokenizer = load_model("minilm-l6")
    lengths = [len(x) for x in tokenize(splits, tokenizer, 64)["validation"]["input_ids"]]
    assert max(lengths) <= 64 and sum(lengths) / len(lengths) > 10

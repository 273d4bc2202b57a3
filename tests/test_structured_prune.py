"""structured_prune: what torch-pruning removes, what the config then says, and that it reloads anywhere."""

from __future__ import annotations

import pytest
import torch

from compresskit.errors import CompressKitError
from compresskit.evaluation.flops import count_parameters
from compresskit.modeling import CompressedConfig, CompressedModelForSequenceClassification
from compresskit.modeling.pruning import PruneSettings, head_channels, prune
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from tests.conftest import CONFIGS
from tests.test_modeling import inputs, logits_in_a_fresh_process

DEAD_HEADS = [[1, 3], [0, 1], [2, 3], [0, 2]]  # per layer of the tiny 4-layer, 4-head model


def model_with_dead_units(backbone: str) -> CompressedModelForSequenceClassification:
    """A model in which half the heads and half the FFN neurons of every layer contribute nothing."""
    torch.manual_seed(0)
    model = CompressedModelForSequenceClassification(CompressedConfig.from_backbone_config(CONFIGS[backbone]()))
    with torch.no_grad():
        for layer, dead in zip(model.layers, DEAD_HEADS, strict=True):
            parts = model.adapter.parts(layer)
            size = parts.head_size
            rows = head_channels(parts, dead)  # of the (fused) projection; one slice each for q, k, v
            for linear in parts.qkv:
                linear.weight[rows if parts.fused_qkv else rows[:len(dead) * size]] = 0
                if linear.bias is not None:
                    linear.bias[rows if parts.fused_qkv else rows[:len(dead) * size]] = 0
            parts.attention_out.weight[:, [h * size + c for h in dead for c in range(size)]] = 0
            # even neurons: GELU(0) = 0 feeds nothing forward (a gated FFN's product too: its input half is 0)
            even = list(range(0, parts.intermediate, 2))
            parts.ffn_in.weight[even] = 0
            if parts.ffn_in.bias is not None:
                parts.ffn_in.bias[even] = 0
            parts.ffn_out.weight[:, even] = 0
    return model.eval()


def settings(**overrides) -> PruneSettings:
    return PruneSettings(**{"head_ratio": 0.5, "ffn_ratio": 0.5, "round_ffn_to": 1, **overrides})


def batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    return [{**inputs(seed=i), "labels": torch.tensor([0, 1, 0, 1, 1])} for i in range(n)]


# every architecture whose heads prune layer by layer (MPNet's shared bias refuses, tested below)
@pytest.mark.parametrize("backbone", [b for b in CONFIGS if b != "mpnet"])
@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_pruning_removes_the_dead_heads_and_neurons_and_keeps_the_function(backbone, importance):
    model = model_with_dead_units(backbone)
    pruned = prune(model, batches(), settings(importance=importance)).eval()
    for spec, dead in zip(pruned.config.layers, DEAD_HEADS, strict=True):
        assert spec["heads"] == [h for h in range(4) if h not in dead]
        assert spec["intermediate_size"] == model.config.layers[0]["intermediate_size"] // 2
    assert count_parameters(pruned) < count_parameters(model)
    with torch.no_grad():
        torch.testing.assert_close(pruned(**inputs()).logits, model(**inputs()).logits, atol=1e-5, rtol=1e-4)


def test_global_scope_takes_more_from_the_layer_that_matters_least():
    model = model_with_dead_units("bert")
    with torch.no_grad():  # layer 0: only 8 strong live neurons (odd ones up to 15), the other live ones weak
        parts = model.adapter.parts(model.layers[0])
        parts.ffn_in.weight[17::2] *= 1e-3
        parts.ffn_out.weight[:, 17::2] *= 1e-3
    uniform = prune(model, batches(), settings(head_ratio=0.0, ffn_ratio=0.625))
    overall = prune(model, batches(), settings(head_ratio=0.0, ffn_ratio=0.625, scope="global"))
    assert [s["intermediate_size"] for s in uniform.config.layers] == [24] * 4
    widths = [s["intermediate_size"] for s in overall.config.layers]
    assert widths[0] == 8 and sum(widths) == 4 * 24  # the same total, taken where it matters least


def test_the_pruned_model_reloads_in_a_fresh_process_with_the_auto_classes(tmp_path):
    pruned = prune(model_with_dead_units("bert"), batches(), settings(head_ratio=0.25, ffn_ratio=0.5)).eval()
    pruned.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(logits_in_a_fresh_process(tmp_path, inputs()), pruned(**inputs()).logits)


def test_mpnet_heads_are_refused_with_a_way_out_and_its_ffn_prunes():
    model = model_with_dead_units("mpnet")
    with pytest.raises(CompressKitError, match="head_ratio: 0"):
        prune(model, batches(), settings())
    pruned = prune(model, batches(), settings(head_ratio=0.0))
    assert [s["intermediate_size"] for s in pruned.config.layers] == [32] * 4


def test_nothing_to_prune_is_a_recipe_error():
    from compresskit.strategies.structured_prune import StructuredPruneConfig

    with pytest.raises(ValueError, match="nothing to prune"):
        StructuredPruneConfig(strategy="structured_prune", head_ratio=0.0, ffn_ratio=0.0)


def test_structured_prune_then_recovery_distillation_from_the_unpruned_model(tiny_recipe, tmp_path):
    recipe = tiny_recipe([
        {"strategy": "finetune", "name": "teacher", "epochs": 2, "learning_rate": 1e-3, "batch_size": 16},
        {"strategy": "structured_prune", "name": "pruned", "head_ratio": 0.5, "ffn_ratio": 0.5,
         "importance": "taylor", "taylor_batches": 2, "batch_size": 8},
        # recovery: the pruned model is the student of the unpruned one (pruned heads: no attention loss)
        {"strategy": "distill", "name": "recovered", "teacher": "teacher", "alpha_attention": 0.0,
         "intermediate_epochs": 1, "prediction_epochs": 1, "batch_size": 16},
    ])
    report = Pipeline(load_recipe(recipe), tmp_path / "run").run()
    info = report["stages"][1]["info"]
    assert info["parameters_after"] < info["parameters_before"]
    assert all(len(layer["heads"]) == 2 and layer["intermediate_size"] == 32 for layer in info["layers"])
    recovered = report["stages"][2]
    assert recovered["info"]["student_layers"] == 4 and "prediction" in recovered["info"]["history"]
    assert report["final"]["parameters"] == info["parameters_after"]
    assert report["final"]["flops_per_example"] < report["baseline"]["flops_per_example"]

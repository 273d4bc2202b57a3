"""The compressed model format: every shape round-trips, dynamic inference really skips work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import compresskit  # noqa: F401  (registers the Auto classes)
from compresskit.errors import ModelFormatError
from compresskit.modeling import CompressedConfig, CompressedModelForSequenceClassification
from compresskit.modeling.dynamic import PatienceConfidenceRule, entropy
from tests.conftest import CONFIGS, VOCAB

BACKBONES = list(CONFIGS)


def inputs(batch: int = 5, length: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(VOCAB), (batch, length), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    for row in range(batch):  # ragged rows: padding must never leak into the result
        cut = length - (row % 3)
        ids[row, cut:] = 0
        mask[row, cut:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def compressed(backbone: str, gates: bool = False, exits: str | None = None, exit_pooling: str = "cls",
               seed: int = 0) -> CompressedModelForSequenceClassification:
    """Layers 0, 2, 3 of 4 kept, with per-layer heads and FFN widths, optional gates / exits."""
    torch.manual_seed(seed)
    config = CompressedConfig.from_backbone_config(CONFIGS[backbone]())
    config.layers = [
        {"source": 0, "heads": [0, 2], "intermediate_size": 16, "gate": gates, "exit": exits is not None},
        {"source": 2, "heads": [1, 2, 3], "intermediate_size": 64, "gate": gates, "exit": exits is not None},
        {"source": 3, "heads": [0, 1, 2, 3], "intermediate_size": 40, "gate": gates},
    ]
    if exits:
        config.exit_rule = {"name": exits, **({"patience": 1} if exits == "patience" else {})}
        config.exit_head = {"pooling": exit_pooling}
    model = CompressedModelForSequenceClassification(config).eval()
    if gates or exits:
        diversify(model)
    return model


@torch.no_grad()
def diversify(model: CompressedModelForSequenceClassification) -> None:
    """Make gates and exit rules split a batch: some examples run or leave, others do not.

    Random tiny layers barely change the [CLS] state, so every example would take the same
    path and routing would go untested. Larger weights make examples differ; each gate, policy
    and threshold is then centred between the two middle values of a reference batch (never on
    one: an example exactly on a threshold is a tie that rounding may decide either way).
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.3)
    batch = inputs(batch=16, seed=99)
    for i in sorted(int(k) for k in model.gates):  # in order: a gate sees what earlier gates did
        logits = model(**batch, dynamic=False).gate_logits[i]
        model.gates[str(i)].net[2].bias[1] -= centre(logits[:, 1] - logits[:, 0])
    rule = model.exit_rule
    if rule is None:
        return
    for i, head in model.exit_heads.items():  # each head splits the batch between the two classes
        logits = model(**batch, dynamic=False).exit_logits[int(i)]
        head.classifier.bias[1] -= centre(logits[:, 1] - logits[:, 0])
    out = model(**batch, dynamic=False)
    exit_logits = torch.cat([out.exit_logits[i] for i in sorted(out.exit_logits)])
    if hasattr(rule, "lte"):  # BERxiT's exit module: half the examples certain enough
        first = min(out.exit_logits)  # the module is shared: split the examples at the first exit
        rule.lte.bias -= centre(rule.lte(out.exit_summaries[first]))
    elif hasattr(rule, "threshold"):
        normalized = isinstance(rule, PatienceConfidenceRule)
        rule.threshold = float(centre(entropy(exit_logits, normalized=normalized)))
        model.config.exit_rule["threshold"] = rule.threshold
    if hasattr(rule, "policies"):
        for i, policy in enumerate(rule.policies):
            policy[2].bias -= centre(policy(out.exit_summaries[i]))


def centre(values: torch.Tensor) -> torch.Tensor:
    """A value between the two middle distinct values (below all of them when they are all one)."""
    distinct = values.flatten().unique()
    if len(distinct) == 1:
        return distinct[0] - 1.0
    k = len(distinct) // 2
    return (distinct[k - 1] + distinct[k]) / 2


SHAPES = [
    pytest.param(dict(), id="pruned"),
    pytest.param(dict(gates=True), id="gated"),
    pytest.param(dict(exits="entropy"), id="exits-entropy"),
    pytest.param(dict(exits="patience"), id="exits-patience"),
    pytest.param(dict(exits="budget"), id="exits-budget"),
    pytest.param(dict(exits="policy"), id="exits-policy"),
    pytest.param(dict(exits="learned"), id="exits-learned"),
    pytest.param(dict(exits="policy", exit_pooling="mean"), id="exits-policy-mean-pooled"),
    pytest.param(dict(gates=True, exits="patience_confidence"), id="gated+exits"),
]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_wrapping_a_stock_model_changes_nothing_and_saves_as_stock(backbone, tmp_path):
    stock = AutoModelForSequenceClassification.from_config(CONFIGS[backbone](), attn_implementation="eager").eval()
    expected = stock(**inputs()).logits
    model = CompressedModelForSequenceClassification.from_backbone(stock).eval()
    out = model(**inputs())
    torch.testing.assert_close(out.logits, expected)
    assert out.layers_executed.tolist() == [4.0] * 5
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == backbone  # a stock checkpoint any HF user can load
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(**inputs()).logits, expected)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_round_trips_through_save_pretrained(backbone, shape, tmp_path):
    model = compressed(backbone, **shape)
    before = model(**inputs())
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "compresskit"
    for loader in (CompressedModelForSequenceClassification, AutoModelForSequenceClassification):
        after = loader.from_pretrained(tmp_path).eval()(**inputs())
        torch.testing.assert_close(after.logits, before.logits)
        assert torch.equal(after.layers_executed, before.layers_executed)
        assert torch.equal(after.exit_layer, before.exit_layer)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_layer_shapes_follow_the_config(backbone):
    model = compressed(backbone)
    sizes = []
    for layer in model.layers:
        parts = model.adapter.parts(layer)
        sizes.append((parts.num_heads, sum(p.out_features for p in parts.qkv), parts.ffn_in.out_features))
    backbone_config = CONFIGS[backbone]()
    size = backbone_config.hidden_size // backbone_config.num_attention_heads
    gated = 2 if model.adapter.parts(model.layers[0]).gated_ffn else 1
    assert sizes == [(2, 3 * 2 * size, 16 * gated), (3, 3 * 3 * size, 64 * gated), (4, 3 * 4 * size, 40 * gated)]


def logits_in_a_fresh_process(directory: Path, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Load a saved model with the transformers Auto classes in a new Python process; its logits on `batch`."""
    torch.save(batch, directory / "inputs.pt")
    code = (
        "import sys, torch, compresskit\n"
        "from transformers import AutoModelForSequenceClassification as A\n"
        "m = A.from_pretrained(sys.argv[1]).eval()\n"
        "torch.save(m(**torch.load(sys.argv[1] + '/inputs.pt')).logits, sys.argv[1] + '/out.pt')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(directory)], check=True)
    return torch.load(directory / "out.pt")


def test_reload_in_a_fresh_process_needs_only_the_directory(tmp_path):
    model = compressed("mpnet", gates=True, exits="entropy")
    model.save_pretrained(tmp_path)
    expected = model(**inputs()).logits
    torch.testing.assert_close(logits_in_a_fresh_process(tmp_path, inputs()), expected)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_routed_batch_equals_one_example_at_a_time(backbone, shape):
    model = compressed(backbone, **shape)
    batch = inputs(batch=7)
    routed = model(**batch)
    paths = {(tuple(mask), layer) for mask, layer in zip(routed.layer_mask.tolist(), routed.exit_layer.tolist(),
                                                          strict=True)}
    if shape.get("exits") != "budget":  # the budget rule treats every example alike
        assert len(paths) > 1, "the examples should take different paths, or routing goes untested"
    for row in range(7):
        length = int(batch["attention_mask"][row].sum())
        single = model(input_ids=batch["input_ids"][row:row + 1, :length],
                       attention_mask=batch["attention_mask"][row:row + 1, :length])
        torch.testing.assert_close(single.logits[0], routed.logits[row], atol=1e-5, rtol=1e-4)
        assert single.layers_executed[0] == routed.layers_executed[row]


@pytest.mark.parametrize("shape", SHAPES[1:])
def test_routed_inference_matches_the_full_pass_with_hard_decisions(shape):
    """The full pass (hard gates, every exit head on every example) is the reference."""
    model = compressed("bert", **shape)
    batch = inputs(batch=7)
    routed = model(**batch)
    full = model(**batch, dynamic=False)
    for row, layer in enumerate(routed.exit_layer.tolist()):
        expected = full.logits[row] if layer == model.num_layers else full.exit_logits[layer - 1][row]
        torch.testing.assert_close(routed.logits[row], expected, atol=1e-5, rtol=1e-4)
    if not model.exit_heads:
        assert torch.equal(routed.layers_executed, full.layers_executed)


def count_layer_rows(model) -> list[int]:
    rows = [0] * model.num_layers

    def hook(index):
        def record(module, args, kwargs):
            rows[index] += args[0].shape[0]
        return record

    for i, layer in enumerate(model.layers):
        layer.register_forward_pre_hook(hook(i), with_kwargs=True)
    return rows


def test_skipped_layers_do_no_work_for_skipped_examples():
    model = compressed("bert", gates=True)
    rows = count_layer_rows(model)
    out = model(**inputs(batch=8))
    assert sum(rows) == out.layers_executed.sum().item()
    assert sum(rows) < 8 * model.num_layers, "the random gates were expected to skip something"


def test_layers_after_an_exit_are_not_executed():
    model = compressed("bert", exits="budget")
    model.exit_rule.k = 1
    rows = count_layer_rows(model)
    out = model(**inputs(batch=6))
    assert rows == [6, 0, 0]
    assert out.exit_layer.tolist() == [1] * 6
    assert out.layers_executed.tolist() == [1.0] * 6


def test_training_mode_runs_every_example_through_every_layer_and_exit_head():
    model = compressed("bert", gates=True, exits="entropy").train()
    out = model(**inputs(batch=4), labels=torch.tensor([0, 1, 0, 1]), output_hidden_states=True,
                output_attentions=True)
    assert set(out.exit_logits) == {0, 1} and set(out.gate_values) == {0, 1, 2}
    assert len(out.hidden_states) == 4 and len(out.attentions) == 3
    out.loss.backward()
    assert model.gates["0"].net[0].weight.grad is not None  # gates learn through the estimator


@pytest.mark.parametrize(
    "layers, message",
    [
        ([], "at least one layer"),
        ([{"source": 0, "heads": [], "intermediate_size": 8}], "layers[0].heads"),
        ([{"source": 0, "heads": [0, 9], "intermediate_size": 8}], "out of range"),
        ([{"source": 0, "heads": [0], "intermediate_size": 8, "exit": True}], "last layer"),
        ([{"source": 0, "heads": [0], "intermediate_size": 8, "colour": 1}], "layers[0].colour"),
    ],
)
def test_an_impossible_layer_spec_is_a_clear_error(layers, message):
    config = CompressedConfig.from_backbone_config(CONFIGS["bert"]())
    config.layers = layers
    with pytest.raises(ModelFormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        CompressedModelForSequenceClassification(config)


def test_an_unknown_exit_rule_names_the_known_ones():
    config = CompressedConfig.from_backbone_config(CONFIGS["bert"]())
    config.exit_rule = {"name": "vibes"}
    with pytest.raises(ModelFormatError, match="known: budget, entropy"):
        CompressedModelForSequenceClassification(config)

"""FLOPs counted from the executed operations agree with the transformer's analytic count."""

from __future__ import annotations

import datasets
import pytest
import torch

from compresskit.evaluation.flops import flops_per_example
from tests.conftest import make_tokenizer
from tests.test_modeling import compressed


def analytic(layers: list[dict], tokens: int, hidden: int, head_size: int, labels: int) -> float:
    """Multiply-adds x 2 of one example's forward pass (nanoGPT-style, per matmul), layer by layer:
    Q, K, V and the output projection (heads x head size wide), scores and their weighted sum, the FFN;
    then the pooler and the classifier on one token."""
    total = 0.0
    for layer in layers:
        width = len(layer["heads"]) * head_size
        total += 2 * tokens * hidden * width * 3 + 2 * tokens * width * hidden  # Q, K, V, output
        total += 2 * tokens * tokens * width * 2  # q.k and attention x V
        total += 2 * tokens * hidden * layer["intermediate_size"] * 2  # FFN in and out
    return total + 2 * hidden * hidden + 2 * hidden * labels


@pytest.mark.parametrize("tokens", [5, 9])
def test_counted_flops_equal_the_analytic_count_of_a_pruned_static_model(tmp_path, tokens):
    model = compressed("bert")  # layers of 2, 3 and 4 heads and FFN widths 16, 64, 40
    tokenizer = make_tokenizer(tmp_path)
    ids = torch.randint(5, 20, (4, tokens))
    rows = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * tokens] * 4,
                                       "labels": [0, 1, 0, 1]})
    config = model.config.backbone
    expected = analytic(model.config.layers, tokens, config["hidden_size"],
                        config["hidden_size"] // config["num_attention_heads"], 2)
    assert flops_per_example(model, rows, tokenizer, batch_size=2) == pytest.approx(expected, rel=1e-9)

"""What a model costs: FLOPs per example counted from the operations it executes, and its parameters."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedTokenizerBase

from compresskit.data.batches import loader, model_inputs


@torch.no_grad()
def flops_per_example(model: torch.nn.Module, dataset: Any, tokenizer: PreTrainedTokenizerBase,
                      max_examples: int = 256, batch_size: int = 32) -> float:
    """FLOPs counted from the operations actually executed (eager attention), per example.

    Dynamic models run their routed inference here, so skipped layers and exited examples
    cost nothing in the count, just as at serving time.
    """
    subset = dataset.select(range(min(max_examples, len(dataset))))
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        for batch in loader(subset, tokenizer, batch_size):
            model(**model_inputs(batch))
    model.train(was_training)
    return counter.get_total_flops() / max(len(subset), 1)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

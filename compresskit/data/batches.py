"""Batches of tokenized rows: the loader every training and evaluation loop uses, and what a model takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict[str, Any], labels: bool = False) -> dict[str, Any]:
    """The entries of a batch a model's forward takes (and `labels`, when asked)."""
    keep = (*MODEL_INPUTS, "labels") if labels else MODEL_INPUTS
    return {k: v for k, v in batch.items() if k in keep}


def on_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on `device` (a loss that reads `labels` itself needs them beside the logits)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def loader(dataset: Any, tokenizer: PreTrainedTokenizerBase, batch_size: int, shuffle: bool = False,
           seed: int = 0, collate_fn: Callable[[list[dict]], dict] | None = None) -> DataLoader:
    """Batches padded to their own longest row (dynamic padding), shuffled reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collate_fn or DataCollatorWithPadding(tokenizer))

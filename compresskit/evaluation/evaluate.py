"""Evaluate a model on a tokenized split: task metrics, layers executed, FLOPs, parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from compresskit.data.tasks import TaskSpec
from compresskit.evaluation.metrics import compute_metrics

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def loader(dataset: Any, tokenizer: PreTrainedTokenizerBase, batch_size: int, shuffle: bool = False,
           seed: int = 0, collate_fn: Callable[[list[dict]], dict] | None = None) -> DataLoader:
    """Batches padded to their own longest row (dynamic padding), shuffled reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collate_fn or DataCollatorWithPadding(tokenizer))


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: Any, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64,
            accelerator: Accelerator | None = None, desc: str = "evaluate") -> dict[str, np.ndarray]:
    """Logits, labels and layers executed per example (gathered across processes)."""
    data = loader(dataset, tokenizer, batch_size)
    if accelerator is not None:
        data = accelerator.prepare(data)
    was_training = model.training
    model.eval()
    logits, labels, layers = [], [], []
    main = accelerator is None or accelerator.is_local_main_process
    for batch in tqdm(data, desc=desc, leave=False, disable=not main):
        out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
        executed = getattr(out, "layers_executed", None)
        if executed is None:  # a stock HF model runs every layer
            executed = torch.full((out.logits.shape[0],), float(model.config.num_hidden_layers))
        batch_out = (out.logits.float(), batch["labels"], executed.float())
        if accelerator is not None:
            batch_out = accelerator.gather_for_metrics(batch_out)
        for store, value in zip((logits, labels, layers), batch_out, strict=True):
            store.append(value.cpu())
    model.train(was_training)
    return {"logits": torch.cat(logits).numpy(), "labels": torch.cat(labels).numpy(),
            "layers_executed": torch.cat(layers).numpy()}


def evaluate(model: torch.nn.Module, dataset: Any, task: TaskSpec, tokenizer: PreTrainedTokenizerBase,
             batch_size: int = 64, accelerator: Accelerator | None = None) -> dict[str, float]:
    out = predict(model, dataset, tokenizer, batch_size, accelerator)
    metrics = compute_metrics(task, out["logits"], out["labels"])
    metrics["avg_layers"] = float(out["layers_executed"].mean())
    metrics["examples"] = int(len(out["labels"]))
    return metrics


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
            model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
    model.train(was_training)
    return counter.get_total_flops() / max(len(subset), 1)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def layer_usage(model: torch.nn.Module, dataset: Any, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64
                ) -> dict[str, list[float]]:
    """How a dynamic model spends its layers at inference on `dataset`.

    `per_layer`: the share of examples for which each layer ran; `histogram`: the share of
    examples that used 0, 1, ..., L layers.
    """
    was_training = model.training
    model.eval()
    masks = []
    for batch in loader(dataset, tokenizer, batch_size):
        masks.append(model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).layer_mask.cpu())
    model.train(was_training)
    mask = torch.cat(masks)
    counts = torch.bincount(mask.sum(1), minlength=mask.shape[1] + 1)
    return {"per_layer": mask.float().mean(0).tolist(), "histogram": (counts / counts.sum()).tolist()}


def plot_layer_usage(usage: dict[str, list[float]], path: Any, title: str = "") -> None:
    """Per-layer usage bars and the layers-used histogram, side by side (HadSkip's Figs. 2-5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    per_layer = usage["per_layer"]
    left.bar(range(1, len(per_layer) + 1), per_layer, color="tab:blue")
    left.set(xlabel="layer", ylabel="P(layer runs)", ylim=(0, 1.05), title="per-layer usage")
    right.bar(range(len(usage["histogram"])), usage["histogram"], color="tab:orange")
    right.set(xlabel="layers used", ylabel="share of examples", title="layers used per example")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

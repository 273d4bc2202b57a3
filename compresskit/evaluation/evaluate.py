"""Evaluate a model on a tokenized split: task metrics and layers executed per example."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from compresskit.data.batches import loader, model_inputs
from compresskit.data.tasks import TaskSpec
from compresskit.evaluation.metrics import compute_metrics


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: Any, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64,
            accelerator: Accelerator | None = None, desc: str = "evaluate") -> dict[str, np.ndarray]:
    """Logits, labels and layers executed per example (gathered across processes), in the
    dataset's order. The rows are read sorted by length: a batch of similar lengths is little
    padding (on short texts half the tokens of a batch in the dataset's order are padding)."""
    order = np.argsort([len(ids) for ids in dataset["input_ids"]], kind="stable")
    data = loader(dataset.select(order), tokenizer, batch_size)
    if accelerator is not None:
        data = accelerator.prepare(data)
    was_training = model.training
    model.eval()
    logits, labels, layers = [], [], []
    main = accelerator is None or accelerator.is_local_main_process
    for batch in tqdm(data, desc=desc, leave=False, disable=not main):
        out = model(**model_inputs(batch))
        executed = getattr(out, "layers_executed", None)
        if executed is None:  # a stock HF model runs every layer
            executed = torch.full((out.logits.shape[0],), float(model.config.num_hidden_layers))
        batch_out = (out.logits.float(), batch["labels"], executed.float())
        if accelerator is not None:
            batch_out = accelerator.gather_for_metrics(batch_out)
        for store, value in zip((logits, labels, layers), batch_out, strict=True):
            store.append(value.cpu())
    model.train(was_training)
    back = np.argsort(order, kind="stable")  # sorted position of each row
    return {"logits": torch.cat(logits).numpy()[back], "labels": torch.cat(labels).numpy()[back],
            "layers_executed": torch.cat(layers).numpy()[back]}


def evaluate(model: torch.nn.Module, dataset: Any, task: TaskSpec, tokenizer: PreTrainedTokenizerBase,
             batch_size: int = 64, accelerator: Accelerator | None = None) -> dict[str, float]:
    out = predict(model, dataset, tokenizer, batch_size, accelerator)
    metrics = compute_metrics(task, out["logits"], out["labels"])
    metrics["avg_layers"] = float(out["layers_executed"].mean())
    metrics["examples"] = int(len(out["labels"]))
    return metrics

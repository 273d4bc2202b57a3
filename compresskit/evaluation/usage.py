"""How a dynamic model spends its layers: per-layer use and the layers-used histogram, and their plot."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from compresskit.data.batches import loader, model_inputs


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
        masks.append(model(**model_inputs(batch)).layer_mask.cpu())
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

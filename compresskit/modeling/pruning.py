"""Structured pruning of attention heads and FFN neurons through torch-pruning's dependency graph.

torch-pruning traces the model once and finds, for a layer's query projection, everything whose
channels are coupled to it (key, value, the attention output's input), and for the FFN's first
projection the second one's input. The channels of those groups are scored with torch-pruning's
importance criteria (magnitude or first-order Taylor); whole heads and neurons are kept (per
layer, or globally across layers), the groups pruned through the graph, and what is left written
into the model's config: the original indices of the kept heads and the FFN width of every layer,
so the result reloads with `from_pretrained` anywhere. The hidden size is never pruned (residual
streams couple every layer).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch_pruning as tp

from compresskit.data.batches import model_inputs
from compresskit.errors import CompressKitError
from compresskit.modeling.backbones import LayerParts
from compresskit.modeling.model import CompressedModelForSequenceClassification

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class PruneSettings:
    """How much to prune and how to choose (structured_prune's and cost_eff's steps)."""

    head_ratio: float
    ffn_ratio: float
    importance: Literal["magnitude", "taylor"] = "magnitude"
    scope: Literal["uniform", "global"] = "uniform"
    round_ffn_to: int = 8


def prune(model: CompressedModelForSequenceClassification, batches: list[dict[str, torch.Tensor]],
          cfg: PruneSettings, loss_fn: LossFn | None = None) -> CompressedModelForSequenceClassification:
    """A pruned copy of `model` whose config describes exactly the heads and widths left.

    `loss_fn(model, batch)` is the loss whose gradients Taylor importance uses (default: the task loss).
    """
    training = model.training
    model = copy.deepcopy(model).eval()
    example = {k: v[:2] for k, v in model_inputs(batches[0]).items()}
    # the full pass (every layer, every exit head): routed inference would hide layers from the trace
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                  forward_fn=lambda m, x: m(**x, dynamic=False),
                                                  output_transform=lambda out: out.logits)
    parts = [model.adapter.parts(layer) for layer in model.layers]
    if cfg.importance == "taylor":
        accumulate_gradients(model, batches, loss_fn or task_loss)
    importance = (tp.importance.GroupTaylorImportance() if cfg.importance == "taylor"
                  else tp.importance.GroupMagnitudeImportance(p=2))

    head_scores, ffn_scores = [], []
    for index, p in enumerate(parts):
        if p.fused_qkv:
            head_scores.append(fused_head_scores(p, cfg.importance))
        else:
            query = p.qkv[0]
            group = graph.get_pruning_group(query, tp.prune_linear_out_channels,
                                            idxs=list(range(query.out_features)))
            if cfg.head_ratio > 0:
                check_group_is_local(group, model.layers[index], index)
            head_scores.append(importance(group).view(p.num_heads, -1).sum(1))
        group = graph.get_pruning_group(p.ffn_in, tp.prune_linear_out_channels,
                                        idxs=list(range(p.ffn_in.out_features)))
        # a gated FFN's first projection is [input | gate]: a neuron scores both halves
        ffn_scores.append(importance(group).view(2 if p.gated_ffn else 1, -1).sum(0))
    model.zero_grad(set_to_none=True)

    keep_heads = choose(head_scores, cfg.head_ratio, cfg.scope, multiple=1)
    keep_ffn = choose(ffn_scores, cfg.ffn_ratio, cfg.scope, multiple=cfg.round_ffn_to)
    config = copy.deepcopy(model.config)
    for index, p in enumerate(parts):
        dead = [h for h in range(p.num_heads) if h not in keep_heads[index]]
        if dead and p.fused_qkv:  # the graph cannot follow [q | k | v] through the head split: prune directly
            tp.prune_linear_out_channels(p.qkv[0], head_channels(p, dead))
            tp.prune_linear_in_channels(p.attention_out, [h * p.head_size + c for h in dead
                                                          for c in range(p.head_size)])
        elif dead:
            graph.get_pruning_group(p.qkv[0], tp.prune_linear_out_channels, idxs=head_channels(p, dead)).prune()
        drop = neuron_channels(p, [c for c in range(p.intermediate) if c not in keep_ffn[index]])
        if drop:
            graph.get_pruning_group(p.ffn_in, tp.prune_linear_out_channels, idxs=drop).prune()
        spec = config.layers[index]
        config.layers[index] = {**spec, "heads": [spec["heads"][h] for h in keep_heads[index]],
                                "intermediate_size": len(keep_ffn[index])}
    # A fresh model built from the config alone must take the pruned weights as they are: this is
    # what makes the result reload anywhere, and it fails loudly if config and weights disagree.
    pruned = CompressedModelForSequenceClassification(config)
    pruned.load_state_dict(model.state_dict())
    return pruned.train(training)


def fused_head_scores(parts: LayerParts, importance: str) -> torch.Tensor:
    """Per head of a fused [q | k | v] projection: what torch-pruning's group importance sums for
    an unfused one, over the head's rows of the projection and its columns of the output."""
    def local(linear: torch.nn.Linear, channels: list[int], dim: int) -> torch.Tensor:
        weight = linear.weight
        value = (weight * weight.grad).abs() if importance == "taylor" else weight.pow(2)
        return value.index_select(dim, torch.tensor(channels, device=weight.device)).sum()

    size = parts.head_size
    return torch.stack([
        local(parts.qkv[0], head_channels(parts, [h]), 0)
        + local(parts.attention_out, list(range(h * size, (h + 1) * size)), 1)
        for h in range(parts.num_heads)]).detach()


def head_channels(parts: LayerParts, heads: list[int]) -> list[int]:
    """The output channels of the (first) query projection that carry these heads."""
    size, width = parts.head_size, parts.num_heads * parts.head_size
    blocks = range(3) if parts.fused_qkv else range(1)
    return [b * width + h * size + c for b in blocks for h in heads for c in range(size)]


def neuron_channels(parts: LayerParts, neurons: list[int]) -> list[int]:
    """The output channels of the FFN's first projection that carry these neurons."""
    halves = range(2) if parts.gated_ffn else range(1)
    return [half * parts.intermediate + n for half in halves for n in neurons]


def task_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**model_inputs(batch), labels=batch["labels"], dynamic=False).loss


def accumulate_gradients(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], loss_fn: LossFn) -> None:
    """Sum the loss's gradients over `batches` (what Taylor importance multiplies with the weights)."""
    model.zero_grad(set_to_none=True)
    for batch in batches:
        loss_fn(model, batch).backward()


def check_group_is_local(group: Any, layer: torch.nn.Module, index: int) -> None:
    """Refuse groups that reach outside the layer (MPNet's relative-position bias is shared by all layers)."""
    inside = {id(m) for m in layer.modules()}
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)) and id(module) not in inside:
            raise CompressKitError(
                f"structured_prune: the heads of layer {index} are coupled to a module outside the layer "
                f"({type(module).__name__}); this backbone's heads cannot be pruned independently "
                "(MPNet shares a relative-position bias across layers). Set head_ratio: 0 to prune the FFN only, "
                "or distil into a BERT student first.")


def choose(scores: list[torch.Tensor], ratio: float, scope: str, multiple: int) -> list[list[int]]:
    """Indices to keep per layer: the top (1 - ratio) per layer, or globally by score normalised per layer."""
    if ratio == 0:
        return [list(range(len(s))) for s in scores]
    if scope == "uniform":
        return [top(s, keep_count(len(s), ratio, multiple)) for s in scores]
    normalised = [s / s.mean().clamp_min(1e-12) for s in scores]  # layers' scales differ
    flat = torch.cat(normalised)
    threshold = flat.sort(descending=True).values[keep_count(len(flat), ratio, 1) - 1]
    return [top(s, max(multiple, round_to(int((s >= threshold).sum()), multiple))) for s in normalised]


def keep_count(total: int, ratio: float, multiple: int) -> int:
    return max(multiple, round_to(round(total * (1 - ratio)), multiple))


def round_to(count: int, multiple: int) -> int:
    return max(multiple, multiple * round(count / multiple))


def top(scores: torch.Tensor, count: int) -> list[int]:
    """The `count` highest-scoring indices, in their original order."""
    count = min(count, len(scores))
    return sorted(scores.topk(count).indices.tolist())

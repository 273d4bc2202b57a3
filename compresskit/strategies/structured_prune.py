"""`structured_prune`: remove attention heads and FFN neurons with torch-pruning's dependency graph.

torch-pruning traces the model once and finds, for a layer's query projection, everything whose
channels are coupled to it (key, value, the attention output's input), and for the FFN's first
projection the second one's input. compresskit scores the channels of those groups with
torch-pruning's importance criteria (magnitude or first-order Taylor), chooses whole heads and
neurons to keep (per layer, or globally across layers), prunes the groups through the graph and
then writes what is left into the model's config: the original indices of the kept heads and the
FFN width of every layer. The result reloads with `from_pretrained` in a fresh process.
The hidden size is never pruned (residual streams couple every layer; the ratios name heads/FFN).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch_pruning as tp
from pydantic import Field, model_validator

from compresskit.errors import CompressKitError
from compresskit.evaluation.evaluate import MODEL_INPUTS, count_parameters, loader
from compresskit.modeling.model import CompressedModelForSequenceClassification
from compresskit.pipeline import PipelineState, StageContext
from compresskit.registry import ModelShape, PlanContext, StageConfig, Strategy, register_strategy

log = logging.getLogger(__name__)


class StructuredPruneConfig(StageConfig):
    """Recipe keys of a `structured_prune` stage."""

    head_ratio: float = Field(0.5, ge=0, lt=1, description="share of attention heads to remove")
    ffn_ratio: float = Field(0.5, ge=0, lt=1, description="share of FFN neurons to remove")
    importance: Literal["magnitude", "taylor"] = Field("magnitude", description="channel importance "
                                                       "(torch-pruning's group magnitude or Taylor criterion)")
    scope: Literal["uniform", "global"] = Field("uniform", description="the same ratio in every layer, or one "
                                                "ranking across layers (widths may then differ per layer)")
    taylor_batches: int = Field(16, ge=1, description="training batches whose gradients Taylor importance uses")
    batch_size: int = Field(32, ge=1)
    round_ffn_to: int = Field(8, ge=1, description="keep FFN widths a multiple of this (fast matmuls)")

    @model_validator(mode="after")
    def _something(self) -> StructuredPruneConfig:
        if self.head_ratio == 0 and self.ffn_ratio == 0:
            raise ValueError("head_ratio and ffn_ratio are both 0: nothing to prune")
        return self


@register_strategy
class StructuredPruneStrategy(Strategy):
    """Prune attention heads and FFN neurons (torch-pruning dependency graph); config follows the weights.

    Follow it with a recovery `finetune` or `distill` stage. Example stage::

        - strategy: structured_prune
          head_ratio: 0.5
          ffn_ratio: 0.5
          importance: taylor
    """

    name = "structured_prune"
    kind = "static"
    Config: ClassVar[type[StageConfig]] = StructuredPruneConfig

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        if shape.model_type == "mpnet" and self.config.head_ratio > 0:
            ctx.problem("head_ratio", "MPNet shares one relative-position bias across layers, so its heads cannot be "
                                      "pruned layer by layer; set head_ratio: 0 (FFN only) or distil into BERT first")
        return shape

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        cfg: StructuredPruneConfig = self.config  # type: ignore[assignment]
        before = count_parameters(state.model)
        data = loader(state.data["train"], state.tokenizer, cfg.batch_size, shuffle=True, seed=ctx.seed)
        batches = [{k: v for k, v in b.items() if k in (*MODEL_INPUTS, "labels")}
                   for b in itertools.islice(data, cfg.taylor_batches)]
        state.model = prune(state.model, batches, cfg)
        after = count_parameters(state.model)
        state.info = {
            "parameters_before": before, "parameters_after": after,
            "layers": [{"heads": s["heads"], "intermediate_size": s["intermediate_size"]}
                       for s in state.model.config.layers],
        }
        log.info("%s: parameters %.1fM -> %.1fM", ctx.name, before / 1e6, after / 1e6)
        return state


LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def prune(model: CompressedModelForSequenceClassification, batches: list[dict[str, torch.Tensor]],
          cfg: StructuredPruneConfig, loss_fn: LossFn | None = None) -> CompressedModelForSequenceClassification:
    """A pruned copy of `model` whose config describes exactly the heads and widths left.

    `loss_fn(model, batch)` is the loss whose gradients Taylor importance uses (default: the task loss).
    """
    training = model.training
    model = copy.deepcopy(model).eval()
    example = {k: v[:2] for k, v in batches[0].items() if k in MODEL_INPUTS}
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
        query = p.qkv[0]
        group = graph.get_pruning_group(query, tp.prune_linear_out_channels, idxs=list(range(query.out_features)))
        if cfg.head_ratio > 0:
            check_group_is_local(group, model.layers[index], index)
        heads = p.attention.num_attention_heads
        head_scores.append(importance(group).view(heads, -1).sum(1))
        group = graph.get_pruning_group(p.ffn_in, tp.prune_linear_out_channels,
                                        idxs=list(range(p.ffn_in.out_features)))
        ffn_scores.append(importance(group))
    model.zero_grad(set_to_none=True)

    keep_heads = choose(head_scores, cfg.head_ratio, cfg.scope, multiple=1)
    keep_ffn = choose(ffn_scores, cfg.ffn_ratio, cfg.scope, multiple=cfg.round_ffn_to)
    config = copy.deepcopy(model.config)
    for index, p in enumerate(parts):
        head_size = p.attention.attention_head_size
        heads = p.attention.num_attention_heads
        drop = [c for h in range(heads) if h not in keep_heads[index]
                for c in range(h * head_size, (h + 1) * head_size)]
        if drop:
            graph.get_pruning_group(p.qkv[0], tp.prune_linear_out_channels, idxs=drop).prune()
        drop = [c for c in range(p.ffn_in.out_features) if c not in keep_ffn[index]]
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


def task_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}, labels=batch["labels"], dynamic=False).loss


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

"""What an adapter tells the compressed model, with BERT's layout as the default."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import reduce
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


@dataclass(frozen=True)
class LayerParts:
    """The modules of one layer that structured compression resizes (and attention capture reads).

    `qkv` holds the query, key and value projections, or one fused Linear whose outputs are
    [query | key | value] (`fused_qkv`); `ffn_in` of a gated FFN (`gated_ffn`) outputs
    [input | gate], each `intermediate` wide.
    """

    attention: nn.Module
    qkv: tuple[nn.Linear, ...]
    attention_out: nn.Linear
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    num_heads: int
    head_size: int
    fused_qkv: bool = False
    gated_ffn: bool = False

    @property
    def intermediate(self) -> int:
        return self.ffn_out.in_features


class BackboneAdapter:
    """BERT's layout; an architecture overrides what differs.

    `base_prefix`: the attribute of the Hugging Face classifier that holds the encoder model;
    `layers_attr`: the dotted path from it to the ModuleList of layers; `token_types`: whether the
    model reads token_type_ids; `position_offset`: positions its position embeddings reserve;
    `bias_axes`: the ONNX axes of the tensor all layers share (`position_bias`), None when none.
    `head_pruning`: None, or why this architecture's heads cannot be pruned layer by layer.
    """

    base_prefix = "bert"
    layers_attr = "encoder.layer"
    token_types = True
    position_offset = 0
    bias_axes: dict[int, str] | None = None
    head_pruning: str | None = None

    # ---- the config ---------------------------------------------------------------------
    def check(self, config: PretrainedConfig) -> None:
        """Raise ModelFormatError naming what this adapter cannot serve in `config` (default: all of it)."""

    def prepare_config(self, config: PretrainedConfig) -> None:
        """Settings the layer-by-layer forward needs (set on the backbone's config before it is built)."""

    def dimensions(self, config: PretrainedConfig) -> dict[str, Any]:
        """The canonical sizes compresskit reads (hidden_size, num_attention_heads, intermediate_size,
        num_hidden_layers, hidden_dropout_prob), whatever this architecture calls them."""
        return {"hidden_size": config.hidden_size, "num_attention_heads": config.num_attention_heads,
                "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
                "hidden_dropout_prob": getattr(config, "hidden_dropout_prob", 0.1)}

    # ---- where things are -----------------------------------------------------------------
    def base(self, model: PreTrainedModel) -> nn.Module:
        return getattr(model, self.base_prefix)

    def layers(self, model: PreTrainedModel) -> nn.ModuleList:
        return reduce(getattr, self.layers_attr.split("."), self.base(model))

    def layer_for_source(self, model: PreTrainedModel, index: int, source: int) -> None:
        """Make layer `index` of a freshly built backbone the kind of layer `source` of the original was
        (architectures whose layers differ by position; BERT's do not)."""

    @property
    def layers_prefix(self) -> str:
        """Where a layer's weights start in the classifier's state dict ('bert.encoder.layer.')."""
        return f"{self.base_prefix}.{self.layers_attr}."

    # ---- the forward pass, piece by piece -----------------------------------------------------
    def embed(self, model: PreTrainedModel, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor) -> torch.Tensor:
        return self.base(model).embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def layer_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """What a layer takes as its mask, batch first: an additive (batch, 1, 1, keys) mask."""
        return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    def position_bias(self, model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor | None:
        """A tensor shared by all layers, computed once per forward from a (1, sequence, hidden) slice
        of the embeddings (MPNet's relative-position bias, DeBERTa's relative positions)."""
        return None

    def run_layer(self, model: PreTrainedModel, layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                  position_bias: torch.Tensor | None, output_attentions: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = layer(hidden, attention_mask=mask, output_attentions=output_attentions)
        return out[0], (out[1] if output_attentions else None)

    def head(self, model: PreTrainedModel, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.base(model).pooler(hidden)
        return model.classifier(model.dropout(pooled))

    # ---- attention, as distillation reads it --------------------------------------------------
    def attention_dropout(self, layer: nn.Module) -> nn.Module | None:
        """The dropout module the attention probabilities pass through (its input is what the
        softmax gave); None where the architecture drops out functionally."""
        return getattr(self.parts(layer).attention, "dropout", None)

    @contextlib.contextmanager
    def capture_scores(self, layer: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """Raw attention scores q.k/sqrt(d) of one layer, read off its query/key projections.

        Taken before the mask, the softmax and attention dropout, as TinyBERT's attention loss wants them.
        """
        parts = self.parts(layer)
        out: dict[str, torch.Tensor] = {}
        # the first call's output: DeBERTa projects the relative-position embeddings with them too, later
        hooks = [proj.register_forward_hook(lambda m, i, o, key=key: None if key in out else out.update({key: o}))
                 for key, proj in zip(("q", "k"), parts.qkv[:2], strict=True)]
        try:
            yield out
        finally:
            for hook in hooks:
                hook.remove()
        q, k = (split_heads(out[key], parts.num_heads, parts.head_size) for key in ("q", "k"))
        out["scores"] = q @ k.transpose(-1, -2) / math.sqrt(parts.head_size)

    # ---- structure -----------------------------------------------------------------------
    def parts(self, layer: nn.Module) -> LayerParts:
        att = layer.attention.self
        return LayerParts(att, (att.query, att.key, att.value), layer.attention.output.dense,
                          layer.intermediate.dense, layer.output.dense, att.num_attention_heads,
                          att.attention_head_size)

    def resize_layer(self, layer: nn.Module, num_heads: int, intermediate_size: int) -> None:
        """Give one layer `num_heads` heads and an FFN of `intermediate_size` (fresh weights)."""
        parts = self.parts(layer)
        hidden = parts.attention_out.out_features
        width = num_heads * parts.head_size
        for name, old in zip(self._qkv_names(), parts.qkv, strict=True):
            setattr(parts.attention, name, nn.Linear(hidden, width, bias=old.bias is not None))
        self._set_attention_out(layer, nn.Linear(width, hidden, bias=parts.attention_out.bias is not None))
        self._set_head_count(parts.attention, num_heads, width)
        self._set_ffn(layer, nn.Linear(hidden, intermediate_size, bias=parts.ffn_in.bias is not None),
                      nn.Linear(intermediate_size, hidden, bias=parts.ffn_out.bias is not None))

    def _qkv_names(self) -> tuple[str, ...]:
        return ("query", "key", "value")

    def _set_head_count(self, attention: nn.Module, num_heads: int, width: int) -> None:
        attention.num_attention_heads = num_heads
        attention.all_head_size = width

    def _set_attention_out(self, layer: nn.Module, linear: nn.Linear) -> None:
        layer.attention.output.dense = linear

    def _set_ffn(self, layer: nn.Module, ffn_in: nn.Linear, ffn_out: nn.Linear) -> None:
        layer.intermediate.dense, layer.output.dense = ffn_in, ffn_out


def split_heads(projected: torch.Tensor, num_heads: int, head_size: int) -> torch.Tensor:
    """(batch, sequence, heads * size) -> (batch, heads, sequence, size)."""
    return projected.view(projected.shape[0], -1, num_heads, head_size).transpose(1, 2)

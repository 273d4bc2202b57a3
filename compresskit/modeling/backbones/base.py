"""What an adapter tells the compressed model, with BERT's layout as the default."""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel


@dataclass(frozen=True)
class LayerParts:
    """The modules of one layer that structured compression resizes (and attention capture reads)."""

    attention: nn.Module  # holds num_attention_heads / attention_head_size and the attention dropout
    qkv: tuple[nn.Linear, ...]  # query, key, value (one fused Linear where the architecture fuses them)
    attention_out: nn.Linear
    ffn_in: nn.Linear
    ffn_out: nn.Linear


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

    def base(self, model: PreTrainedModel) -> nn.Module:
        return getattr(model, self.base_prefix)

    def layers(self, model: PreTrainedModel) -> nn.ModuleList:
        return reduce(getattr, self.layers_attr.split("."), self.base(model))

    @property
    def layers_prefix(self) -> str:
        """Where a layer's weights start in the classifier's state dict ('bert.encoder.layer.')."""
        return f"{self.base_prefix}.{self.layers_attr}."

    def embed(self, model: PreTrainedModel, input_ids: torch.Tensor,
              token_type_ids: torch.Tensor | None) -> torch.Tensor:
        return self.base(model).embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def layer_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """What a layer takes as its mask, batch first: an additive (batch, 1, 1, keys) mask."""
        return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    def position_bias(self, model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor | None:
        """A tensor shared by all layers, computed once per forward (MPNet's relative-position bias)."""
        return None

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                  position_bias: torch.Tensor | None, output_attentions: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = layer(hidden, attention_mask=mask, output_attentions=output_attentions)
        return out[0], (out[1] if output_attentions else None)

    def head(self, model: PreTrainedModel, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.base(model).pooler(hidden)
        return model.classifier(model.dropout(pooled))

    def parts(self, layer: nn.Module) -> LayerParts:
        att = layer.attention.self
        return LayerParts(att, (att.query, att.key, att.value), layer.attention.output.dense,
                          layer.intermediate.dense, layer.output.dense)

    def resize_layer(self, layer: nn.Module, num_heads: int, intermediate_size: int) -> None:
        """Give one layer `num_heads` heads and an FFN of `intermediate_size` (fresh weights)."""
        parts = self.parts(layer)
        att = parts.attention
        head_size = att.attention_head_size
        hidden = parts.attention_out.out_features
        width = num_heads * head_size
        for name, old in zip(self._qkv_names(), parts.qkv, strict=True):
            setattr(att, name, nn.Linear(hidden, width, bias=old.bias is not None))
        self._set_attention_out(layer, nn.Linear(width, hidden))
        att.num_attention_heads = num_heads
        att.all_head_size = width
        self._set_ffn(layer, nn.Linear(hidden, intermediate_size), nn.Linear(intermediate_size, hidden))

    def _qkv_names(self) -> tuple[str, ...]:
        return ("query", "key", "value")

    def _set_attention_out(self, layer: nn.Module, linear: nn.Linear) -> None:
        layer.attention.output.dense = linear

    def _set_ffn(self, layer: nn.Module, ffn_in: nn.Linear, ffn_out: nn.Linear) -> None:
        layer.intermediate.dense, layer.output.dense = ffn_in, ffn_out

    def describe(self) -> dict[str, Any]:
        return {"token_types": self.token_types, "position_offset": self.position_offset}

"""Adapters: the few places where BERT, RoBERTa and MPNet differ.

The compressed model drives the stock Hugging Face modules layer by layer (so it can gate,
exit and route sub-batches); an adapter tells it where the embeddings, layers and head are,
how to call a layer, and how to resize one layer's attention heads and FFN width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel


@dataclass(frozen=True)
class LayerParts:
    """The Linear modules of one layer that structured compression resizes."""

    attention: nn.Module  # holds num_attention_heads / attention_head_size / all_head_size
    qkv: tuple[nn.Linear, nn.Linear, nn.Linear]
    attention_out: nn.Linear
    ffn_in: nn.Linear
    ffn_out: nn.Linear


class BackboneAdapter:
    """BERT layout; RoBERTa and MPNet override what differs."""

    base_prefix = "bert"

    def base(self, model: PreTrainedModel) -> nn.Module:
        return getattr(model, self.base_prefix)

    def layers(self, model: PreTrainedModel) -> nn.ModuleList:
        return self.base(model).encoder.layer

    def embed(self, model: PreTrainedModel, input_ids: torch.Tensor,
              token_type_ids: torch.Tensor | None) -> torch.Tensor:
        return self.base(model).embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def position_bias(self, model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor | None:
        """Relative-position bias shared by all layers (MPNet only), shape (1, heads, T, T)."""
        return None

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                  position_bias: torch.Tensor | None, output_attentions: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = layer(hidden, attention_mask=mask, output_attentions=output_attentions)
        return out[0], (out[1] if output_attentions else None)

    def head(self, model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
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
        layer.intermediate.dense = nn.Linear(hidden, intermediate_size)
        layer.output.dense = nn.Linear(intermediate_size, hidden)

    def _qkv_names(self) -> tuple[str, str, str]:
        return ("query", "key", "value")

    def _set_attention_out(self, layer: nn.Module, linear: nn.Linear) -> None:
        layer.attention.output.dense = linear


class RobertaAdapter(BackboneAdapter):
    base_prefix = "roberta"

    def head(self, model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        return model.classifier(hidden)


class MPNetAdapter(BackboneAdapter):
    base_prefix = "mpnet"

    def embed(self, model, input_ids, token_type_ids):
        return self.base(model).embeddings(input_ids=input_ids)  # MPNet has no token types

    def position_bias(self, model, hidden):
        return self.base(model).encoder.compute_position_bias(hidden[:1])

    def run_layer(self, layer, hidden, mask, position_bias, output_attentions):
        if position_bias is not None and layer.kept_heads is not None:
            # the shared bias has one slice per original head: keep this layer's heads
            position_bias = position_bias[:, layer.kept_heads]
        out = layer(hidden, attention_mask=mask, position_bias=position_bias,
                    output_attentions=output_attentions)
        return out[0], (out[1] if output_attentions else None)

    def head(self, model, hidden):
        return model.classifier(hidden)

    def parts(self, layer):
        att = layer.attention.attn
        return LayerParts(att, (att.q, att.k, att.v), att.o, layer.intermediate.dense, layer.output.dense)

    def _qkv_names(self):
        return ("q", "k", "v")

    def _set_attention_out(self, layer, linear):
        layer.attention.attn.o = linear


ADAPTERS: dict[str, BackboneAdapter] = {
    "bert": BackboneAdapter(),
    "roberta": RobertaAdapter(),
    "mpnet": MPNetAdapter(),
}

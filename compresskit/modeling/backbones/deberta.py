"""DeBERTa-v2 (the architecture of DeBERTa-v3): disentangled attention over relative positions.

The relative positions are the tensor all layers share (`position_bias`); each layer projects the
shared relative-position embeddings with its own query/key projections, so its heads prune with it.
"""

from __future__ import annotations

from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

from compresskit.errors import ModelFormatError
from compresskit.modeling.backbones.base import BackboneAdapter, LayerParts
from compresskit.modeling.backbones.registry import register_backbone


@register_backbone("deberta-v2")
class DebertaV2Adapter(BackboneAdapter):
    base_prefix = "deberta"
    token_types = False
    bias_axes = {1: "sequence", 2: "sequence_k"}

    def check(self, config):
        refused = {"conv_kernel_size": "a convolution beside the first layer",
                   "type_vocab_size": "token type embeddings"}
        for key, what in refused.items():
            if getattr(config, key, 0) > 0:
                raise ModelFormatError(f"deberta-v2 with {what} ({key}: {getattr(config, key)}) is not supported: "
                                       "the DeBERTa-v3 layout (no convolution, no token types) is")
        if not getattr(config, "relative_attention", False) or getattr(config, "z_steps", 0) > 1:
            raise ModelFormatError("deberta-v2 without relative attention, or with z_steps > 1, is not supported")

    def embed(self, model, input_ids, token_type_ids, attention_mask):
        return self.base(model).embeddings(input_ids=input_ids, mask=attention_mask)  # zeroes padding

    def layer_mask(self, attention_mask, dtype):
        """(batch, 1, queries, keys), 1 where a query and its key are both real tokens."""
        keys = attention_mask[:, None, None, :]
        return keys * keys.squeeze(-2).unsqueeze(-1)

    def position_bias(self, model, hidden):
        encoder = self.base(model).encoder
        return build_relative_position(hidden, hidden, bucket_size=encoder.position_buckets,
                                       max_position=encoder.max_relative_positions)

    def run_layer(self, model, layer, hidden, mask, position_bias, output_attentions):
        relative = self.base(model).encoder.get_rel_embedding()
        out = layer(hidden, mask, relative_pos=position_bias, rel_embeddings=relative,
                    output_attentions=output_attentions)
        return out[0], out[1]

    def head(self, model, hidden, attention_mask):
        return model.classifier(model.dropout(model.pooler(hidden)))

    def parts(self, layer):
        att = layer.attention.self
        return LayerParts(att, (att.query_proj, att.key_proj, att.value_proj), layer.attention.output.dense,
                          layer.intermediate.dense, layer.output.dense, att.num_attention_heads,
                          att.attention_head_size)

    def _qkv_names(self):
        return ("query_proj", "key_proj", "value_proj")

    def resize_layer(self, layer, num_heads, intermediate_size):
        super().resize_layer(layer, num_heads, intermediate_size)
        att = layer.attention.self
        for name in ("pos_key_proj", "pos_query_proj"):  # unshared positional projections, where present
            old = getattr(att, name, None)
            if old is not None:
                setattr(att, name, type(old)(old.in_features, att.all_head_size, bias=old.bias is not None))

"""MPNet: BERT-like layers with a relative-position bias shared by all of them."""

from __future__ import annotations

from compresskit.modeling.backbones.base import BackboneAdapter, LayerParts
from compresskit.modeling.backbones.registry import register_backbone


@register_backbone("mpnet")
class MPNetAdapter(BackboneAdapter):
    base_prefix = "mpnet"
    token_types = False
    position_offset = 2
    bias_axes = {2: "sequence", 3: "sequence_k"}
    head_pruning = ("MPNet shares one relative-position bias across layers, so its heads cannot be pruned layer by "
                    "layer; set head_ratio: 0 (FFN only) or distil into BERT first")

    def embed(self, model, input_ids, token_type_ids, attention_mask):
        return self.base(model).embeddings(input_ids=input_ids)  # MPNet has no token types

    def position_bias(self, model, hidden):
        return self.base(model).encoder.compute_position_bias(hidden[:1])

    def run_layer(self, model, layer, hidden, mask, position_bias, output_attentions):
        if position_bias is not None and layer.kept_heads is not None:
            # the shared bias has one slice per original head: keep this layer's heads
            position_bias = position_bias[:, layer.kept_heads]
        out = layer(hidden, attention_mask=mask, position_bias=position_bias, output_attentions=output_attentions)
        return out[0], (out[1] if output_attentions else None)

    def head(self, model, hidden, attention_mask):
        return model.classifier(hidden)

    def parts(self, layer):
        att = layer.attention.attn
        return LayerParts(att, (att.q, att.k, att.v), att.o, layer.intermediate.dense, layer.output.dense,
                          att.num_attention_heads, att.attention_head_size)

    def _qkv_names(self):
        return ("q", "k", "v")

    def _set_attention_out(self, layer, linear):
        layer.attention.attn.o = linear

"""DistilBERT: BERT's layers under other names, a 0/1 key mask, and a pre-classifier on [CLS]."""

from __future__ import annotations

from torch import nn

from compresskit.modeling.backbones.base import BackboneAdapter, LayerParts
from compresskit.modeling.backbones.registry import register_backbone


@register_backbone("distilbert")
class DistilBertAdapter(BackboneAdapter):
    base_prefix = "distilbert"
    layers_attr = "transformer.layer"
    token_types = False

    def dimensions(self, config):
        return {"hidden_size": config.dim, "num_attention_heads": config.n_heads,
                "intermediate_size": config.hidden_dim, "num_hidden_layers": config.n_layers,
                "hidden_dropout_prob": config.dropout}

    def embed(self, model, input_ids, token_type_ids, attention_mask):
        return self.base(model).embeddings(input_ids)

    def layer_mask(self, attention_mask, dtype):
        return attention_mask  # the layer masks keys where it is 0

    def run_layer(self, model, layer, hidden, mask, position_bias, output_attentions):
        out = layer(hidden, attn_mask=mask, output_attentions=output_attentions)
        return (out[1], out[0]) if output_attentions else (out[0], None)  # (weights, hidden) when asked

    def head(self, model, hidden, attention_mask):
        pooled = nn.functional.relu(model.pre_classifier(hidden[:, 0]))
        return model.classifier(model.dropout(pooled))

    def parts(self, layer):
        att = layer.attention
        return LayerParts(att, (att.q_lin, att.k_lin, att.v_lin), att.out_lin, layer.ffn.lin1, layer.ffn.lin2,
                          att.n_heads, att.attention_head_size)

    def _qkv_names(self):
        return ("q_lin", "k_lin", "v_lin")

    def _set_head_count(self, attention, num_heads, width):
        attention.n_heads, attention.dim = num_heads, width

    def _set_attention_out(self, layer, linear):
        layer.attention.out_lin = linear

    def _set_ffn(self, layer, ffn_in, ffn_out):
        layer.ffn.lin1, layer.ffn.lin2 = ffn_in, ffn_out

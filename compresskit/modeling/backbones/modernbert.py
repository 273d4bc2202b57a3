"""ModernBERT: pre-norm layers with a fused QKV projection, rotary positions, alternating global and
sliding-window attention, a gated (GLU) FFN, a final norm and a pooling head."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from transformers.models.modernbert.modeling_modernbert import ModernBertEncoderLayer, apply_rotary_pos_emb

from compresskit.modeling.backbones.base import BackboneAdapter, LayerParts
from compresskit.modeling.backbones.registry import register_backbone


@register_backbone("modernbert")
class ModernBertAdapter(BackboneAdapter):
    base_prefix = "model"
    layers_attr = "layers"
    token_types = False

    def prepare_config(self, config):
        config.reference_compile = False  # torch.compile inside the layers would hide them from tracing

    def dimensions(self, config):
        return {**super().dimensions(config), "hidden_dropout_prob": config.classifier_dropout}

    def layer_for_source(self, model, index, source):
        # a layer's kind (global or sliding-window attention, a norm before attention or not) follows
        # its place in the original model, which layer pruning changes
        layers = self.layers(model)
        if index != source:
            layers[index] = ModernBertEncoderLayer(model.config, layer_id=source)

    def embed(self, model, input_ids, token_type_ids, attention_mask):
        return self.base(model).embeddings(input_ids=input_ids)

    def run_layer(self, model, layer, hidden, mask, position_bias, output_attentions):
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        window = layer.attn.local_attention[0]
        sliding = None
        if window >= 0:  # keys farther than the window are masked out
            near = (positions[:, None] - positions[None, :]).abs() <= window
            sliding = torch.where(near, mask, torch.finfo(mask.dtype).min)
        out = layer(hidden, attention_mask=mask, sliding_window_mask=sliding, position_ids=positions[None],
                    output_attentions=output_attentions)
        return out[0], (out[1] if output_attentions else None)

    def head(self, model, hidden, attention_mask):
        hidden = self.base(model).final_norm(hidden)
        if model.config.classifier_pooling == "mean":
            weights = attention_mask[..., None].to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
        else:
            pooled = hidden[:, 0]
        return model.classifier(model.drop(model.head(pooled)))

    def attention_dropout(self, layer):
        return None  # dropout is functional here (and 0 in the released models): the returned maps are the softmax's

    @contextlib.contextmanager
    def capture_scores(self, layer):
        parts = self.parts(layer)
        out: dict[str, torch.Tensor] = {}
        hook = parts.qkv[0].register_forward_hook(lambda m, i, o: out.__setitem__("qkv", o))
        try:
            yield out
        finally:
            hook.remove()
        batch, seq = out["qkv"].shape[:2]
        qkv = out["qkv"].view(batch, seq, 3, parts.num_heads, parts.head_size)
        q, k, _ = qkv.transpose(3, 1).unbind(dim=2)
        cos, sin = parts.attention.rotary_emb(qkv, position_ids=torch.arange(seq, device=qkv.device)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out["scores"] = q @ k.transpose(-1, -2) / math.sqrt(parts.head_size)

    def parts(self, layer):
        att = layer.attn
        return LayerParts(att, (att.Wqkv,), att.Wo, layer.mlp.Wi, layer.mlp.Wo, att.num_heads, att.head_dim,
                          fused_qkv=True, gated_ffn=True)

    def resize_layer(self, layer, num_heads, intermediate_size):
        att, mlp = layer.attn, layer.mlp
        hidden, width = att.Wo.out_features, num_heads * att.head_dim
        att.Wqkv = nn.Linear(hidden, 3 * width, bias=att.Wqkv.bias is not None)
        att.Wo = nn.Linear(width, hidden, bias=att.Wo.bias is not None)
        att.num_heads, att.all_head_size = num_heads, width
        mlp.Wi = nn.Linear(hidden, 2 * intermediate_size, bias=mlp.Wi.bias is not None)
        mlp.Wo = nn.Linear(intermediate_size, hidden, bias=mlp.Wo.bias is not None)

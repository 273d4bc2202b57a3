"""MiniLM-L3 ships only as ONNX: the converter rebuilds a BERT checkpoint that matches it."""

from __future__ import annotations

import io

import torch
from torch import nn
from transformers import AutoModel, BertConfig, BertModel

from compresskit.onnx_import import bert_from_onnx


class SentenceTransformerLike(nn.Module):
    """Parameter names as in a sentence-transformers export: model.0.auto_model.*"""

    def __init__(self, bert: BertModel):
        super().__init__()
        holder = nn.Module()
        holder.auto_model = bert
        self.model = nn.ModuleList([holder])

    def forward(self, input_ids, attention_mask):
        return self.model[0].auto_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def test_onnx_export_converts_back_to_the_same_bert(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=96, max_position_embeddings=32)
    bert = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():  # fresh zero biases / unit LayerNorms would be merged by the exporter
        for param in bert.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    ids = torch.tensor([[101, 7, 8, 9, 102, 0]])
    mask = (ids != 0).long()
    buffer = io.BytesIO()
    torch.onnx.export(SentenceTransformerLike(bert).eval(), (ids, mask), buffer,
                      input_names=["input_ids", "attention_mask"], output_names=["token_embeddings"], dynamo=False,
                      dynamic_axes={"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}})
    bert.eval()  # export restores the wrapper's (training) mode on every submodule
    bert_from_onnx(buffer.getvalue(), tmp_path)  # raises if it disagrees with onnxruntime
    rebuilt = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   bert(input_ids=ids, attention_mask=mask).last_hidden_state, atol=1e-5, rtol=1e-4)

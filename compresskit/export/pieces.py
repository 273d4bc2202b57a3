"""The PyTorch pieces the ONNX graphs are traced from, shared by the per-layer and one-call exports."""

from __future__ import annotations

from torch import nn

from compresskit.modeling.routing import gate_opens


class Embeddings(nn.Module):
    """Token ids -> the first hidden states (and MPNet's relative position bias)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.model.adapter.embed(self.model.backbone, input_ids, token_type_ids, attention_mask)
        bias = self.model.adapter.position_bias(self.model.backbone, hidden)
        return (hidden,) if bias is None else (hidden, bias)


class LayerStep(nn.Module):
    """One transformer layer alone."""

    def __init__(self, model, index):
        super().__init__()
        self.model, self.layer = model, model.layers[index]

    def forward(self, hidden, attention_mask, position_bias=None):
        mask = self.model.adapter.layer_mask(attention_mask, hidden.dtype)
        return self.model.adapter.run_layer(self.model.backbone, self.layer, hidden, mask, position_bias, False)[0]


class GateLogits(nn.Module):
    def __init__(self, model, index):
        super().__init__()
        self.gate = model.gates[str(index)]

    def forward(self, hidden, attention_mask):
        return self.gate(hidden, attention_mask)


class GateOpens(nn.Module):
    """The gate's decision, `routing.gate_opens` of its logits (the one-call graph's gate)."""

    def __init__(self, model, index):
        super().__init__()
        self.gate = model.gates[str(index)]

    def forward(self, hidden, attention_mask):
        return gate_opens(self.gate(hidden, attention_mask))


class ExitHead(nn.Module):
    """Exit logits and the exit rule's score after layer `index`."""

    def __init__(self, model, index):
        super().__init__()
        self.model, self.index = model, index

    def forward(self, hidden, attention_mask):
        summary = self.model.exit_summary(hidden, attention_mask)
        logits = self.model.exit_heads[str(self.index)](summary)
        return logits, self.model.exit_rule.score(self.index, logits, summary)


class Head(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, hidden, attention_mask):
        return self.model.adapter.head(self.model.backbone, hidden, attention_mask)

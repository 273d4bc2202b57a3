"""BERT and the architectures that share its layers: RoBERTa, XLM-RoBERTa, ELECTRA."""

from __future__ import annotations

from compresskit.modeling.backbones.base import BackboneAdapter
from compresskit.modeling.backbones.registry import register_backbone


@register_backbone("bert")
class BertAdapter(BackboneAdapter):
    pass


@register_backbone("roberta", "xlm-roberta")
class RobertaAdapter(BackboneAdapter):
    """RoBERTa (and XLM-RoBERTa, the same modules): no token types in use, positions offset by 2,
    the classification head reads the [CLS] state itself (no pooler)."""

    base_prefix = "roberta"
    token_types = False
    position_offset = 2

    def head(self, model, hidden, attention_mask):
        return model.classifier(hidden)


@register_backbone("electra")
class ElectraAdapter(BackboneAdapter):
    """ELECTRA's discriminator: BERT's layers; embeddings may be narrower than the layers (projected)."""

    base_prefix = "electra"

    def embed(self, model, input_ids, token_type_ids, attention_mask):
        base = self.base(model)
        hidden = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        return base.embeddings_project(hidden) if hasattr(base, "embeddings_project") else hidden

    def head(self, model, hidden, attention_mask):
        return model.classifier(hidden)

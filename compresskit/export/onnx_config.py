"""Optimum ONNX config for compresskit's model type.

Optimum knows BERT, RoBERTa and MPNet, but not "compresskit": its config keeps the backbone's
settings in a nested dict, and layers may differ in heads and FFN width. The config below tells
Optimum's exporter the inputs (those of the backbone), the output (logits) and how to make dummy
inputs (from the backbone's own config).
"""

from __future__ import annotations

from optimum.exporters.onnx.config import TextEncoderOnnxConfig
from optimum.utils import NormalizedTextConfig

ONNX_OPSET = 17
AXES = {0: "batch_size", 1: "sequence_length"}


class _BackboneNormalizedConfig(NormalizedTextConfig):
    """Optimum reads vocab size, hidden size, ... from the backbone config inside ours."""

    def __init__(self, config, **kwargs):
        super().__init__(config.backbone_config(), **kwargs)


class CompressKitOnnxConfig(TextEncoderOnnxConfig):
    NORMALIZED_CONFIG_CLASS = _BackboneNormalizedConfig
    DEFAULT_ONNX_OPSET = ONNX_OPSET
    ATOL_FOR_VALIDATION = 1e-4

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        return {name: AXES for name in input_names(self._config.backbone["model_type"])}


def input_names(model_type: str) -> list[str]:
    """The tokenizer outputs a backbone reads (RoBERTa, MPNet, DistilBERT, ... read no token types)."""
    from compresskit.modeling.backbones import adapter_for

    return ["input_ids", "attention_mask"] + (["token_type_ids"] if adapter_for(model_type).token_types else [])

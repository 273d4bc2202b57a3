"""The compressed model format: config, backbone adapters, dynamic modules, the model."""

from compresskit.modeling.config import CompressedConfig, ExitHeadSpec, ExitRuleSpec, GateSpec, LayerSpec
from compresskit.modeling.dynamic import EXIT_RULES, ExitRule, register_exit_rule
from compresskit.modeling.model import (
    CompressedModelForSequenceClassification,
    CompressedOutput,
    register_auto_classes,
)

__all__ = [
    "EXIT_RULES",
    "CompressedConfig",
    "CompressedModelForSequenceClassification",
    "CompressedOutput",
    "ExitRule",
    "ExitHeadSpec",
    "ExitRuleSpec",
    "GateSpec",
    "LayerSpec",
    "register_auto_classes",
    "register_exit_rule",
]

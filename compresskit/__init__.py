"""compresskit: compress BERT-family classifiers with composable, recipe-driven strategies."""

from compresskit.api import RunResult, apply
from compresskit.modeling import (
    CompressedConfig,
    CompressedModelForSequenceClassification,
    register_auto_classes,
)

__version__ = "0.1.0"

register_auto_classes()

__all__ = ["CompressedConfig", "CompressedModelForSequenceClassification", "RunResult", "__version__", "apply"]

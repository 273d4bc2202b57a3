"""compresskit: compress BERT-family classifiers with composable, recipe-driven strategies."""

from typing import Any

from compresskit.modeling import (
    CompressedConfig,
    CompressedModelForSequenceClassification,
    register_auto_classes,
)

__version__ = "0.1.0"

register_auto_classes()

__all__ = ["CompressedConfig", "CompressedModelForSequenceClassification", "RunResult", "__version__", "apply"]


def __getattr__(name: str) -> Any:
    """`compresskit.apply` / `compresskit.RunResult` (compresskit/api.py), imported on first use: the
    recipe machinery imports the package itself, so importing it here would be a circle."""
    if name in ("apply", "RunResult"):
        from compresskit import api

        return getattr(api, name)
    raise AttributeError(f"module 'compresskit' has no attribute {name!r}")

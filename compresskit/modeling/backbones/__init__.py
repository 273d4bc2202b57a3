"""Backbone adapters: the few places where encoder architectures differ, one file per architecture.

The compressed model drives the stock Hugging Face modules layer by layer (so it can gate, exit
and route sub-batches); an adapter tells it where the embeddings, layers and head are, what mask
a layer takes, how to call a layer, and how to resize one layer's attention heads and FFN width.
Other packages add architectures through the `compresskit.backbones` entry points
(`model_type = "package.module:AdapterClass"`); docs/adding-a-backbone.md shows how.
"""

from __future__ import annotations

# the built-in architectures register themselves
from compresskit.modeling.backbones import bert, deberta, distilbert, modernbert, mpnet  # noqa: E402, F401, I001
from compresskit.modeling.backbones.base import BackboneAdapter, LayerParts
from compresskit.modeling.backbones.registry import ADAPTERS, ENTRY_POINTS, adapter_for, register_backbone, supported

__all__ = ["ADAPTERS", "ENTRY_POINTS", "BackboneAdapter", "LayerParts", "adapter_for", "register_backbone",
           "supported"]

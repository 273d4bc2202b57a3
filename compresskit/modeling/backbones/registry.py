"""The registry of backbone adapters: by decorator, or through the compresskit.backbones entry points."""

from __future__ import annotations

from collections.abc import Callable

from compresskit.errors import ModelFormatError
from compresskit.modeling.backbones.base import BackboneAdapter
from compresskit.plugins import load_entry_points

ENTRY_POINTS = "compresskit.backbones"
ADAPTERS: dict[str, BackboneAdapter] = {}
_plugins_loaded = False


def register_backbone(*model_types: str) -> Callable[[type[BackboneAdapter]], type[BackboneAdapter]]:
    """Class decorator: the adapter of these Hugging Face `model_type`s (a type taken twice is an error)."""
    def wrap(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
        for model_type in model_types:
            existing = ADAPTERS.get(model_type)
            if existing is not None and type(existing) is not cls:
                raise ModelFormatError(f"backbone {model_type!r} is registered twice: by {type(existing).__module__}."
                                       f"{type(existing).__qualname__} and by {cls.__module__}.{cls.__qualname__}")
            ADAPTERS[model_type] = cls()
        return cls
    return wrap


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    for name, cls in load_entry_points(ENTRY_POINTS, "backbone", ModelFormatError):
        if type(ADAPTERS.get(name)) is not cls:
            register_backbone(name)(cls)
    _plugins_loaded = True


def supported() -> list[str]:
    _load_plugins()
    return sorted(ADAPTERS)


def adapter_for(model_type: str) -> BackboneAdapter:
    if model_type not in ADAPTERS:
        _load_plugins()
    if model_type not in ADAPTERS:
        raise ModelFormatError(
            f"backbone type {model_type!r} is not supported; supported: {', '.join(supported())}. An adapter for "
            f"another architecture is one file (docs/adding-a-backbone.md), registered through the {ENTRY_POINTS!r} "
            "entry points")
    return ADAPTERS[model_type]

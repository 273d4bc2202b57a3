"""Model surgery: new models made from a model's weights and a changed config.

Adding modules (gates, exit heads) keeps every weight whose name and shape still fit and leaves
the new modules as initialised; dropping layers renumbers the kept ones. The config always
describes the result, so it saves and reloads like any compressed model.
"""

from __future__ import annotations

import copy
from typing import Any

from compresskit.errors import ModelFormatError
from compresskit.modeling.config import CompressedConfig, GateSpec
from compresskit.modeling.model import CompressedModelForSequenceClassification


def restructure(model: CompressedModelForSequenceClassification, config: CompressedConfig
                ) -> CompressedModelForSequenceClassification:
    """A model of structure `config` with every weight of `model` whose name and shape still fit.

    For adding modules (gates, exit heads) to a model: new modules keep their fresh init. Layer
    weights are matched by position, so it is not the tool for dropping layers.
    """
    new = CompressedModelForSequenceClassification(config)
    target = new.state_dict()
    carried = {k: v for k, v in model.state_dict().items() if k in target and target[k].shape == v.shape}
    new.load_state_dict(carried, strict=False)
    new.train(model.training)
    return new


def select_layers(model: CompressedModelForSequenceClassification, keep: list[int]
                  ) -> CompressedModelForSequenceClassification:
    """A copy of `model` with only the layers at positions `keep` (in order), weights carried over.

    The layer specs keep their `source`, so the config still says which original layers these are.
    """
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < model.num_layers for i in keep):
        raise ModelFormatError(f"cannot keep layers {keep} of a {model.num_layers}-layer model")
    config = copy.deepcopy(model.config)
    config.layers = [model.config.layers[i] for i in keep]
    last = len(keep) - 1
    config.layers[last] = {**config.layers[last], "exit": False}  # the last layer predicts with the head
    new = CompressedModelForSequenceClassification(config)
    prefix = f"backbone.{model.adapter.layers_prefix}"
    state = {}
    for name, value in model.state_dict().items():
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            if int(index) in keep:
                state[f"{prefix}{keep.index(int(index))}.{rest}"] = value
        elif name.startswith(("gates.", "exit_heads.")):
            index, rest = name.split(".", 2)[1:]
            if int(index) in keep and (name.startswith("gates.") or keep.index(int(index)) < last):
                state[f"{name.split('.')[0]}.{keep.index(int(index))}.{rest}"] = value
        else:
            state[name] = value
    new.load_state_dict(state)
    new.train(model.training)
    return new


def with_exit_heads(model: CompressedModelForSequenceClassification, rule: dict[str, Any],
                    pooling: str = "cls") -> CompressedModelForSequenceClassification:
    """The same model with an exit head after every layer but the last, reading the layer's output
    pooled as `pooling`, and `rule` deciding exits."""
    config = copy.deepcopy(model.config)
    last = len(config.layers) - 1
    config.layers = [{**spec, "exit": i < last} for i, spec in enumerate(config.layers)]
    config.exit_head = {"pooling": pooling}
    config.exit_rule = rule
    return restructure(model, config)


def with_gates(model: CompressedModelForSequenceClassification, spec: GateSpec
               ) -> CompressedModelForSequenceClassification:
    """The same model with a gate of architecture `spec` before every layer."""
    config = copy.deepcopy(model.config)
    config.layers = [{**layer, "gate": True} for layer in config.layers]
    config.gate = spec.model_dump()
    return restructure(model, config)

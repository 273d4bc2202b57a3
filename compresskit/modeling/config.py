"""The compressed model's config: a stock backbone config plus a per-layer description.

Everything needed to rebuild a compressed model lives here, so loading never replays the
strategies that produced it. A layer spec names the original layer it came from, the attention
heads it kept (original head indices), its FFN width, and whether it carries a gate (layer
skipping) or an exit head (early exit). The exit rule that decides when an example leaves is
model-wide.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from transformers import AutoConfig, PretrainedConfig

from compresskit.errors import ModelFormatError


class LayerSpec(BaseModel):
    """One transformer layer of a compressed model."""

    model_config = ConfigDict(extra="forbid")

    source: int = Field(ge=0, description="index of the layer in the original model")
    heads: list[int] = Field(min_length=1, description="original indices of the kept attention heads")
    intermediate_size: int = Field(ge=1, description="FFN width of this layer")
    gate: bool = Field(False, description="a learned gate decides per example whether the layer runs")
    exit: bool = Field(False, description="an exit head after this layer may end inference early")

    @model_validator(mode="after")
    def _unique_heads(self) -> LayerSpec:
        if len(set(self.heads)) != len(self.heads):
            raise ValueError(f"heads must be distinct, got {self.heads}")
        return self


class GateSpec(BaseModel):
    """Architecture of every gate: a one-hidden-layer FFN over the previous layer's output."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(64, ge=1)
    # mean: a [CLS] state before the first layer is the same for every input, so it cannot route
    pooling: str = Field("mean", pattern="^(cls|mean)$")


class ExitHeadSpec(BaseModel):
    """What every exit head (and a learned exit rule) reads of its layer's output."""

    model_config = ConfigDict(extra="forbid")

    # cls: BERT-style classifiers pool [CLS]; mean: sentence encoders pretrained with mean pooling
    # (all-MiniLM, all-mpnet) carry little in an early layer's [CLS] state
    pooling: str = Field("cls", pattern="^(cls|mean)$")


class ExitRuleSpec(BaseModel):
    """Which rule ends inference early, with its parameters (thresholds, patience, ...)."""

    model_config = ConfigDict(extra="allow")

    name: str


FORMAT_VERSION = 1  # of the saved description below; raised when a saved model must be read differently


class CompressedConfig(PretrainedConfig):
    """Config of :class:`CompressedModelForSequenceClassification` (``model_type: compresskit``).

    `format_version` says which version of this description a saved model uses (models saved
    before it existed are version 1); a model from a newer compresskit is refused, not misread.
    """

    model_type = "compresskit"

    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        layers: list[dict[str, Any]] | None = None,
        gate: dict[str, Any] | None = None,
        exit_head: dict[str, Any] | None = None,
        exit_rule: dict[str, Any] | None = None,
        format_version: int = FORMAT_VERSION,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if format_version > FORMAT_VERSION:
            raise ModelFormatError(f"this model was saved in format {format_version} by a newer compresskit (this "
                                   f"one reads format {FORMAT_VERSION} and older); upgrade compresskit to load it")
        self.format_version = format_version
        self.backbone = backbone or {}
        self.layers = layers or []
        self.gate = gate
        self.exit_head = exit_head
        self.exit_rule = exit_rule

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_backbone_config(cls, backbone: PretrainedConfig) -> CompressedConfig:
        """The config of an uncompressed model: every layer, head and FFN unit kept."""
        from compresskit.modeling.backbones import adapter_for

        adapter = adapter_for(backbone.model_type)  # no adapter: an error naming the architectures with one
        adapter.check(backbone)
        sizes = adapter.dimensions(backbone)
        layers = [
            LayerSpec(source=i, heads=list(range(sizes["num_attention_heads"])),
                      intermediate_size=sizes["intermediate_size"])
            for i in range(sizes["num_hidden_layers"])
        ]
        return cls(
            backbone=_backbone_dict(backbone) | sizes,
            layers=[spec.model_dump() for spec in layers],
            num_labels=backbone.num_labels,
            id2label=backbone.id2label,
            label2id=backbone.label2id,
            problem_type=backbone.problem_type,
        )

    # ---- views ---------------------------------------------------------------------------
    def layer_specs(self) -> list[LayerSpec]:
        """The validated layer specs; a broken config names the layer and the field."""
        specs = []
        for i, raw in enumerate(self.layers):
            try:
                specs.append(LayerSpec.model_validate(raw))
            except ValidationError as err:
                first = err.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                raise ModelFormatError(f"layers[{i}].{loc}: {first['msg']}") from None
        if not specs:
            raise ModelFormatError("a compressed model needs at least one layer")
        if specs[-1].exit:
            raise ModelFormatError(
                f"layers[{len(specs) - 1}].exit: the last layer always predicts with the model's own "
                "head; put exit heads only on earlier layers"
            )
        n_heads = self.backbone["num_attention_heads"]
        for i, spec in enumerate(specs):
            bad = [h for h in spec.heads if h >= n_heads]
            if bad:
                raise ModelFormatError(f"layers[{i}].heads: {bad} out of range for {n_heads} heads")
        return specs

    def gate_spec(self) -> GateSpec:
        return GateSpec.model_validate(self.gate or {})

    def exit_head_spec(self) -> ExitHeadSpec:
        return ExitHeadSpec.model_validate(self.exit_head or {})

    def exit_rule_spec(self) -> ExitRuleSpec | None:
        return ExitRuleSpec.model_validate(self.exit_rule) if self.exit_rule else None

    def backbone_config(self) -> PretrainedConfig:
        """The stock config the backbone modules are built from (eager attention, our depth)."""
        params = dict(self.backbone)
        model_type = params.pop("model_type")
        params["num_hidden_layers"] = len(self.layers)
        params.update(
            num_labels=self.num_labels,
            id2label=self.id2label,
            label2id=self.label2id,
            problem_type=self.problem_type,
        )
        config = AutoConfig.for_model(model_type, **params)
        from compresskit.modeling.backbones import adapter_for

        adapter_for(model_type).prepare_config(config)
        config._attn_implementation = "eager"  # exact FLOP counts and attention maps need it
        return config

    def is_stock(self) -> bool:
        """True when nothing is compressed: the model can be saved as a plain HF model."""
        if self.gate is not None or self.exit_rule is not None:
            return False
        full_heads = list(range(self.backbone["num_attention_heads"]))
        width = self.backbone["intermediate_size"]
        return all(
            spec.source == i and spec.heads == full_heads and spec.intermediate_size == width
            and not spec.gate and not spec.exit
            for i, spec in enumerate(self.layer_specs())
        ) and len(self.layers) == self.backbone["num_hidden_layers"]


def _backbone_dict(config: PretrainedConfig) -> dict[str, Any]:
    """The backbone config minus the label fields, which live on the compressed config."""
    params = config.to_dict()
    for key in ("id2label", "label2id", "num_labels", "problem_type", "architectures",
                "_attn_implementation_autoset", "transformers_version", "torch_dtype", "dtype"):
        params.pop(key, None)
    return params

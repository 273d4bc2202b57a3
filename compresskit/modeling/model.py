"""The compressed sequence classifier: stock HF modules driven layer by layer.

One class covers every shape the format allows: dropped layers, per-layer heads and FFN
widths, gates that skip layers and exit heads that end inference early. In training mode every
example runs every layer (gates mix `g * f(h) + (1 - g) * h`, exit heads see all examples); in
eval mode a dynamic model routes sub-batches: a skipped layer does no work for the examples it
skips, and an exited example leaves the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import ModelOutput

from compresskit.modeling.backbones import adapter_for
from compresskit.modeling.config import CompressedConfig
from compresskit.modeling.dynamic import ExitHead, LayerGate, build_exit_rule, pool, sampled_straight_through
from compresskit.modeling.routed import Route, routed_forward
from compresskit.modeling.routing import gate_opens


@dataclass
class CompressedOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings, then each layer (full pass)
    attentions: tuple[torch.Tensor, ...] | None = None  # attention probabilities per layer
    attention_scores: tuple[torch.Tensor, ...] | None = None  # q.k / sqrt(d) per layer, before mask/softmax
    gate_logits: dict[int, torch.Tensor] | None = None  # layer -> (batch, 2) skip/run logits
    gate_values: dict[int, torch.Tensor] | None = None  # layer -> (batch,) gate used (0..1)
    exit_logits: dict[int, torch.Tensor] | None = None  # layer -> (batch, labels) (full pass)
    exit_summaries: dict[int, torch.Tensor] | None = None  # layer -> (batch, hidden) what its exit head read
    layers_executed: torch.Tensor | None = None  # (batch,) transformer layers run per example
    layer_mask: torch.Tensor | None = None  # (batch, layers) bool: which layers ran for each example
    exit_layer: torch.Tensor | None = None  # (batch,) 1-based layer each example left after
    # with a forced `route`: per example, how clear the first decision was that this model would have
    # taken differently (inf: none); see `Route`
    route_margin: torch.Tensor | None = None


class CompressedModelForSequenceClassification(PreTrainedModel):
    config_class = CompressedConfig
    base_model_prefix = "compresskit"
    _supports_attention_backend = False

    def __init__(self, config: CompressedConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        specs = config.layer_specs()
        self.adapter = adapter_for(config.backbone["model_type"])
        # the backbone's modules are initialised (or loaded) already; resized layers, gates and
        # exit heads are not, and post_init() initialises exactly those
        if backbone is None:
            backbone = AutoModelForSequenceClassification.from_config(config.backbone_config())
            backbone.apply(lambda m: setattr(m, "_is_hf_initialized", True))
            self._shape_layers(backbone, specs)
        else:
            backbone.apply(lambda m: setattr(m, "_is_hf_initialized", True))
        self.backbone = backbone
        full_heads = list(range(config.backbone["num_attention_heads"]))
        for layer, spec in zip(self.adapter.layers(backbone), specs, strict=True):
            # a plain attribute, not a buffer: it is rebuilt from the config, never loaded
            layer.kept_heads = None if spec.heads == full_heads else torch.tensor(spec.heads)
        hidden = config.backbone["hidden_size"]
        gate = config.gate_spec()
        self.gates = nn.ModuleDict(
            {str(i): LayerGate(hidden, gate.hidden_size, gate.pooling) for i, s in enumerate(specs) if s.gate}
        )
        dropout = config.backbone.get("hidden_dropout_prob", 0.1)
        self.exit_heads = nn.ModuleDict(
            {str(i): ExitHead(hidden, config.num_labels, dropout) for i, s in enumerate(specs) if s.exit}
        )
        self.exit_pooling = config.exit_head_spec().pooling
        rule = config.exit_rule_spec()
        self.exit_rule = build_exit_rule(rule.model_dump(), len(specs), hidden) if rule else None
        self.gate_estimator: Callable[[torch.Tensor], torch.Tensor] = sampled_straight_through
        self.post_init()

    # ---- construction ----------------------------------------------------------------------
    def _shape_layers(self, backbone: PreTrainedModel, specs: list) -> None:
        n_heads = self.config.backbone["num_attention_heads"]
        width = self.config.backbone["intermediate_size"]
        for index, spec in enumerate(specs):
            self.adapter.layer_for_source(backbone, index, spec.source)
        for layer, spec in zip(self.adapter.layers(backbone), specs, strict=True):
            if len(spec.heads) != n_heads or spec.intermediate_size != width:
                self.adapter.resize_layer(layer, len(spec.heads), spec.intermediate_size)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, self.config.backbone.get("initializer_range", 0.02))
            if module.bias is not None:
                module.bias.data.zero_()

    @classmethod
    def from_backbone(cls, backbone: PreTrainedModel) -> CompressedModelForSequenceClassification:
        """Wrap a stock HF sequence classifier (weights shared, nothing copied)."""
        backbone.config._attn_implementation = "eager"
        config = CompressedConfig.from_backbone_config(backbone.config)
        adapter_for(backbone.config.model_type).prepare_config(backbone.config)
        return cls(config, backbone=backbone)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        """Loads a compressed checkpoint, or a stock one of an architecture with an adapter (wrapped).

        Safetensors only.
        """
        kwargs.setdefault("use_safetensors", True)  # never unpickle: a pickle can run code when loaded
        config = kwargs.get("config") or AutoConfig.from_pretrained(pretrained_model_name_or_path)
        if config.model_type == CompressedConfig.model_type:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        kwargs.pop("config", None)
        backbone = AutoModelForSequenceClassification.from_pretrained(
            pretrained_model_name_or_path, *args, attn_implementation="eager", **kwargs
        )
        return cls.from_backbone(backbone)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        """An uncompressed model saves as the stock HF model it is; otherwise as compresskit."""
        if self.config.is_stock():
            self.backbone.save_pretrained(save_directory, *args, **kwargs)
        else:
            super().save_pretrained(save_directory, *args, **kwargs)

    # ---- views -----------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.adapter.layers(self.backbone)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_dynamic(self) -> bool:
        return len(self.gates) > 0 or (self.exit_rule is not None and len(self.exit_heads) > 0)

    # ---- forward ---------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        output_attention_scores: bool = False,
        dynamic: bool | None = None,
        route: Route | None = None,
        **unused: Any,
    ) -> CompressedOutput:
        # inputs follow the model: a batch from a plain loader (evaluation, FLOPs, calibration, a
        # teacher's call) is on the host while the model may be on an accelerator
        input_ids, attention_mask, token_type_ids, labels = (
            None if t is None else t.to(self.device) for t in (input_ids, attention_mask, token_type_ids, labels))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.adapter.embed(self.backbone, input_ids, token_type_ids, attention_mask)
        additive = self.adapter.layer_mask(attention_mask, hidden.dtype)
        bias = self.adapter.position_bias(self.backbone, hidden)
        if dynamic is None:
            dynamic = not self.training and self.is_dynamic
        if dynamic or route is not None:
            routed, margins = routed_forward(self, hidden, attention_mask, additive, bias, route)
            out = CompressedOutput(logits=routed.logits, layers_executed=routed.layer_mask.sum(1).to(hidden.dtype),
                                   layer_mask=routed.layer_mask, exit_layer=routed.exit_layer, route_margin=margins)
        else:
            out = self._full_forward(hidden, attention_mask, additive, bias, output_hidden_states,
                                     output_attentions, output_attention_scores)
        if labels is not None:  # as an item: a ModelOutput's copies (accelerate's fp32 cast) keep items only
            out["loss"] = self.task_loss(out.logits, labels)
        return out

    def exit_summary(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What an exit head and the exit rule read of a layer's output ([CLS] state or token mean)."""
        return pool(hidden, mask, self.exit_pooling)

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return task_loss(logits, labels)

    def _full_forward(self, hidden, mask, additive, bias, output_hidden_states, output_attentions,
                      output_attention_scores=False):
        states, maps, scores = [hidden], [], []
        gate_logits, gate_values, exit_logits, exit_summaries = {}, {}, {}, {}
        for i, layer in enumerate(self.layers):
            with contextlib.ExitStack() as capture:
                probs = capture.enter_context(self._capture_probabilities(layer)) if output_attentions else None
                raw = capture.enter_context(self.adapter.capture_scores(layer)) if output_attention_scores else None
                new, attn = self.adapter.run_layer(self.backbone, layer, hidden, additive, bias, output_attentions)
            if raw is not None:
                scores.append(raw["scores"])
            if probs:  # as the softmax gave them: attention dropout (training) is not the model's view
                attn = probs["probs"]
            if str(i) in self.gates:
                logits = self.gates[str(i)](hidden, mask)
                g = self.gate_estimator(logits) if self.training else gate_opens(logits).to(new.dtype)
                gate_logits[i], gate_values[i] = logits, g
                g3 = g[:, None, None]
                new = g3 * new + (1 - g3) * hidden
            hidden = new
            states.append(hidden)
            maps.append(attn)
            if str(i) in self.exit_heads:
                exit_summaries[i] = self.exit_summary(hidden, mask)
                exit_logits[i] = self.exit_heads[str(i)](exit_summaries[i])
        batch = hidden.shape[0]
        layer_mask = torch.ones(batch, self.num_layers, dtype=torch.bool, device=hidden.device)
        for i, g in gate_values.items():
            layer_mask[:, i] = g.detach() > 0.5
        executed = layer_mask.sum(1).to(hidden.dtype)
        return CompressedOutput(
            logits=self.adapter.head(self.backbone, hidden, mask),
            hidden_states=tuple(states) if output_hidden_states else None,
            attentions=tuple(maps) if output_attentions else None,
            attention_scores=tuple(scores) if output_attention_scores else None,
            gate_logits=gate_logits or None,
            gate_values=gate_values or None,
            exit_logits=exit_logits or None,
            exit_summaries=exit_summaries or None,
            layers_executed=executed,
            layer_mask=layer_mask,
            exit_layer=torch.full((batch,), self.num_layers, device=hidden.device),
        )

    @contextlib.contextmanager
    def _capture_probabilities(self, layer: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """A layer's attention probabilities before attention dropout (the input of its dropout module)."""
        out: dict[str, torch.Tensor] = {}
        dropout = self.adapter.attention_dropout(layer)
        if dropout is None:  # no dropout module: the maps the layer returns are the softmax's
            yield out
            return
        hook = dropout.register_forward_pre_hook(lambda module, args: out.__setitem__("probs", args[0]))
        try:
            yield out
        finally:
            hook.remove()


def register_auto_classes() -> None:
    """Let AutoConfig / AutoModelForSequenceClassification load compresskit checkpoints."""
    AutoConfig.register(CompressedConfig.model_type, CompressedConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(
        CompressedConfig, CompressedModelForSequenceClassification, exist_ok=True
    )


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, or MSE when the head has one output (a regression, `num_labels: 1`)."""
    if logits.shape[-1] == 1:
        return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    return nn.functional.cross_entropy(logits, labels)

"""Export a compresskit model to ONNX: one graph for static models, one graph per part for dynamic ones.

Static models (distilled, pruned, layer-pruned, fine-tuned) go through Optimum's exporter with
:class:`CompressKitOnnxConfig` and Optimum's output validation. A dynamic model (gates, exits)
decides per example which layers run; one graph cannot skip work for part of a batch, so each
layer is its own graph (with the exit head, the rule's score and the gates it feeds), and
:class:`compresskit.export.runtime.OnnxClassifier` routes sub-batches between them, exactly as
the PyTorch model's routed inference does. The export directory is written whole or
not at all (a temporary sibling, renamed at the end).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.errors import CompressKitError
from compresskit.export.agreement import agreement, agreement_one_at_a_time
from compresskit.export.one_call import export_one_call
from compresskit.export.onnx_config import ONNX_OPSET, CompressKitOnnxConfig, input_names
from compresskit.export.pieces import Embeddings, ExitHead, GateLogits, Head, LayerStep
from compresskit.export.quantize import quantize_dynamic, quantize_static
from compresskit.files import partial_dir
from compresskit.modeling.model import CompressedModelForSequenceClassification

log = logging.getLogger(__name__)

MANIFEST = "compresskit_export.json"
# dynamic exports: 4 = layer graphs carry their exit head + rule score, every later gate and the
# head; 5 adds the one-call graph for batch 1; 6 its per-layer mask (the runtime still reads 4)
DYNAMIC_FORMAT = 6
ATOL = 1e-4


def on_host(model: torch.nn.Module) -> torch.nn.Module:
    """`model`, or a copy of it on the CPU: ONNX export traces on the host, and its check compares
    with PyTorch there (the caller's model stays where it is)."""
    return model if next(model.parameters()).device == torch.device("cpu") else copy.deepcopy(model).cpu()


def export_model(model: CompressedModelForSequenceClassification, tokenizer: Any, output: str | Path,
                 quantize: str | None = None, atol: float = ATOL, overwrite: bool = False,
                 calibration: list[list[str]] | None = None) -> dict[str, Any]:
    """Write `model` (+ tokenizer, config, manifest) as ONNX into `output`; returns the manifest.

    `quantize`: "int8" (dynamic: activations' ranges measured per batch at run time) or
    "int8-static" (QDQ, activations' ranges calibrated beforehand on `calibration`, rows of texts
    such as training rows; export/quantize.py)."""
    if quantize == "int8-static" and not calibration:
        raise CompressKitError("export: int8-static calibrates the activations' ranges on rows of texts; "
                               "give calibration rows (the CLI takes them from --task's training split)")
    output = Path(output)
    if output.exists() and not overwrite:
        raise CompressKitError(f"export: {output} exists; choose another --output or remove it")
    model = on_host(model).eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    work = partial_dir(output)  # also removes what a killed export left
    try:
        if model.is_dynamic:
            manifest = _export_parts(model, work)
        else:
            manifest = _export_static(model, work, atol)
        model.config.save_pretrained(work)
        tokenizer.save_pretrained(work)
        manifest.update(_validate(model, tokenizer, work, manifest, atol))
        if quantize == "int8-static":
            manifest["quantized"] = quantize_static(work, manifest, tokenizer, calibration)
        elif quantize is not None:
            manifest["quantized"] = quantize_dynamic(work, manifest, quantize)
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if output.exists():
            shutil.rmtree(output)
        work.rename(output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("exported %s model to %s (max |logit diff| vs PyTorch %.2e)", manifest["kind"], output,
             manifest["max_abs_diff"])
    return manifest


def _export_static(model: CompressedModelForSequenceClassification, work: Path, atol: float) -> dict[str, Any]:
    from optimum.exporters.onnx import export, validate_model_outputs

    config = CompressKitOnnxConfig(model.config, task="text-classification")
    _, outputs = export(model, config, work / "model.onnx", opset=ONNX_OPSET)
    validate_model_outputs(config, model, work / "model.onnx", outputs, atol=atol, use_subprocess=False)
    return {"format": 1, "kind": "static", "inputs": input_names(model.config.backbone["model_type"]),
            "graphs": ["model.onnx"], "num_layers": model.num_layers}


# ---- dynamic models: one graph per layer -----------------------------------------------------
# Each layer's graph also computes what follows the layer: the exit head's logits and the exit
# rule's score, the classifier head after the last layer, and for gated models the logits of
# every later gate and of the head on the layer's output. A row that skips a layer keeps its
# hidden state, so those stay valid until the next layer it runs: skipped layers cost no call,
# and one ONNX Runtime call per executed layer is what keeps batch 1 close to the ideal speed-up.
# Only an exit after a layer the row skipped needs the small `after_i` graph (exit score on the
# unchanged states).
def _gated(model) -> bool:
    return len(model.gates) > 0


def _later_gates(model, index: int) -> list[str]:
    return [g for g in sorted(model.gates, key=int) if int(g) > index]


def _gate_outputs(model, index: int) -> list[str]:
    """What a gated model's graph after layer `index` (-1: the embeddings) adds for later skips."""
    if not _gated(model):
        return []
    return (["later_gates"] if _later_gates(model, index) else []) + ["logits"]


class _GatesAndHead(nn.Module):
    """Every later gate's logits (batch, gates, 2) and the head's logits, on one hidden state."""

    def __init__(self, model, index):
        super().__init__()
        self.later = nn.ModuleList(GateLogits(model, int(g)) for g in _later_gates(model, index))
        self.head = Head(model)

    def forward(self, out, attention_mask):
        outputs = []
        if self.later:
            outputs.append(torch.stack([gate(out, attention_mask) for gate in self.later], 1))
        return (*outputs, self.head(out, attention_mask))


class _Embed(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.embeddings = Embeddings(model)
        self.gates_and_head = _GatesAndHead(model, -1) if _gated(model) else None

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        outputs = list(self.embeddings(input_ids, attention_mask, token_type_ids))
        if self.gates_and_head is not None:
            outputs += self.gates_and_head(outputs[0], attention_mask)
        return tuple(outputs)


def _shared_bias(model) -> bool:
    """Whether the backbone shares a tensor across layers (`position_bias`), computed with the embeddings."""
    return model.adapter.bias_axes is not None


def _embed_outputs(model) -> list[str]:
    return ["hidden"] + (["position_bias"] if _shared_bias(model) else []) + _gate_outputs(model, -1)


def _has_exit(model, index: int) -> bool:
    return index < model.num_layers - 1 and str(index) in model.exit_heads and model.exit_rule is not None


def _layer_outputs(model, index: int) -> list[str]:
    last = index == model.num_layers - 1
    return (["out"] + (["exit_logits", "exit_score"] if _has_exit(model, index) else [])
            + (_gate_outputs(model, index) or (["logits"] if last else [])))


class _Layer(nn.Module):
    def __init__(self, model, index):
        super().__init__()
        self.step = LayerStep(model, index)
        self.exit = ExitHead(model, index) if _has_exit(model, index) else None
        self.gates_and_head = _GatesAndHead(model, index) if _gated(model) else None
        self.head = Head(model) if index == model.num_layers - 1 else None

    def forward(self, hidden, attention_mask, position_bias=None):
        out = self.step(hidden, attention_mask, position_bias)
        outputs = [out]
        if self.exit is not None:
            outputs += self.exit(out, attention_mask)
        if self.gates_and_head is not None:
            outputs += self.gates_and_head(out, attention_mask)
        elif self.head is not None:
            outputs.append(self.head(out, attention_mask))
        return tuple(outputs)


class _EmbedAndFirstLayer(nn.Module):
    """Embeddings and layer 0 in one graph, for models where every row runs layer 0 (no gate 0)."""

    def __init__(self, model):
        super().__init__()
        self.embed, self.layer = _Embed(model), _Layer(model, 0)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden, *bias = self.embed(input_ids, attention_mask, token_type_ids)
        out, *rest = self.layer(hidden, attention_mask, *bias)
        return (out, *bias, *rest)


def _export_parts(model: CompressedModelForSequenceClassification, work: Path) -> dict[str, Any]:
    names = input_names(model.config.backbone["model_type"])
    hidden_size = model.config.backbone["hidden_size"]
    ids = torch.randint(5, model.config.backbone["vocab_size"], (2, 7))
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    batch_seq, batch = {0: "batch", 1: "sequence"}, {0: "batch"}
    shared = _shared_bias(model)  # a tensor all layers share (MPNet's relative-position bias)
    graphs: list[str] = []

    def save(module, args, file, inputs, outputs):
        # export restores the module's mode afterwards: a wrapper left in training mode would put
        # the model into training mode (dropout) with it
        module.eval()
        axes = {n: batch_seq for n in inputs if n != "position_bias"}
        axes |= {n: batch_seq if n in ("hidden", "out") else batch for n in outputs if n != "position_bias"}
        if shared:
            axes["position_bias"] = model.adapter.bias_axes
        torch.onnx.export(module, args, str(work / file), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
        graphs.append(file)

    typed = "token_type_ids" in names
    token_args = (ids, mask, types) if typed else (ids, mask)
    token_inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if typed else [])
    # every row runs layer 0 unless a gate may skip it: then it shares the embeddings' call
    fused = "0" not in model.gates
    with torch.no_grad():
        if fused:
            outputs = _layer_outputs(model, 0)
            save(_EmbedAndFirstLayer(model), token_args, "layer_0.onnx", token_inputs,
                 outputs[:1] + (["position_bias"] if shared else []) + outputs[1:])
        else:
            save(_Embed(model), token_args, "embed.onnx", token_inputs, _embed_outputs(model))
        hidden = torch.randn(2, 7, hidden_size)
        bias = model.adapter.position_bias(model.backbone, hidden)
        for i in range(1 if fused else 0, model.num_layers):
            args = (hidden, mask) + ((bias,) if shared else ())
            inputs = ["hidden", "attention_mask"] + (["position_bias"] if shared else [])
            save(_Layer(model, i), args, f"layer_{i}.onnx", inputs, _layer_outputs(model, i))
            if str(i) in model.gates and _has_exit(model, i):  # the exit of rows whose gate skips layer i
                save(ExitHead(model, i), (hidden, mask), f"after_{i}.onnx", ["out", "attention_mask"],
                     ["exit_logits", "exit_score"])
        graphs.append(export_one_call(model, work, names))  # the whole model in one call, for batch 1
    model.eval()
    return {"format": DYNAMIC_FORMAT, "kind": "dynamic", "inputs": names, "graphs": graphs,
            "num_layers": model.num_layers, "one_call": graphs[-1], "one_call_exit_rule": model.config.exit_rule,
            "gates": sorted(int(i) for i in model.gates),
            "exits": sorted(i for i in range(model.num_layers) if _has_exit(model, i)), "position_bias": shared}


def _validate(model: CompressedModelForSequenceClassification, tokenizer: Any, work: Path,
              manifest: dict[str, Any], atol: float) -> dict[str, Any]:
    """Run the export and the PyTorch model on the same (ragged) batch, and one example at a time:
    the same logits on the same route, routes different only at near-ties (export/agreement.py)."""
    from compresskit.export.runtime import OnnxClassifier

    texts = ["a fine film", "", "dull , slow and far too long for what it has to say about anything at all",
             "yes", "the plot makes no sense but the actors are great"] * 2
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    inputs = {k: v for k, v in batch.items() if k in input_names(model.config.backbone["model_type"])}
    runtime = OnnxClassifier(work, manifest=manifest)
    result = agreement(model, runtime, inputs, tie_tolerance=atol)
    if manifest.get("one_call"):  # one example at a time through the one-call graph
        result.add(agreement_one_at_a_time(model, runtime, inputs, tie_tolerance=atol))
    result.check(atol)
    if result.flipped:
        log.warning("export: %d of %d check example(s) took another route at a near-tie (within %g of a "
                    "threshold); logits agree on the routes taken", result.flipped, result.examples, atol)
    return {"max_abs_diff": result.max_abs_diff, "atol": atol, "near_tie_flips": result.flipped}

"""Export a compresskit model to ONNX: one graph for static models, one graph per part for dynamic ones.

Static models (distilled, pruned, layer-pruned, fine-tuned) go through Optimum's exporter with
:class:`CompressKitOnnxConfig` and Optimum's output validation. A dynamic model (gates, exits)
decides per example which layers run; one graph cannot skip work for part of a batch, so each
layer is its own graph (with the exit head, the rule's score and the next gate it feeds), and
:class:`compresskit.export.runtime.OnnxClassifier` routes sub-batches between them, exactly as
the PyTorch model's routed inference does. The export directory is written whole or
not at all (a temporary sibling, renamed at the end).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compresskit.errors import CompressKitError
from compresskit.export.onnx_config import ONNX_OPSET, CompressKitOnnxConfig, input_names
from compresskit.modeling.model import CompressedModelForSequenceClassification

log = logging.getLogger(__name__)

MANIFEST = "compresskit_export.json"
ATOL = 1e-4


def export_model(model: CompressedModelForSequenceClassification, tokenizer: Any, output: str | Path,
                 quantize: str | None = None, atol: float = ATOL, overwrite: bool = False) -> dict[str, Any]:
    """Write `model` (+ tokenizer, config, manifest) as ONNX into `output`; returns the manifest."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise CompressKitError(f"export: {output} exists; choose another --output or remove it")
    model = model.eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        if model.is_dynamic:
            manifest = _export_parts(model, work)
        else:
            manifest = _export_static(model, work, atol)
        model.config.save_pretrained(work)
        tokenizer.save_pretrained(work)
        manifest.update(_validate(model, tokenizer, work, manifest, atol))
        if quantize is not None:
            manifest["quantized"] = _quantize(work, manifest, quantize)
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
# rule's score, the next layer's gate, the classifier head after the last layer. One ONNX Runtime
# call per layer and example is what keeps batch 1 close to the ideal speed-up. Rows whose gate
# skips a layer get the same from the small `after_i` graph on their unchanged hidden states.
class _Embed(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.model.adapter.embed(self.model.backbone, input_ids, token_type_ids)
        outputs = {"hidden": hidden}
        bias = self.model.adapter.position_bias(self.model.backbone, hidden)
        if bias is not None:
            outputs["position_bias"] = bias
        if "0" in self.model.gates:
            outputs["next_gate"] = self.model.gates["0"](hidden, attention_mask)
        return tuple(outputs.values())


def _embed_outputs(model) -> list[str]:
    mpnet = model.config.backbone["model_type"] == "mpnet"
    return ["hidden"] + (["position_bias"] if mpnet else []) + (["next_gate"] if "0" in model.gates else [])


def _has_exit(model, index: int) -> bool:
    return index < model.num_layers - 1 and str(index) in model.exit_heads and model.exit_rule is not None


class _After(nn.Module):
    """What follows layer `index` on its output: exit logits and rule score, the next gate, the head."""

    def __init__(self, model, index):
        super().__init__()
        self.model, self.index = model, index

    def forward(self, out, attention_mask):
        outputs = []
        if _has_exit(self.model, self.index):
            summary = self.model.exit_summary(out, attention_mask)
            logits = self.model.exit_heads[str(self.index)](summary)
            outputs += [logits, self.model.exit_rule.score(self.index, logits, summary)]
        if str(self.index + 1) in self.model.gates:
            outputs.append(self.model.gates[str(self.index + 1)](out, attention_mask))
        if self.index == self.model.num_layers - 1:
            outputs.append(self.model.adapter.head(self.model.backbone, out))
        return tuple(outputs)


def _after_outputs(model, index: int) -> list[str]:
    return ((["exit_logits", "exit_score"] if _has_exit(model, index) else [])
            + (["next_gate"] if str(index + 1) in model.gates else [])
            + (["logits"] if index == model.num_layers - 1 else []))


class _Layer(nn.Module):
    def __init__(self, model, index):
        super().__init__()
        self.layer, self.adapter, self.after = model.layers[index], model.adapter, _After(model, index)

    def forward(self, hidden, attention_mask, position_bias=None):
        additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        out = self.adapter.run_layer(self.layer, hidden, additive, position_bias, False)[0]
        return (out, *self.after(out, attention_mask))


def _export_parts(model: CompressedModelForSequenceClassification, work: Path) -> dict[str, Any]:
    names = input_names(model.config.backbone["model_type"])
    hidden_size = model.config.backbone["hidden_size"]
    ids = torch.randint(5, model.config.backbone["vocab_size"], (2, 7))
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    batch_seq, batch = {0: "batch", 1: "sequence"}, {0: "batch"}
    mpnet = model.config.backbone["model_type"] == "mpnet"
    graphs: list[str] = []

    def save(module, args, file, inputs, outputs):
        # export restores the module's mode afterwards: a wrapper left in training mode would put
        # the model into training mode (dropout) with it
        module.eval()
        axes = {n: batch_seq for n in inputs if n != "position_bias"}
        axes |= {n: batch_seq if n in ("hidden", "out") else batch for n in outputs if n != "position_bias"}
        if mpnet:
            axes["position_bias"] = {2: "sequence", 3: "sequence_k"}
        torch.onnx.export(module, args, str(work / file), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
        graphs.append(file)

    typed = "token_type_ids" in names
    with torch.no_grad():
        save(_Embed(model), (ids, mask, types) if typed else (ids, mask), "embed.onnx",
             ["input_ids", "attention_mask"] + (["token_type_ids"] if typed else []), _embed_outputs(model))
        hidden = torch.randn(2, 7, hidden_size)
        bias = model.adapter.position_bias(model.backbone, hidden)
        for i in range(model.num_layers):
            args = (hidden, mask) + ((bias,) if mpnet else ())
            inputs = ["hidden", "attention_mask"] + (["position_bias"] if mpnet else [])
            save(_Layer(model, i), args, f"layer_{i}.onnx", inputs, ["out"] + _after_outputs(model, i))
            if str(i) in model.gates and _after_outputs(model, i):  # for the rows whose gate skips layer i
                save(_After(model, i), (hidden, mask), f"after_{i}.onnx", ["out", "attention_mask"],
                     _after_outputs(model, i))
    model.eval()
    # format 3: layer graphs carry their exit head + rule score, the next gate and (last) the head
    return {"format": 3, "kind": "dynamic", "inputs": names, "graphs": graphs, "num_layers": model.num_layers,
            "gates": sorted(int(i) for i in model.gates),
            "exits": sorted(i for i in range(model.num_layers) if _has_exit(model, i)), "position_bias": mpnet}


def _validate(model: CompressedModelForSequenceClassification, tokenizer: Any, work: Path,
              manifest: dict[str, Any], atol: float) -> dict[str, Any]:
    """Run the export and the PyTorch model on the same (ragged) batch: logits, routes, predictions."""
    from compresskit.export.runtime import OnnxClassifier

    texts = ["a fine film", "", "dull , slow and far too long for what it has to say about anything at all",
             "yes", "the plot makes no sense but the actors are great"] * 2
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    inputs = {k: v for k, v in batch.items() if k in input_names(model.config.backbone["model_type"])}
    with torch.no_grad():
        expected = model(**inputs)
    runtime = OnnxClassifier(work, manifest=manifest)
    got = runtime.forward({k: v.numpy() for k, v in inputs.items()})
    diff = float(np.abs(got.logits - expected.logits.numpy()).max())
    same_routes = bool(np.array_equal(got.layers_executed, expected.layers_executed.numpy()))
    if diff > atol or not same_routes:
        raise CompressKitError(f"export: ONNX and PyTorch disagree (max |logit diff| {diff:.2e}, tolerance "
                               f"{atol:g}; same layers executed: {same_routes})")
    return {"max_abs_diff": diff, "atol": atol}


def _quantize(work: Path, manifest: dict[str, Any], scheme: str) -> dict[str, Any]:
    """INT8 dynamic quantization of every graph with Optimum's ORTQuantizer (`*_quantized.onnx`)."""
    if scheme != "int8":
        raise CompressKitError(f"export: unknown quantization {scheme!r}; the one supported is int8")
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
    for graph in manifest["graphs"]:
        ORTQuantizer.from_pretrained(work, file_name=graph).quantize(config, save_dir=work, file_suffix="quantized")
    return {"scheme": "int8 dynamic (ORTQuantizer, avx2)", "suffix": "_quantized"}

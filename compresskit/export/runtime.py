"""Inference for exported compresskit models (ONNX Runtime or OpenVINO: engines.py), skipping work per example.

A dynamic export (format 4 and 5) is a set of graphs: each layer with what follows it (exit logits
and the exit rule's score; for gated models the logits of every later gate and of the head on
the layer's output; the head after the last layer), the embeddings either in their own graph
(when a gate guards layer 0) or in layer 0's, and `after_i` graphs for an exit after a gated
layer (its score on the unchanged states of rows that skipped the layer). The runtime runs a
layer only on the rows of the batch whose gate opened and that have not exited, just as the
PyTorch model's routed inference does, so a skipped layer costs nothing at any batch size.
The exit rule's decision half (`ExitRule.decide`: threshold, patience counters) runs here on
the scores the graphs computed. A lone example (batch 1) goes through the one-call graph
(format 5, `one_call.py`) instead: the same routing inside one ONNX graph, one call in all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compresskit.errors import CompressKitError
from compresskit.export.engines import Engine, EnginePrecision, OpenVinoGraph, OrtGraph, load_graph
from compresskit.export.graph_flops import graph_flops
from compresskit.modeling.routing import gate_opens, plan, route

log = logging.getLogger(__name__)


@dataclass
class RuntimeOutput:
    logits: np.ndarray
    layers_executed: np.ndarray  # per example
    exit_layer: np.ndarray  # 1-based layer after which each example left (L: ran to the end)
    layer_mask: np.ndarray | None = None  # (batch, layers) bool: which layers ran (None: a format-5 one-call graph)


class OnnxClassifier:
    """An exported compresskit model: `forward(encodings)` on numpy arrays, `predict(texts)` on text.

    `one_call=False` sends lone examples through the per-layer graphs too (to compare the two paths).
    """

    def __init__(self, directory: str | Path, manifest: dict[str, Any] | None = None, quantized: bool = False,
                 threads: int | None = None, one_call: bool = True, runtime: Engine = "onnxruntime",
                 precision: EnginePrecision = "fp32"):
        self.directory = Path(directory)
        if manifest is None:
            path = self.directory / "compresskit_export.json"
            if not path.exists():
                raise CompressKitError(f"{self.directory} is not a compresskit export (no {path.name}); "
                                       "make one with `compresskit export MODEL_DIR --output DIR`")
            manifest = json.loads(path.read_text())
        if quantized and not manifest.get("quantized"):
            raise CompressKitError(f"{self.directory} has no INT8 graphs; export with --quantize int8")
        if manifest["kind"] == "dynamic" and manifest.get("format", 1) < 4:
            raise CompressKitError(f"{self.directory} was exported by an older compresskit (format "
                                   f"{manifest.get('format', 1)}); export the model again with `compresskit export`")
        self.manifest = manifest
        self.suffix = manifest["quantized"]["suffix"] if quantized else ""
        self.runtime, self.precision, self._threads = runtime, precision, threads
        # every graph is loaded now: a graph first reached mid-stream (a deep layer most examples
        # never run) would otherwise cost its load time (tens of ms) inside some request
        # a static-INT8 dynamic export has no INT8 one-call graph (quantize.py): lone examples then
        # take the per-layer graphs
        one_call = one_call and not (quantized and manifest["quantized"].get("one_call") is False)
        graphs = [g for g in manifest["graphs"] if one_call or g != manifest.get("one_call")]
        self._sessions = {graph.removesuffix(".onnx"): self._load(graph.removesuffix(".onnx")) for graph in graphs}
        self._inputs = {name: graph.inputs for name, graph in self._sessions.items()}
        self._outputs = {name: graph.outputs for name, graph in self._sessions.items()}
        self.inputs: list[str] = manifest["inputs"]
        # routing facts looked up at every layer of every batch, computed once
        self._graphs = set(manifest["graphs"])
        self._gates = set(manifest.get("gates", []))
        self._exits = set(manifest.get("exits", []))
        self._later = {i: [g for g in manifest.get("gates", []) if g > i]
                       for i in range(-1, manifest.get("num_layers", 0))}
        self.exit_rule = self._load_exit_rule() if manifest["kind"] == "dynamic" and manifest["exits"] else None
        # exports before format 5 have no one-call graph: batch 1 then goes through the per-layer graphs
        self._one_call = manifest.get("one_call", "").removesuffix(".onnx") if one_call else ""
        if self._one_call and self.exit_rule is not None and manifest["one_call_exit_rule"] != self._exit_rule_spec:
            # the one-call graph holds the rule's knob as exported; the per-layer path reads config.json
            log.warning("%s: the exit rule in config.json changed since the export; one example at a time "
                        "now goes through the per-layer graphs (export again for the one-call graph)",
                        self.directory)
            self._one_call = ""
        self._tokenizer = None
        self._counted: float | None = None  # FLOPs of the graphs run since count_flops began (nan: uncountable)
        self._recorded: dict[str, list[dict[str, np.ndarray]]] | None = None  # see recording_feeds
        self.num_labels = len(self.labels)

    @property
    def executed_precision(self) -> str:
        """The precision the runtime really multiplies in (OpenVINO keeps fp32 where bf16 is not native)."""
        return next(iter(self._sessions.values())).executed_precision

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any) -> OnnxClassifier:
        return cls(directory, **kwargs)

    # ---- graphs ----------------------------------------------------------------------------
    def _load(self, name: str) -> OrtGraph | OpenVinoGraph:
        return load_graph(self.directory / f"{name}{self.suffix}.onnx", self.runtime, self.precision, self._threads)

    def _run(self, name: str, feeds: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
        """The graph's outputs by name; feeds it does not take (or None) are left out (the exporter
        drops inputs a graph does not use, e.g. the mask of a [CLS]-pooling head)."""
        used = self._inputs[name]
        feeds = {k: v for k, v in feeds.items() if k in used and v is not None}
        if self._counted is not None:
            file = self.directory / f"{name}{self.suffix}.onnx"
            flops = graph_flops(file, file.stat().st_mtime)(feeds)
            self._counted += float("nan") if flops is None else flops
        if self._recorded is not None:
            self._recorded.setdefault(name, []).append({k: np.array(v) for k, v in feeds.items()})
        values = self._sessions[name].run(feeds)
        return dict(zip(self._outputs[name], values, strict=True))

    @contextmanager
    def recording_feeds(self) -> Iterator[dict[str, list[dict[str, np.ndarray]]]]:
        """Every graph's feeds (by graph name, in call order) while inside: what static INT8
        calibrates each per-layer graph on, the sub-batches the routing really sends it."""
        self._recorded = recorded = {}
        try:
            yield recorded
        finally:
            self._recorded = None

    def count_flops(self, encodings: dict[str, np.ndarray]) -> float | None:
        """FLOPs of the matrix products the graphs run on this batch (graph_flops.py; None: not
        countable). A lone example is counted through the per-layer graphs, which route it the
        same way as the one-call graph does (the export check compares them)."""
        kept, self._one_call, self._counted = self._one_call, "", 0.0
        try:
            self.forward(encodings)
            counted = self._counted
        finally:
            self._one_call, self._counted = kept, None
        return None if np.isnan(counted) else counted

    def _load_exit_rule(self):
        """The rule's decision half (its knob and state); its score is computed inside the graphs."""
        from compresskit.modeling.config import CompressedConfig
        from compresskit.modeling.dynamic import build_exit_rule

        config = CompressedConfig.from_pretrained(self.directory)
        self._exit_rule_spec = config.exit_rule
        return build_exit_rule(config.exit_rule, len(config.layers), config.backbone["hidden_size"]).eval()

    # ---- inference -------------------------------------------------------------------------
    def forward(self, encodings: dict[str, np.ndarray]) -> RuntimeOutput:
        """Logits for a batch of tokenized inputs (int64 arrays, padded)."""
        feeds = {k: np.asarray(encodings[k], dtype=np.int64) for k in self.inputs if k in encodings}
        if "attention_mask" not in feeds:
            feeds["attention_mask"] = np.ones_like(feeds["input_ids"])
        if "token_type_ids" in self.inputs and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        layers = self.manifest["num_layers"]
        batch = feeds["input_ids"].shape[0]
        if self.manifest["kind"] == "static":
            logits = self._run("model", feeds)["logits"]
            full = np.full(batch, layers)
            return RuntimeOutput(logits, full.astype(np.float32), full, np.ones((batch, layers), dtype=bool))
        if batch == 1 and self._one_call:  # a lone example: one call, the routing inside the graph
            out = self._run(self._one_call, feeds)
            return RuntimeOutput(out["logits"], out["layers_executed"], out["exit_layer"], out.get("layer_mask"))
        return self._routed(feeds, batch, layers)

    def _routed(self, feeds: dict[str, np.ndarray], batch: int, layers: int) -> RuntimeOutput:
        steps = plan(layers, self._gates, self._exits)
        routed = route(steps, _OnnxBackend(self, feeds, batch, layers))
        return RuntimeOutput(routed.logits, routed.layer_mask.sum(1).astype(np.float32), routed.exit_layer,
                             routed.layer_mask)

    # ---- text in, predictions out ----------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.directory)
        return self._tokenizer

    @property
    def _config(self) -> dict[str, Any]:
        return json.loads((self.directory / "config.json").read_text())

    @property
    def max_positions(self) -> int:
        """The longest input the position embeddings cover (RoBERTa and MPNet offset positions by 2)."""
        config = self._config
        backbone = config.get("backbone") or config
        from compresskit.modeling.backbones import adapter_for

        offset = adapter_for(backbone["model_type"]).position_offset if "model_type" in backbone else 0
        return int(backbone.get("max_position_embeddings", 512)) - offset

    @property
    def labels(self) -> list[str]:
        # transformers leaves the default two labels out of config.json, and names them LABEL_i
        id2label = self._config.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}
        return [id2label.get(str(i), str(i)) for i in range(len(id2label))]

    def predict(self, texts: list[str] | list[tuple[str, str]], batch_size: int = 32, max_length: int = 128
                ) -> list[dict[str, Any]]:
        """Label, score and layers used for each text (or (text, text) pair).

        Inputs longer than `max_length` tokens (at most what the model's positions cover) are
        truncated; an empty text is classified from its special tokens alone.
        """
        labels = self.labels
        max_length = min(max_length, self.max_positions)
        results: list[dict[str, Any]] = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            if chunk and isinstance(chunk[0], tuple | list):
                first, second = [a for a, _ in chunk], [b for _, b in chunk]
                enc = self.tokenizer(first, second, padding=True, truncation=True, max_length=max_length,
                                     return_tensors="np")
            else:
                enc = self.tokenizer(list(chunk), padding=True, truncation=True, max_length=max_length,
                                     return_tensors="np")
            out = self.forward(dict(enc))
            if out.logits.shape[1] == 1:  # regression
                results += [{"score": float(v[0]), "layers": float(n)}
                            for v, n in zip(out.logits, out.layers_executed, strict=True)]
                continue
            probs = np.exp(out.logits - out.logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            for p, n in zip(probs, out.layers_executed, strict=True):
                best = int(p.argmax())
                results.append({"label": labels[best] if best < len(labels) else str(best),
                                "score": float(p[best]), "layers": float(n)})
        return results



class NumpyOps:
    def __init__(self, batch: int):
        self.batch = batch

    def all_rows(self):
        return np.ones(self.batch, dtype=bool)

    def logical_and(self, a, b):
        return a & b

    def logical_not(self, a):
        return ~a

    def where(self, condition, a, b):
        return np.where(condition.reshape(-1, *([1] * (a.ndim - 1))), a, b)

    def depth(self, value):
        return np.full(self.batch, value)

    def stack(self, columns):
        return np.stack(columns, 1)

    def any(self, mask):
        return bool(mask.any())


class _OnnxBackend:
    """The per-layer graphs as a routing backend. Each layer's graph also computes what follows it
    (exit logits and score; for gated models every later gate's logits and the head's), so the
    arrays here hold, for the rows still running (`rows`, compacted as rows leave), their states and
    the logits the last graph that changed them computed: a skipped layer costs no call, and only an
    exit after a skipped layer needs its small `after_i` graph."""

    def __init__(self, runtime: OnnxClassifier, feeds: dict[str, np.ndarray], batch: int, layers: int):
        self.runtime, self.feeds, self.ops = runtime, feeds, NumpyOps(batch)
        self.gated = bool(runtime._gates)
        self.fused = "embed.onnx" not in runtime._graphs  # layer 0 shares the embeddings' graph
        embedded = {} if self.fused else runtime._run("embed", feeds)
        self.rows, self.hidden, self.mask = np.arange(batch), embedded.get("hidden"), feeds["attention_mask"]
        self.bias = embedded.get("position_bias")
        self.pending = np.zeros((batch, layers, 2), dtype=np.float32)  # later gates' logits per held row
        self.head_logits = self._take_gates(slice(None), embedded, -1) if self.gated and not self.fused else None
        self.after: dict[str, np.ndarray] = {}  # the last layer graph's other outputs, per held row
        self.labels = runtime.num_labels

    def _hold(self, running: np.ndarray) -> None:
        """Keep the arrays for the running rows only (rows leave at exits, never come back)."""
        keep = running[self.rows]
        if not keep.all():
            self.rows, self.hidden, self.mask = self.rows[keep], self.hidden[keep], self.mask[keep]
            self.pending = self.pending[keep]
            self.after = {k: v[keep] for k, v in self.after.items()}
            if self.head_logits is not None:
                self.head_logits = self.head_logits[keep]

    def _full(self, values: np.ndarray, fill=0) -> np.ndarray:
        out = np.full((self.ops.batch, *values.shape[1:]), fill, dtype=values.dtype)
        out[self.rows] = values
        return out

    def _take_gates(self, which, out: dict[str, np.ndarray], index: int) -> np.ndarray:
        """Store the later gates' logits a graph after layer `index` computed for rows `which`; its head logits."""
        later = self.runtime._later[index]
        if later:
            self.pending[(which, later) if isinstance(which, slice) else np.ix_(which, later)] = out["later_gates"]
        return out["logits"]

    def gate(self, step, running):
        self._hold(running)
        return self._full(gate_opens(self.pending[:, step.layer]), False), None

    def run_layer(self, step, runs):
        if not step.gate:
            self._hold(runs)
        i, run = step.layer, self.runtime._run
        opened = runs[self.rows]
        if opened.all():
            after = run(f"layer_{i}", self.feeds if self.fused and i == 0 else
                        {"hidden": self.hidden, "attention_mask": self.mask, "position_bias": self.bias})
            self.hidden = after.pop("out")
            self.bias = after.pop("position_bias", self.bias)
            if self.gated:
                self.head_logits = self._take_gates(slice(None), after, i)
        elif not opened.any():  # every held row skips layer i: states, gates and head logits stay
            after = (run(f"after_{i}", {"out": self.hidden, "attention_mask": self.mask})
                     if f"after_{i}.onnx" in self.runtime._graphs else {})
        else:
            after = self._partial_layer(i, opened)
        self.after = after

    def _partial_layer(self, i: int, opened: np.ndarray) -> dict[str, np.ndarray]:
        """Layer i on the held rows whose gate opened; the others keep their states, gates and head
        logits, and need a graph only for an exit after layer i (`after_i`)."""
        run, skipped = np.flatnonzero(opened), np.flatnonzero(~opened)
        out = self.runtime._run(f"layer_{i}", {"hidden": self.hidden[run], "attention_mask": self.mask[run],
                                               "position_bias": self.bias})
        self.hidden[run] = out.pop("out")
        self.head_logits[run] = self._take_gates(run, out, i)
        if f"after_{i}.onnx" not in self.runtime._graphs:  # no exit after layer i: nothing to merge
            return {}
        parts = [(run, out), (skipped, self.runtime._run(f"after_{i}", {"out": self.hidden[skipped],
                                                                         "attention_mask": self.mask[skipped]}))]
        merged = {}
        for name in ("exit_logits", "exit_score"):
            merged[name] = np.empty((len(opened), *out[name].shape[1:]), dtype=out[name].dtype)
            for part_rows, values in parts:
                merged[name][part_rows] = values[name]
        return merged

    def exit(self, step, running, state):
        self._hold(running)
        leave = self.runtime.exit_rule.decide(step.layer, self.after["exit_score"], self.rows, state)
        return self._full(leave, False), self._full(self.after["exit_logits"]), None

    def head(self, running):
        self._hold(running)
        return self._full(self.head_logits if self.gated else self.after["logits"])

    def initial_logits(self):
        return np.zeros((self.ops.batch, self.labels), dtype=np.float32)

    def init_state(self):
        rule = self.runtime.exit_rule
        return {k: v.numpy() for k, v in rule.init_state(self.ops.batch, torch.device("cpu")).items()} if rule else {}

"""ONNX Runtime inference for exported compresskit models, skipping work per example.

A dynamic export is a set of graphs (embeddings, each layer, each gate, each exit head, the
head). The runtime runs a layer only on the rows of the batch whose gate opened and that have
not exited, just as the PyTorch model's routed inference does, so a skipped layer costs nothing
at any batch size. Exit rules are the model's own (`compresskit.modeling.dynamic`): they decide on
tiny tensors (logits, the pooled layer output the exit head read) after each exit head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from compresskit.errors import CompressKitError


@dataclass
class RuntimeOutput:
    logits: np.ndarray
    layers_executed: np.ndarray  # per example
    exit_layer: np.ndarray  # 1-based layer after which each example left (L: ran to the end)


class OnnxClassifier:
    """An exported compresskit model: `forward(encodings)` on numpy arrays, `predict(texts)` on text."""

    def __init__(self, directory: str | Path, manifest: dict[str, Any] | None = None, quantized: bool = False,
                 threads: int | None = None):
        self.directory = Path(directory)
        if manifest is None:
            path = self.directory / "compresskit_export.json"
            if not path.exists():
                raise CompressKitError(f"{self.directory} is not a compresskit export (no {path.name}); "
                                       "make one with `compresskit export MODEL_DIR --output DIR`")
            manifest = json.loads(path.read_text())
        if quantized and not manifest.get("quantized"):
            raise CompressKitError(f"{self.directory} has no INT8 graphs; export with --quantize int8")
        self.manifest = manifest
        self.suffix = manifest["quantized"]["suffix"] if quantized else ""
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._options = options
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._inputs: dict[str, set[str]] = {}
        self.inputs: list[str] = manifest["inputs"]
        self.exit_rule = self._load_exit_rule() if manifest["kind"] == "dynamic" and manifest["exits"] else None
        self._tokenizer = None

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any) -> OnnxClassifier:
        return cls(directory, **kwargs)

    # ---- graphs ----------------------------------------------------------------------------
    def _session(self, name: str) -> ort.InferenceSession:
        if name not in self._sessions:
            file = self.directory / f"{name}{self.suffix}.onnx"
            self._sessions[name] = ort.InferenceSession(str(file), self._options, providers=["CPUExecutionProvider"])
        return self._sessions[name]

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = self._session(name)
        # the exporter drops inputs a graph does not use (the mask of a [CLS]-pooling head)
        used = self._inputs.setdefault(name, {i.name for i in session.get_inputs()})
        return session.run(None, {k: v for k, v in feeds.items() if k in used})

    def _load_exit_rule(self):
        from compresskit.modeling.config import CompressedConfig
        from compresskit.modeling.dynamic import build_exit_rule

        config = CompressedConfig.from_pretrained(self.directory)
        rule = build_exit_rule(config.exit_rule, len(config.layers), config.backbone["hidden_size"])
        weights = self.directory / "exit_rule.safetensors"
        if weights.exists():
            from safetensors.torch import load_file

            rule.load_state_dict(load_file(weights))
        return rule.eval()

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
            logits = self._run("model", feeds)[0]
            full = np.full(batch, layers)
            return RuntimeOutput(logits, full.astype(np.float32), full)
        return self._routed(feeds, batch, layers)

    def _routed(self, feeds: dict[str, np.ndarray], batch: int, layers: int) -> RuntimeOutput:
        mask = feeds["attention_mask"]
        embed_feeds = {k: feeds[k] for k in ("input_ids", "token_type_ids") if k in feeds}
        embedded = self._run("embed", embed_feeds)
        hidden = embedded[0].copy()
        bias = embedded[1] if self.manifest.get("position_bias") else None
        gates, exits = set(self.manifest["gates"]), set(self.manifest["exits"])
        active = np.arange(batch)
        logits = None
        executed = np.zeros(batch, dtype=np.float32)
        exit_layer = np.full(batch, layers)
        state = self.exit_rule.init_state(batch, torch.device("cpu")) if self.exit_rule is not None else {}
        for i in range(layers):
            rows = active
            if i in gates:
                gate = self._run(f"gate_{i}", {"hidden": hidden[rows], "attention_mask": mask[rows]})[0]
                rows = rows[gate[:, 1] > gate[:, 0]]
            if rows.size:
                layer_feeds = {"hidden": hidden[rows], "attention_mask": mask[rows]}
                if bias is not None:
                    layer_feeds["position_bias"] = bias
                hidden[rows] = self._run(f"layer_{i}", layer_feeds)[0]
                executed[rows] += 1
            if i < layers - 1 and i in exits and self.exit_rule is not None:
                exit_logits, summary = self._exit(i, hidden[active], mask[active])
                if logits is None:
                    logits = np.zeros((batch, exit_logits.shape[1]), dtype=np.float32)
                with torch.no_grad():
                    leave = self.exit_rule.should_exit(i, torch.from_numpy(exit_logits), torch.from_numpy(summary),
                                                       torch.from_numpy(active), state).numpy()
                logits[active[leave]] = exit_logits[leave]
                exit_layer[active[leave]] = i + 1
                active = active[~leave]
                if not active.size:
                    break
        if active.size:
            head = self._run("head", {"hidden": hidden[active]})[0]
            if logits is None:
                logits = np.zeros((batch, head.shape[1]), dtype=np.float32)
            logits[active] = head
        return RuntimeOutput(logits, executed, exit_layer)

    def _exit(self, i: int, hidden: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exit head i's logits and the summary its rule reads."""
        if self.manifest.get("format", 1) < 2:  # older exports: [CLS]-reading heads on the hidden states only
            return self._run(f"exit_{i}", {"hidden": hidden})[0], hidden[:, 0]
        return tuple(self._run(f"exit_{i}", {"hidden": hidden, "attention_mask": mask}))

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
        offset = 2 if backbone.get("model_type") in ("roberta", "mpnet") else 0
        return int(backbone.get("max_position_embeddings", 512)) - offset

    @property
    def labels(self) -> list[str]:
        id2label = self._config.get("id2label") or {}
        return [id2label.get(str(i), str(i)) for i in range(len(id2label))] or ["0", "1"]

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

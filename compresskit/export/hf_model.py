"""An export as a transformers model: `transformers.pipeline("text-classification", model=...)` runs it.

Optimum's ORTModel classes load static exports but not dynamic ones (a set of per-layer graphs
routed per example), so this class wraps `OnnxClassifier`, static or dynamic, ONNX Runtime or
OpenVINO, in the interface pipelines call: a `PreTrainedModel` whose `forward` takes the
tokenizer's tensors and returns logits. Skipping still happens per example inside a batch; the
output also says how many layers each example ran.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from compresskit.errors import CompressKitError
from compresskit.export.engines import Engine, EnginePrecision
from compresskit.export.runtime import OnnxClassifier
from compresskit.files import partial_dir


@dataclass
class RoutedClassifierOutput(SequenceClassifierOutput):
    layers_executed: torch.Tensor | None = None  # per example: how many layers it ran
    exit_layer: torch.Tensor | None = None  # per example: 1-based layer it left after


class _ExportMarkerConfig(PretrainedConfig):
    """Never instantiated: pipelines log an error for a model class no auto class maps to, so the
    class is registered under this marker (as Optimum registers its ORTModel classes)."""

    model_type = "compresskit_export"


class ExportedModelForSequenceClassification(PreTrainedModel):
    """A compresskit export behind the transformers model interface (CPU, inference only).

    >>> model = ExportedModelForSequenceClassification.from_pretrained("runs/x/exports/onnx")
    >>> classify = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(...))
    """

    config_class = _ExportMarkerConfig  # the real config is the export's own (AutoConfig of its folder)
    main_input_name = "input_ids"
    base_model_prefix = "exported"

    def __init__(self, config, classifier: OnnxClassifier):
        super().__init__(config)
        self.classifier = classifier

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, runtime: Engine = "onnxruntime",
                        precision: EnginePrecision = "fp32", quantized: bool = False, threads: int | None = None,
                        **unused: Any) -> ExportedModelForSequenceClassification:
        """Load an export folder; `quantized` takes its INT8 graphs, `runtime`/`precision` as in `OnnxClassifier`."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CompressKitError(f"{directory} is not a directory; give the folder `compresskit export` wrote "
                                   "(loading from a hub needs it downloaded first: huggingface_hub.snapshot_download)")
        classifier = OnnxClassifier(directory, quantized=quantized, threads=threads, runtime=runtime,
                                    precision=precision)
        return cls(AutoConfig.from_pretrained(directory), classifier)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **unused: Any) -> RoutedClassifierOutput:
        encodings = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        out = self.classifier.forward({k: v.cpu().numpy() for k, v in encodings.items() if v is not None})
        return RoutedClassifierOutput(logits=torch.from_numpy(np.ascontiguousarray(out.logits, dtype=np.float32)),
                                      layers_executed=torch.as_tensor(out.layers_executed, dtype=torch.float32),
                                      exit_layer=torch.as_tensor(out.exit_layer))

    # the graphs live outside torch: there is one device and one dtype, and nothing to move
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def to(self, *args: Any, **kwargs: Any) -> ExportedModelForSequenceClassification:
        target = args[0] if args else kwargs.get("device", "cpu")
        if isinstance(target, torch.dtype) or torch.device(target).type != "cpu":
            raise CompressKitError(f"an exported model runs on the CPU; it cannot move to {target} (for bf16 load it "
                                   "with runtime='openvino', precision='bf16'; for a GPU use the PyTorch model)")
        return self

    def save_pretrained(self, save_directory: str | Path, **unused: Any) -> None:
        """Copy the export's files (graphs, config, tokenizer, model card) into `save_directory`.

        As transformers does, other files already there stay; each copied file appears whole or not at all."""
        target, source = Path(save_directory), self.classifier.directory
        if target.exists() and target.resolve() == source.resolve():
            return
        target.mkdir(parents=True, exist_ok=True)
        work = partial_dir(target / "export")
        try:
            shutil.copytree(source, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".lock"))
            for file in sorted(p for p in work.rglob("*") if p.is_file()):
                (target / file.relative_to(work)).parent.mkdir(parents=True, exist_ok=True)
                os.replace(file, target / file.relative_to(work))
        finally:
            shutil.rmtree(work, ignore_errors=True)


AutoModelForSequenceClassification.register(_ExportMarkerConfig, ExportedModelForSequenceClassification, exist_ok=True)

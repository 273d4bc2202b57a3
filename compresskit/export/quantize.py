"""INT8 graphs beside an export's fp32 ones (`*_quantized.onnx`): dynamic or static (calibrated QDQ).

Dynamic INT8 measures each activation's range on every call; static INT8 measures the ranges
once, on calibration rows, and stores them in the graph as QuantizeLinear/DequantizeLinear pairs
(which OpenVINO also reads as its own INT8). A dynamic model's per-layer graphs are calibrated on
the hidden states that really reach them: the fp32 export runs the calibration rows with its own
routing, and each graph is calibrated on the sub-batches it was called with.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from compresskit.errors import CompressKitError

log = logging.getLogger(__name__)

STATIC_CALIBRATION_BATCH = 16


def _not_preprocessing_advice(record: logging.LogRecord) -> bool:
    # onnxruntime advises quant_pre_process (shape inference, graph optimisation) once per graph;
    # the graphs are quantized as exported, which is what the benchmarks measured
    return "pre-process" not in record.getMessage()


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizer logs a line per tensor through the root logger: keep it to warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    root.addFilter(_not_preprocessing_advice)
    try:
        yield
    finally:
        root.removeFilter(_not_preprocessing_advice)
        root.setLevel(level)


def quantize_dynamic(work: Path, manifest: dict[str, Any], scheme: str) -> dict[str, Any]:
    """INT8 dynamic quantization of every graph with Optimum's ORTQuantizer."""
    if scheme != "int8":
        raise CompressKitError(f"export: unknown quantization {scheme!r}; the one supported is int8")
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
    with _quiet_root_logger():
        for graph in manifest["graphs"]:
            ORTQuantizer.from_pretrained(work, file_name=graph).quantize(config, save_dir=work,
                                                                         file_suffix="quantized")
    return {"scheme": "int8 dynamic (ORTQuantizer, avx2)", "suffix": "_quantized"}


def _encodings(tokenizer: Any, rows: list[list[str]], names: list[str]) -> list[dict[str, np.ndarray]]:
    batches = [rows[i:i + STATIC_CALIBRATION_BATCH] for i in range(0, len(rows), STATIC_CALIBRATION_BATCH)]
    return [{k: v.astype("int64") for k, v in tokenizer(*map(list, zip(*batch, strict=True)), padding=True,
                                                        truncation=True, return_tensors="np").items()
             if k in names} for batch in batches]


def _routed_feeds(work: Path, manifest: dict[str, Any], encodings: list[dict[str, np.ndarray]]
                  ) -> dict[str, list[dict[str, np.ndarray]]]:
    """Each per-layer graph's feeds while the fp32 export routes the calibration batches."""
    from compresskit.export.runtime import OnnxClassifier

    runtime = OnnxClassifier(work, manifest=manifest, one_call=False)
    with runtime.recording_feeds() as recorded:
        for encoding in encodings:
            runtime.forward(encoding)
    return {f"{name}.onnx": feeds for name, feeds in recorded.items()}


def quantize_static(work: Path, manifest: dict[str, Any], tokenizer: Any, rows: list[list[str]]) -> dict[str, Any]:
    """INT8 QDQ quantization of the graphs' matrix products, activation ranges calibrated (min-max)
    on `rows` (lists of texts): no range is measured at run time, the cost dynamic INT8 pays on
    every call.

    A dynamic export's one-call graph keeps its layers inside `If` branches, which onnxruntime's
    static quantizer leaves in fp32: its INT8 version sends lone examples through the per-layer
    graphs instead (`"one_call": false`). A graph no calibration row reached (a deep layer every
    row exits before, the exit graph of a gate that never skipped) has no ranges to use: it stays
    fp32, named in `"fp32_graphs"`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    encodings = _encodings(tokenizer, rows, manifest["inputs"])
    dynamic = manifest["kind"] == "dynamic"
    feeds = _routed_feeds(work, manifest, encodings) if dynamic else {"model.onnx": encodings}

    class Feeds(CalibrationDataReader):
        def __init__(self, batches: list[dict[str, np.ndarray]]):
            self._batches = iter(batches)

        def get_next(self):
            return next(self._batches, None)

    kept_fp32 = []
    with _quiet_root_logger():
        for graph in manifest["graphs"]:
            if graph == manifest.get("one_call"):
                continue
            target = work / graph.replace(".onnx", "_quantized.onnx")
            if not feeds.get(graph):
                shutil.copyfile(work / graph, target)
                kept_fp32.append(graph)
                continue
            ort_quantize_static(str(work / graph), str(target), Feeds(feeds[graph]), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                                op_types_to_quantize=["MatMul"])
    if kept_fp32:
        log.warning("export: no calibration row reached %s; kept in fp32 in the INT8 export", ", ".join(kept_fp32))
    result = {"scheme": f"int8 static (QDQ MatMul, min-max over {len(rows)} calibration rows)",
              "suffix": "_quantized", "fp32_graphs": kept_fp32}
    if dynamic:
        result["one_call"] = False
    return result

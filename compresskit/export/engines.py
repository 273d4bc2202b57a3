"""The engines an export's ONNX graphs run on: ONNX Runtime (always there), or OpenVINO (installed
with compresskit; fp32, or bf16 on CPUs with AVX512-BF16/AMX, where it is several times faster).

Both are wrapped to the same small interface: the graph's input names, its output names, and
`run(feeds)` -> outputs in that order. The routing of a dynamic export (runtime.py) is the same on both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from compresskit.errors import CompressKitError

Engine = Literal["onnxruntime", "openvino"]
EnginePrecision = Literal["fp32", "bf16"]


class OrtGraph:
    executed_precision = "fp32"

    def __init__(self, file: Path, threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Idle threads sleep instead of spinning: a dynamic export is several sessions taking turns (and
        # a benchmark times others beside it), and by default the threads of the session that just ran
        # busy-wait on the cores the next one needs. Measured on 2 cores: 2x faster at batch 1 for the
        # teacher and the dynamic export alike, 2.3x at batch 32 for the export (docs/deploy.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self._session.get_inputs()}
        self.outputs = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, feeds)


class OpenVinoGraph:
    """An ONNX graph compiled by OpenVINO for the CPU. A port of OpenVINO's graph has several names
    (the ONNX name among them): feeds and outputs are matched by the ONNX ones."""

    def __init__(self, file: Path, threads: int | None, precision: EnginePrecision):

        # LATENCY: one request at a time on all the threads it is given (serving), measured a little
        # faster than the default at batch 1 and level at batch 32
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = _core()
        try:
            self._compiled = core.compile_model(core.read_model(str(file)), "CPU", config)
        except RuntimeError as err:  # e.g. DeBERTa's relative positions: an If of dynamic rank
            reason = str(err).strip().splitlines()[-1]
            raise CompressKitError(f"OpenVINO cannot compile {file.name} ({reason}); run this export on "
                                   "ONNX Runtime (--runtime onnxruntime)") from None
        onnx_names = _onnx_names(file)
        self._ports = {next(n for n in port.get_names() if n in onnx_names["inputs"]): port
                       for port in self._compiled.inputs}
        self.inputs = set(self._ports)
        self.outputs = [next(n for n in port.get_names() if n in onnx_names["outputs"])
                        for port in self._compiled.outputs]
        self._request = self._compiled.create_infer_request()
        # what OpenVINO really runs: a bf16 hint on a CPU without bf16 units falls back to f32 silently
        executed = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.executed_precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(executed, executed)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer({self._ports[k]: v for k, v in feeds.items()})
        # copies: the request's buffers are reused by its next call
        return [np.array(result[port]) for port in self._compiled.outputs]


def load_graph(file: Path, engine: Engine, precision: EnginePrecision, threads: int | None) -> OrtGraph | OpenVinoGraph:
    if engine == "onnxruntime":
        if precision != "fp32":
            raise CompressKitError(f"precision {precision}: ONNX Runtime runs these graphs in fp32; "
                                   "use --runtime openvino for bf16")
        return OrtGraph(file, threads)
    if engine == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise CompressKitError("the OpenVINO runtime is not installed: pip install openvino "
                                   "(scripts/setup.sh installs it)") from None
        return OpenVinoGraph(file, threads, precision)
    raise CompressKitError(f"unknown runtime {engine!r}: onnxruntime or openvino")


_CORE = None


def _core():
    global _CORE
    if _CORE is None:  # one OpenVINO core per process: it holds the plugins and their caches
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def _onnx_names(file: Path) -> dict[str, set[str]]:
    import onnx

    graph = onnx.load(str(file), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return {"inputs": {i.name for i in graph.input if i.name not in initializers},
            "outputs": {o.name for o in graph.output}}

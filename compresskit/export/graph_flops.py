"""FLOPs an ONNX graph multiplies for given input shapes, counted from the graph itself.

`benchmark` divides them by measured time (FLOPs/s per row), whatever runtime ran the graph. Only
matrix products count (MatMul, Gemm and their integer forms, 2 FLOPs per multiply-add), as
`torch.utils.flop_counter` counts a PyTorch model: in a transformer they are all but a sliver of
the work. The shapes come from ONNX Runtime's symbolic shape inference (ONNX's own loses axes in
DeBERTa's relative attention) with the dynamic axes set; a transformer graph
costs (a0 + a1 s + a2 s^2) + b (c0 + c1 s + c2 s^2) for batch b and sequence s (the a-terms: work
shared by the batch, e.g. DeBERTa's relative-position projections), so six inferences fit that, a
seventh checks it, and every later batch is arithmetic. A graph whose products shape inference
cannot resolve is reported as not countable (None), never undercounted.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_PRODUCTS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}
_BATCH = {"batch", "batch_size"}  # the exporters' axis names
_SEQUENCE = {"sequence", "sequence_length", "sequence_k"}  # sequence_k: the keys of a position bias


class GraphFlops:
    """`flops(feeds)` -> FLOPs of one run of the graph on these arrays (None: not countable)."""

    def __init__(self, file: Path):
        import onnx

        self._model = onnx.load(str(file), load_external_data=False)
        self._axes = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in self._model.graph.input}
        names = {p for dims in self._axes.values() for p in dims if p}
        self._fit = self._fit_polynomial() if names <= _BATCH | _SEQUENCE else None
        if names - _BATCH - _SEQUENCE:
            log.debug("%s: axes %s are not batch/sequence: FLOPs not counted", file.name, names)

    def __call__(self, feeds: dict[str, np.ndarray]) -> float | None:
        if self._fit is None:
            return None
        b, s = 1, 1
        for name, array in feeds.items():
            for size, axis in zip(array.shape, self._axes.get(name, []), strict=False):
                b, s = (size, s) if axis in _BATCH else (b, size) if axis in _SEQUENCE else (b, s)
        return float(round(_terms(b, s) @ self._fit))  # the fit is exact up to rounding

    def _fit_polynomial(self) -> np.ndarray | None:
        # batch 2 and 3, not 1: a size-1 axis broadcasts, and shape inference may then lose it
        points = [(b, s, self._count(b, s)) for b in (2, 3) for s in (8, 16, 32)]
        if any(f is None for *_, f in points):
            return None
        coefficients = np.linalg.solve(np.array([_terms(b, s) for b, s, _ in points]),
                                       np.array([f for *_, f in points], dtype=float))
        check = self._count(4, 24)
        if check is None or abs(_terms(4, 24) @ coefficients - check) > 1e-6 * max(check, 1):
            return None  # not of the transformer form: better no number than a wrong one
        return coefficients

    def _count(self, batch: int, sequence: int) -> float | None:
        import onnx
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        model = onnx.ModelProto()
        model.CopyFrom(self._model)
        for graph_input in model.graph.input:
            for dim in graph_input.type.tensor_type.shape.dim:
                if dim.dim_param in _BATCH | _SEQUENCE:
                    dim.dim_value = batch if dim.dim_param in _BATCH else sequence
        try:
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        except Exception as err:  # noqa: BLE001 (an op it does not know: the graph is not countable)
            log.debug("shape inference failed: %s", err)
            return None
        graph = inferred.graph
        shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
                  for v in [*graph.value_info, *graph.input, *graph.output]}
        shapes.update({t.name: list(t.dims) for t in graph.initializer})
        total = 0.0
        for node in graph.node:
            if node.op_type not in _PRODUCTS:
                continue
            first, second = (shapes.get(node.input[i]) for i in _PRODUCTS[node.op_type])
            if not first or not second or None in first or None in second:
                return None
            total += _product_flops(node, first, second)
        return total


@functools.lru_cache(maxsize=64)
def graph_flops(file: Path, modified: float) -> GraphFlops:
    """One fit per graph file (and version of it) per process: the runtimes of one export share it."""
    return GraphFlops(file)


def _terms(batch: int, sequence: int) -> np.ndarray:
    powers = np.array([1.0, sequence, sequence * sequence])
    return np.concatenate([powers, batch * powers])


def _product_flops(node, a: list[int], b: list[int]) -> float:
    if node.op_type == "Gemm":
        attrs = {x.name: x.i for x in node.attribute}
        m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
        n = b[0] if attrs.get("transB") else b[1]
        return 2.0 * m * k * n
    a = [1, *a] if len(a) == 1 else a
    b = [*b, 1] if len(b) == 1 else b
    stack = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return 2.0 * float(np.prod(stack)) * a[-2] * a[-1] * b[-1]

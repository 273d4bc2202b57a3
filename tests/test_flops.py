"""FLOPs counted from an export's ONNX graphs (what `benchmark` divides by time): the same matrix
products the PyTorch model runs, skipped layers included."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from compresskit.export import OnnxClassifier, export_model
from tests.conftest import make_tokenizer
from tests.test_export import SHAPES as EXPORT_SHAPES
from tests.test_export import feeds, model_of
from tests.test_modeling import inputs

# one of each export kind (static, DeBERTa's relative attention, gated, exits, both), from the export tests
SHAPES = [p for p in EXPORT_SHAPES if p.id in {"bert-static", "deberta-v2-static", "bert-gated", "mpnet-exits",
                                                "roberta-gated+exits"}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def torch_flops(model, batch) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(**batch)
    return float(counter.get_total_flops())


@pytest.mark.parametrize("backbone, shape", SHAPES)
def test_export_flops_are_the_pytorch_models(backbone, shape, tokenizer, tmp_path):
    model = model_of(backbone, shape)
    export_model(model, tokenizer, tmp_path / "onnx", quantize="int8")
    for quantized in (False, True):  # INT8 graphs multiply the same shapes (MatMulInteger)
        runtime = OnnxClassifier(tmp_path / "onnx", quantized=quantized)
        for size, seed in ((12, 3), (1, 4)):  # one example: counted on the routes of the one-call graph
            batch = {k: v for k, v in inputs(batch=size, seed=seed).items() if k in runtime.inputs}
            counted, expected = runtime.count_flops(feeds(batch, runtime)), torch_flops(model, batch)
            if shape.get("gates"):
                # each layer's graph also scores every later gate and the head on its output, for the
                # routing of the next layers: more than PyTorch, which scores a gate when it reaches it
                assert expected < counted < 1.4 * expected
            else:  # skipped work (exited rows) is not counted, just as in PyTorch
                assert counted == expected


def test_a_graph_of_unknown_axes_is_not_counted(tokenizer, tmp_path):
    export_model(model_of("bert", {}), tokenizer, tmp_path / "onnx")
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    graph.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "words"  # an axis of no known meaning
    onnx.save(graph, str(tmp_path / "onnx" / "model.onnx"))
    runtime = OnnxClassifier(tmp_path / "onnx")
    batch = {k: v for k, v in inputs(batch=2, seed=0).items() if k in runtime.inputs}
    assert runtime.count_flops(feeds(batch, runtime)) is None  # no number rather than a wrong one

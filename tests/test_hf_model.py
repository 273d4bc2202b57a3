"""Exports behind the transformers model interface: `pipeline("text-classification")` on static and dynamic exports."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import pipeline

from compresskit.errors import CompressKitError
from compresskit.export import ExportedModelForSequenceClassification, OnnxClassifier, export_model
from tests.conftest import VOCAB, make_tokenizer
from tests.test_export import model_of

# sentences of the tiny vocabulary, of different lengths (the pipeline pads each batch)
TEXTS = [" ".join(VOCAB[5 + (i * 7 + j * 3) % (len(VOCAB) - 5)] for j in range(3 + i % 6)) for i in range(12)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.mark.parametrize("backbone, shape", [("bert", {}), ("bert", dict(gates=True)),
                                             ("roberta", dict(gates=True, exits="patience_confidence"))],
                         ids=["static", "gated", "gated+exits"])
def test_pipeline_classifies_like_the_runtime_and_the_pytorch_model(backbone, shape, tokenizer, tmp_path, caplog):
    model = model_of(backbone, shape)
    export_model(model, tokenizer, tmp_path / "onnx")
    exported = ExportedModelForSequenceClassification.from_pretrained(tmp_path / "onnx")
    with caplog.at_level(logging.ERROR):
        classify = pipeline("text-classification", model=exported, tokenizer=tokenizer)
    assert "not supported" not in caplog.text
    got = classify(TEXTS, batch_size=5)  # batches of 5, 5 and 2: rows of one batch take their own routes
    expected = OnnxClassifier(tmp_path / "onnx").predict(TEXTS, batch_size=5)
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in expected], atol=1e-5)
    encodings = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        pytorch = model(**encodings).logits.argmax(-1).tolist()
    assert [r["label"] for r in got] == [model.config.id2label[i] for i in pytorch]
    if model.is_dynamic:  # the batch really skips: examples ran different numbers of layers
        out = exported(**encodings)
        assert out.logits.shape == (len(TEXTS), model.config.num_labels)
        assert len(set(out.layers_executed.tolist())) > 1


def test_save_pretrained_copies_the_export_and_keeps_other_files(tokenizer, tmp_path):
    export_model(model_of("bert", dict(gates=True)), tokenizer, tmp_path / "onnx")
    exported = ExportedModelForSequenceClassification.from_pretrained(tmp_path / "onnx")
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "notes.txt").write_text("mine")
    exported.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "notes.txt").read_text() == "mine"
    assert not [p for p in (tmp_path / "copy").iterdir() if p.name.startswith(".")]  # no partial left behind
    again = ExportedModelForSequenceClassification.from_pretrained(tmp_path / "copy")
    encodings = tokenizer(TEXTS, padding=True, return_tensors="pt")
    np.testing.assert_array_equal(again(**encodings).logits.numpy(), exported(**encodings).logits.numpy())


def test_what_an_export_cannot_do_is_refused_clearly(tokenizer, tmp_path):
    with pytest.raises(CompressKitError, match="not a directory"):
        ExportedModelForSequenceClassification.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompressKitError, match="not a compresskit export"):
        ExportedModelForSequenceClassification.from_pretrained(tmp_path / "empty")
    export_model(model_of("bert", {}), tokenizer, tmp_path / "onnx")
    exported = ExportedModelForSequenceClassification.from_pretrained(tmp_path / "onnx")
    assert exported.to("cpu") is exported
    with pytest.raises(CompressKitError, match="runs on the CPU"):
        exported.to(torch.bfloat16)


def test_openvino_serves_the_pipeline_on_the_same_routes(tokenizer, tmp_path):
    export_model(model_of("roberta", dict(gates=True, exits="patience_confidence")), tokenizer, tmp_path / "onnx")
    encodings = tokenizer(TEXTS, padding=True, return_tensors="pt")
    outputs = [ExportedModelForSequenceClassification.from_pretrained(tmp_path / "onnx", runtime=runtime)(**encodings)
               for runtime in ("onnxruntime", "openvino")]
    np.testing.assert_array_equal(outputs[0].exit_layer.numpy(), outputs[1].exit_layer.numpy())
    np.testing.assert_allclose(outputs[0].logits.numpy(), outputs[1].logits.numpy(), atol=1e-4)

"""Deployment: ONNX export (Optimum for static models, per-part graphs for dynamic ones) and its runtime."""

from compresskit.export.hf_model import ExportedModelForSequenceClassification
from compresskit.export.onnx_export import export_model
from compresskit.export.runtime import OnnxClassifier

__all__ = ["ExportedModelForSequenceClassification", "OnnxClassifier", "export_model"]

"""`export`: the incoming model as ONNX (+ INT8), checked against PyTorch on the evaluation split."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from compresskit.evaluation.evaluate import MODEL_INPUTS, loader
from compresskit.export import OnnxClassifier, export_model
from compresskit.pipeline import PipelineState, StageContext
from compresskit.registry import StageConfig, Strategy, register_strategy


class ExportConfig(StageConfig):
    """Recipe keys of an `export` stage."""

    quantize: Literal["int8"] | None = Field(None, description="also write INT8 graphs (ORTQuantizer)")
    atol: float = Field(1e-4, gt=0, description="largest logit difference allowed against PyTorch")


@register_strategy
class ExportStrategy(Strategy):
    """Export to ONNX Runtime (static: Optimum; dynamic: per-part graphs that skip work) into `onnx/`.

    The model passes through unchanged; the stage directory gets `onnx/` and `stage.json` the
    comparison with PyTorch on the evaluation split (and the INT8 accuracy change). Example stage::

        - strategy: export
          quantize: int8
    """

    name = "export"
    kind = "export"
    Config: ClassVar[type[StageConfig]] = ExportConfig

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        cfg: ExportConfig = self.config  # type: ignore[assignment]
        target = ctx.work_dir / "onnx"
        manifest = export_model(state.model, state.tokenizer, target, quantize=cfg.quantize, atol=cfg.atol)
        split = ctx.recipe.recipe.evaluation.split
        info: dict[str, Any] = {"manifest": manifest, "directory": "onnx",
                                split: compare(state.model, OnnxClassifier(target), state.data[split], state.tokenizer)}
        if cfg.quantize:
            info[f"{split}_int8"] = compare(state.model, OnnxClassifier(target, quantized=True), state.data[split],
                                            state.tokenizer)
        state.info = info
        return state


@torch.no_grad()
def compare(model: torch.nn.Module, runtime: OnnxClassifier, dataset: Any, tokenizer: Any) -> dict[str, float]:
    """ONNX Runtime vs PyTorch on a split: largest logit difference, prediction agreement, accuracies."""
    model.eval()
    diff, agree, onnx_right, torch_right, total = 0.0, 0, 0, 0, 0
    for batch in loader(dataset, tokenizer, 64):
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        expected = model(**inputs).logits.numpy()
        got = runtime.forward({k: v.numpy() for k, v in inputs.items()}).logits
        labels = batch["labels"].numpy()
        if got.shape[1] == 1:  # regression: no predicted class to compare
            labels = np.full(len(labels), -1)
        diff = max(diff, float(np.abs(got - expected).max()))
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        onnx_right += int((got.argmax(1) == labels).sum())
        torch_right += int((expected.argmax(1) == labels).sum())
        total += len(labels)
    return {"max_abs_diff": diff, "prediction_agreement": agree / total, "onnx_accuracy": onnx_right / total,
            "pytorch_accuracy": torch_right / total, "examples": total}

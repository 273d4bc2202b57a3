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
                                            state.tokenizer, one_at_a_time=False)
        state.info = info
        return state


@torch.no_grad()
def compare(model: torch.nn.Module, runtime: OnnxClassifier, dataset: Any, tokenizer: Any,
            one_at_a_time: bool = True) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch on a split: largest logit difference, prediction agreement, accuracies.

    A dynamic export is also run one example at a time (its batch-1 path, the one-call graph):
    `one_at_a_time` holds the same comparison for that path."""
    model.eval()
    diff, agree, onnx_right, torch_right, total = 0.0, 0, 0, 0, 0
    alone_diff, alone_agree = 0.0, 0
    alone = one_at_a_time and runtime.manifest["kind"] == "dynamic"
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
        for row in range(len(labels)) if alone else ():
            length = int(inputs["attention_mask"][row].sum())
            single = runtime.forward({k: v[row:row + 1, :length].numpy() for k, v in inputs.items()}).logits[0]
            alone_diff = max(alone_diff, float(np.abs(single - expected[row]).max()))
            alone_agree += int(single.argmax() == expected[row].argmax())
    result: dict[str, Any] = {"max_abs_diff": diff, "prediction_agreement": agree / total,
                              "onnx_accuracy": onnx_right / total, "pytorch_accuracy": torch_right / total,
                              "examples": total}
    if alone:
        result["one_at_a_time"] = {"max_abs_diff": alone_diff, "prediction_agreement": alone_agree / total}
    return result

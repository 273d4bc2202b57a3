"""`export`: the incoming model as ONNX (+ INT8), checked against PyTorch on the evaluation split."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from compresskit.data.batches import by_length, loader, model_inputs
from compresskit.errors import CompressKitError
from compresskit.export import OnnxClassifier, export_model
from compresskit.export.agreement import Agreement, agreement, agreement_one_at_a_time
from compresskit.export.engines import Engine, EnginePrecision
from compresskit.export.onnx_export import on_host
from compresskit.registry import StageConfig, Strategy, register_strategy
from compresskit.stage import ModelShape, PipelineState, PlanContext, StageContext

log = logging.getLogger(__name__)


class ExportConfig(StageConfig):
    """Recipe keys of an `export` stage."""

    quantize: Literal["int8", "int8-static"] | None = Field(None, description="also write INT8 graphs: int8 "
                                                           "(dynamic, ORTQuantizer) or int8-static (QDQ, calibrated "
                                                           "on `calibration_rows` training rows; a dynamic model's "
                                                           "layers on the rows its routing sends them)")
    calibration_rows: int = Field(256, ge=1, description="training rows that calibrate int8-static")
    atol: float = Field(1e-4, gt=0, description="largest logit difference allowed against PyTorch")
    runtime: Engine = Field("onnxruntime", description="also check the export on this runtime: openvino "
                            "(ONNX Runtime is always checked)")
    runtime_precision: EnginePrecision = Field("fp32", description="precision of `runtime`: fp32 (held to "
                                               "`atol`) or bf16 (OpenVINO on AVX512-BF16/AMX CPUs; held to "
                                               ">= 99.5% identical predictions and accuracy within 0.3 points)")

    @model_validator(mode="after")
    def _runtime_precision(self) -> ExportConfig:
        if self.runtime == "onnxruntime" and self.runtime_precision != "fp32":
            raise ValueError("ONNX Runtime runs the graphs in fp32; bf16 needs runtime: openvino")
        return self


# a bf16 runtime is not bit-faithful: it is held to what its predictions do on the evaluation split
BF16_MIN_AGREEMENT, BF16_MAX_ACCURACY_CHANGE = 0.995, 0.003


def check_served(summary: dict[str, Any], precision: str, where: str) -> None:
    """Fail the stage when a bf16 runtime changes too many predictions or the accuracy too much."""
    if precision != "bf16":
        return
    change = abs(summary.get("onnx_accuracy", 0.0) - summary.get("pytorch_accuracy", 0.0))
    if summary["prediction_agreement"] < BF16_MIN_AGREEMENT or change > BF16_MAX_ACCURACY_CHANGE:
        raise CompressKitError(
            f"{where}: bf16 predictions agree with PyTorch on {summary['prediction_agreement']:.2%} of the "
            f"evaluation split (at least {BF16_MIN_AGREEMENT:.1%} needed) and move its accuracy by "
            f"{change:.4f} (at most {BF16_MAX_ACCURACY_CHANGE} allowed); serve it in fp32 (runtime_precision: fp32)")


@register_strategy
class ExportStrategy(Strategy[ExportConfig]):
    """Export to ONNX Runtime (static: Optimum; dynamic: per-part graphs that skip work) into `onnx/`.

    The model passes through unchanged; the stage directory gets `onnx/` and `stage.json` the
    comparison with PyTorch on the evaluation split (and the INT8 accuracy change). Example stage::

        - strategy: export
          quantize: int8
    """

    name = "export"
    kind = "export"

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        if self.config.runtime == "openvino" and shape.model_type == "deberta-v2":
            ctx.problem("runtime", "OpenVINO cannot compile DeBERTa's relative-position graph (an If of dynamic "
                                   "rank); serve it on ONNX Runtime (runtime: onnxruntime)")
        return shape

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        cfg = self.config
        target = ctx.work_dir / "onnx"
        # one host copy (none on a CPU) for the export and every comparison: they trace and run there
        model = on_host(state.model)
        calibration = None
        if cfg.quantize == "int8-static":
            train = state.raw["train"].shuffle(seed=ctx.seed)
            fields = [f for f in ("text_a", "text_b") if f in train.column_names]
            calibration = [[row[f] for f in fields] for row in train.select(range(min(cfg.calibration_rows,
                                                                                     len(train))))]
        manifest = export_model(model, state.tokenizer, target, quantize=cfg.quantize, atol=cfg.atol,
                                calibration=calibration)
        split = ctx.eval_split
        info: dict[str, Any] = {"manifest": manifest, "directory": "onnx",
                                split: compare(model, OnnxClassifier(target), state.data[split], state.tokenizer,
                                               atol=cfg.atol)}
        if cfg.runtime != "onnxruntime":  # the same graphs on the serving runtime, held to its precision's bar
            served = OnnxClassifier(target, runtime=cfg.runtime, precision=cfg.runtime_precision)
            strict = cfg.runtime_precision == "fp32"
            info[f"{split}_{cfg.runtime}_{cfg.runtime_precision}"] = summary = compare(
                model, served, state.data[split], state.tokenizer, atol=cfg.atol if strict else None,
                one_at_a_time=strict)
            check_served(summary, cfg.runtime_precision, f"stage {ctx.name!r}, {cfg.runtime} {cfg.runtime_precision}")
            summary["executed_precision"] = served.executed_precision  # fp32 where bf16 is not native
            if served.executed_precision != cfg.runtime_precision:
                log.warning("stage %r: %s runs %s here (this CPU has no native %s): the export serves in %s",
                            ctx.name, cfg.runtime, served.executed_precision, cfg.runtime_precision,
                            served.executed_precision)
        if cfg.quantize:  # INT8 changes the numbers on purpose: measured and reported, not held to atol
            info[f"{split}_int8"] = compare(model, OnnxClassifier(target, quantized=True), state.data[split],
                                            state.tokenizer, atol=None, one_at_a_time=False)
            if cfg.runtime == "openvino":  # OpenVINO reads the QDQ pairs of int8-static as its own INT8
                info[f"{split}_openvino_int8"] = compare(
                    model, OnnxClassifier(target, quantized=True, runtime="openvino"), state.data[split],
                    state.tokenizer, atol=None, one_at_a_time=False)
        state.info = info
        return state


@torch.no_grad()
def compare(model: torch.nn.Module, runtime: OnnxClassifier, dataset: Any, tokenizer: Any, atol: float | None,
            one_at_a_time: bool = True) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch on a split (export/agreement.py): the largest logit difference on the
    export's routes, examples routed differently at a near-tie (`flipped`), prediction agreement and
    both accuracies. With `atol`, a real disagreement fails the stage.

    A dynamic export is also run one example at a time (its batch-1 path, the one-call graph):
    `one_at_a_time` holds the same comparison for that path. `model` is on the host (`on_host`)."""
    model.eval()
    tolerance = atol if atol is not None else 0.0
    batched, alone = Agreement(), Agreement()
    for batch in loader(by_length(dataset), tokenizer, 64):
        inputs = model_inputs(batch)
        batched.add(agreement(model, runtime, inputs, tolerance, labels=batch["labels"]))
        if one_at_a_time and runtime.manifest["kind"] == "dynamic":
            alone.add(agreement_one_at_a_time(model, runtime, inputs, tolerance))
    if atol is not None:
        batched.check(atol)
        alone.check(atol, "export, one example at a time")
    result: dict[str, Any] = batched.summary()
    if alone.examples:
        result["one_at_a_time"] = alone.summary()
    return result

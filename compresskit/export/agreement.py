"""How an export is held to its PyTorch model: the same logits on the same route, and routes that
differ only where a decision is a near-tie.

Two runtimes compute the same function up to rounding (other kernels, thread counts, CPUs), so a
gate or an exit whose decision value lies within rounding of its threshold can go either way in
either runtime. Comparing free-running outputs would then compare two different computations (a
layer run against a layer skipped: logits far apart) and fail on a coin toss. Instead PyTorch
replays the export's own route (`Route`): the logits must agree within `atol` on every example,
and each decision PyTorch would have taken differently must lie within `tie_tolerance` of its
threshold (`route_margin`). Such examples are counted as flipped; a decision that differs by more
is a real mismatch, and the check fails.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from compresskit.errors import CompressKitError
from compresskit.modeling.routed import Route


@dataclass
class Agreement:
    examples: int = 0
    max_abs_diff: float = 0.0  # logits, PyTorch on the export's route
    flipped: int = 0  # examples whose route differs from PyTorch's own at a near-tie
    mismatched: int = 0  # ... at a decision clearer than the tolerance: a real disagreement
    largest_margin: float = 0.0  # the clearest decision among the route differences
    same_prediction: int = 0  # the export's class equals PyTorch's own (free-running) prediction
    onnx_correct: int = 0  # with labels (classification): the export's right answers
    pytorch_correct: int = 0
    labelled: int = 0

    def add(self, other: Agreement) -> None:
        self.examples += other.examples
        self.max_abs_diff = max(self.max_abs_diff, other.max_abs_diff)
        self.flipped += other.flipped
        self.mismatched += other.mismatched
        self.largest_margin = max(self.largest_margin, other.largest_margin)
        self.same_prediction += other.same_prediction
        self.onnx_correct += other.onnx_correct
        self.pytorch_correct += other.pytorch_correct
        self.labelled += other.labelled

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("onnx_correct", "pytorch_correct", "labelled")}
        out["prediction_agreement"] = self.same_prediction / max(self.examples, 1)
        if self.labelled:
            out["onnx_accuracy"] = self.onnx_correct / self.labelled
            out["pytorch_accuracy"] = self.pytorch_correct / self.labelled
        return out

    def check(self, atol: float, what: str = "export") -> None:
        """Fail loudly on a real disagreement: logits beyond `atol` on one route, or a clear decision
        taken the other way. Near-tie flips are not failures (they are counted)."""
        if self.max_abs_diff > atol or self.mismatched:
            raise CompressKitError(
                f"{what}: ONNX and PyTorch disagree: max |logit diff| {self.max_abs_diff:.2e} on the same route "
                f"(tolerance {atol:g}); {self.mismatched} of {self.examples} example(s) routed differently at a "
                f"decision {self.largest_margin:.2e} from its threshold (beyond the tolerance: not a near-tie)")


@torch.no_grad()
def agreement(model: torch.nn.Module, runtime: Any, inputs: dict[str, torch.Tensor], tie_tolerance: float,
              labels: torch.Tensor | None = None) -> Agreement:
    """The export (`runtime`, an OnnxClassifier) against `model` on one padded batch (`labels`: count
    both runtimes' right answers too)."""
    model.eval()
    out = runtime.forward({k: v.numpy() for k, v in inputs.items()})
    result = Agreement(examples=len(out.logits))
    if not model.is_dynamic:
        own = model(**inputs)
        result.max_abs_diff = float(np.abs(out.logits - own.logits.numpy()).max())
    elif out.layer_mask is None:  # an older one-call graph without its mask: compare the free-running routes
        own = model(**inputs)
        same = (out.layers_executed == own.layers_executed.numpy()) & (out.exit_layer == own.exit_layer.numpy())
        result.mismatched = int((~same).sum())
        result.largest_margin = math.inf if result.mismatched else 0.0
        if same.any():
            result.max_abs_diff = float(np.abs(out.logits[same] - own.logits.numpy()[same]).max())
    else:
        replay = model(**inputs, route=Route(torch.from_numpy(np.asarray(out.layer_mask, dtype=bool)),
                                             torch.from_numpy(np.asarray(out.exit_layer, dtype=np.int64))))
        result.max_abs_diff = float(np.abs(out.logits - replay.logits.numpy()).max())
        margins = replay.route_margin.numpy()
        differs = np.isfinite(margins)
        result.flipped = int((differs & (margins <= tie_tolerance)).sum())
        result.mismatched = int((differs & (margins > tie_tolerance)).sum())
        result.largest_margin = float(margins[differs].max()) if differs.any() else 0.0
        # where no decision differed the replay is PyTorch's own run; elsewhere run it
        own = replay if not differs.any() else model(**inputs)
    predicted, expected = out.logits.argmax(1), own.logits.numpy().argmax(1)
    result.same_prediction = int((predicted == expected).sum())
    if labels is not None and out.logits.shape[1] > 1:
        result.labelled = len(labels)
        result.onnx_correct = int((predicted == labels.numpy()).sum())
        result.pytorch_correct = int((expected == labels.numpy()).sum())
    return result


def agreement_one_at_a_time(model: torch.nn.Module, runtime: Any, inputs: dict[str, torch.Tensor],
                            tie_tolerance: float) -> Agreement:
    """The same, each example alone and unpadded (a dynamic export's batch-1 path: the one-call graph)."""
    total = Agreement()
    for row in range(len(inputs["input_ids"])):
        length = int(inputs["attention_mask"][row].sum())
        total.add(agreement(model, runtime, {k: v[row:row + 1, :length] for k, v in inputs.items()}, tie_tolerance))
    return total

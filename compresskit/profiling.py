"""What a model is worth and what it costs: task metrics per split, FLOPs per example, parameters."""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator

from compresskit.evaluation.evaluate import evaluate
from compresskit.evaluation.flops import count_parameters, flops_per_example
from compresskit.stage import PipelineState


def profile(state: PipelineState, splits: list[str], evaluation: Any, known: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """Task metrics per split, FLOPs per example (counted on `evaluation.split`) and parameters of
    `state.model`, under the recipe's `evaluation` settings.

    `known` is an earlier profile of the same model (a stage's); what it has is not recomputed.
    """
    out: dict[str, Any] = dict(known or {})
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    for split in splits:
        if split not in out:
            out[split] = evaluate(state.model, state.data[split], state.task, state.tokenizer, evaluation.batch_size,
                                  accelerator)
    if "flops_per_example" not in out:
        out["flops_per_example"] = flops_per_example(state.model, state.data[evaluation.split], state.tokenizer,
                                                     evaluation.flops_examples)
    out["parameters"] = count_parameters(state.model)
    out["num_layers"] = state.model.num_layers
    return out

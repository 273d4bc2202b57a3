"""Training precision: `fp32`, `bf16`, `fp16`, or `auto` (bf16 where the device multiplies it natively).

bf16 autocast runs the matrix products in bfloat16 (AVX512-BF16/AMX on CPU, tensor cores on GPU)
while the weights, the optimizer state and the loss stay float32: the numerically delicate parts
(gate estimators, KL terms, the budget penalty) keep their precision. fp16 needs a GPU (accelerate's
loss scaling). Evaluation, calibration and export always run in float32, so a stage's reported
numbers compare across precisions; a teacher's predictions that only serve as training targets
run in the stage's precision (`targets_autocast`). The pipeline sets each stage's precision around the stage
(`training_precision`); every `train()` call of the stage reads it (`current`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Literal

import torch

from compresskit import hardware
from compresskit.errors import CompressKitError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Resolved = Literal["fp32", "bf16", "fp16"]
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU flags of bf16 matrix instructions

_current: ContextVar[Resolved] = ContextVar("compresskit_training_precision", default="fp32")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 natively (not emulated through fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(flag in hardware.cpu()["matrix_instructions"] for flag in NATIVE_BF16_FLAGS)
    return False


def problem(requested: Precision, device: torch.device) -> str | None:
    """Why `requested` cannot train on `device` (None: it can)."""
    if requested == "fp16" and device.type != "cuda":
        return "fp16 training needs a GPU (loss scaling); on this machine use bf16 or auto"
    return None


def resolve(requested: Precision, device: torch.device) -> Resolved:
    reason = problem(requested, device)
    if reason:
        raise CompressKitError(f"precision {requested}: {reason}")
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return requested


@contextmanager
def training_precision(precision: Resolved) -> Iterator[None]:
    token = _current.set(precision)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> Resolved:
    return _current.get()


def targets_autocast(device: torch.device) -> AbstractContextManager:
    """Autocast for a teacher's forward passes whose outputs are training targets (distillation
    logits): bf16 when the stage trains in bf16 (MPNet-12 inference measured 2.9x faster at batch 32, logits within
    ~0.03 of fp32's), nothing otherwise. Never for reported metrics."""
    if current() == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def accelerate_name(precision: Resolved) -> str:
    """accelerate's `mixed_precision` for ours."""
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]

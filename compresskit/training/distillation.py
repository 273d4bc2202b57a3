"""Distillation losses shared by the strategies that learn from a teacher.

Token-level losses average over real tokens only (padding is masked out), so a batch's padding
never pulls the student toward the teacher's padding states.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def prediction_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
                  ) -> torch.Tensor:
    """KL(teacher || student) of the softened predictions, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    log_target=True, reduction="batchmean") * t * t


def token_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over the hidden dimension, averaged over real tokens. (batch, tokens, dim) inputs."""
    weights = mask.to(student.dtype).unsqueeze(-1)
    return ((student - teacher) ** 2 * weights).sum() / (weights.sum() * student.shape[-1]).clamp(min=1.0)


def attention_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                  average_heads: bool = True) -> torch.Tensor:
    """MSE between attention maps (batch, heads, q, k) over real query/key pairs.

    `average_heads` compares the head-averaged maps (HadSkip); otherwise head by head, which
    needs equal head counts (TinyBERT).
    """
    if average_heads:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    pair = (mask[:, :, None] * mask[:, None, :]).to(student.dtype).unsqueeze(1)  # (batch, 1, q, k)
    denom = (pair.sum() * student.shape[1]).clamp(min=1.0)
    return ((student - teacher) ** 2 * pair).sum() / denom

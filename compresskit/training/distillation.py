"""Distillation losses shared by the strategies that learn from a teacher.

Token-level losses average over real tokens only (padding is masked out), so a batch's padding
never pulls the student toward the teacher's padding states.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def prediction_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
                  ) -> torch.Tensor:
    """KL(teacher || student) of the softened predictions, scaled by T^2 (Hinton et al.); on a
    regression's one output, which has no distribution to soften, the MSE to the teacher's value."""
    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits, teacher_logits)
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    log_target=True, reduction="batchmean") * t * t


def soft_cross_entropy(student_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student's prediction against a distribution over the labels (batch mean)."""
    return -(target * F.log_softmax(student_logits, -1)).sum(-1).mean()


def soft_targets(teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's softened prediction averaged with the one-hot label (COST-EFF's target of every exit)."""
    teacher = F.softmax(teacher_logits / temperature, -1)
    return 0.5 * teacher + 0.5 * F.one_hot(labels, teacher.shape[-1]).to(teacher.dtype)


def hidden_mse(student_states: tuple[torch.Tensor, ...], teacher_states: tuple[torch.Tensor, ...],
               mask: torch.Tensor) -> torch.Tensor:
    """`token_mse` averaged over paired hidden states (embeddings and every layer, same depth and width)."""
    pairs = list(zip(student_states, teacher_states, strict=True))
    return sum(token_mse(s, t, mask) for s, t in pairs) / len(pairs)


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

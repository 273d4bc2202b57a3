"""Batching for teacher-student training when the two read different token ids."""

from __future__ import annotations

from typing import Any

import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

TEACHER_PREFIX = "t_"  # teacher columns sit next to the student's: t_input_ids, t_attention_mask, ...


class TeacherStudentCollator:
    """Pads the student's and the teacher's ids each with its own tokenizer; stacks cached logits."""

    def __init__(self, student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase | None = None):
        self.student = DataCollatorWithPadding(student)
        self.teacher = DataCollatorWithPadding(teacher) if teacher is not None else None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        own = [{k: v for k, v in r.items() if not k.startswith(TEACHER_PREFIX) and k != "teacher_logits"}
               for r in rows]
        batch = dict(self.student(own))
        if self.teacher is not None and f"{TEACHER_PREFIX}input_ids" in rows[0]:
            theirs = self.teacher([{k[len(TEACHER_PREFIX):]: v for k, v in r.items() if k.startswith(TEACHER_PREFIX)}
                                   for r in rows])
            batch.update({TEACHER_PREFIX + k: v for k, v in theirs.items()})
        if "teacher_logits" in rows[0]:
            batch["teacher_logits"] = torch.tensor([r["teacher_logits"] for r in rows])
        return batch

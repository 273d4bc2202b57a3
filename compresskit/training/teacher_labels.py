"""A teacher's predictions on the training rows, computed once and kept in the run directory.

Shared by the strategies that learn a teacher's predictions (`distill`, `hadskip`): the teacher
reads its own token ids when its tokenizer differs from the student's, rows of similar length
are batched together, and the logits are cached under a digest of the teacher's weights, the ids
it reads and the precision, so a later stage or a resumed run reads them instead of labelling again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import datasets
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from compresskit.data.batches import MODEL_INPUTS, loader, model_inputs
from compresskit.data.loading import tokenize
from compresskit.rundir import fingerprint
from compresskit.stage import PipelineState
from compresskit.training import precision
from compresskit.training.collate import TEACHER_PREFIX, TeacherStudentCollator

log = logging.getLogger(__name__)
CACHE = "cache"  # of the run directory: predictions a later stage or a resumed run reads again


def teacher_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    own = {k[len(TEACHER_PREFIX):]: v for k, v in batch.items() if k.startswith(TEACHER_PREFIX)}
    return own or model_inputs(batch)


def same_tokenizer(a, b) -> bool:
    return type(a) is type(b) and a.get_vocab() == b.get_vocab()


def with_teacher_ids(student_set: datasets.Dataset, raw: datasets.Dataset, tokenizer, max_length: int
                      ) -> datasets.Dataset:
    encoded = tokenize(datasets.DatasetDict({"x": raw}), tokenizer, max_length)["x"]
    for column in ("input_ids", "attention_mask", "token_type_ids"):
        if column in encoded.column_names:
            student_set = student_set.add_column(TEACHER_PREFIX + column, encoded[column])
    return student_set


@torch.no_grad()
def with_teacher_logits(train_set: datasets.Dataset, teacher, tokenizer, collate, cache: Path | None = None
                         ) -> datasets.Dataset:
    """The teacher's predictions on the training split, computed once for every phase-2 epoch.

    With `cache` (a directory), they are kept there under a digest of the teacher's weights, the ids
    it reads and the precision, so a later stage labelling the same rows with the same teacher (or a
    resumed run) reads them instead of running the teacher again."""
    if "teacher_logits" in train_set.column_names:
        train_set = train_set.remove_columns("teacher_logits")
    device = next(teacher.parameters()).device
    path = None
    if cache is not None:
        teacher_columns = [c for c in train_set.column_names if c.startswith(TEACHER_PREFIX)] or [
            c for c in MODEL_INPUTS if c in train_set.column_names]
        rows = hashlib.sha256(json.dumps(train_set.select_columns(teacher_columns).to_dict()).encode()).hexdigest()
        key = fingerprint(_weights_digest(teacher), rows, precision.current(), device.type)
        path = cache / f"teacher-logits-{key}.pt"
        if path.exists():
            try:
                logits = torch.load(path, weights_only=True)
                log.info("teacher logits of %d rows read from %s", len(logits), path)
                return train_set.add_column("teacher_logits", logits.tolist())
            except Exception as err:  # a damaged cache file: label again
                log.warning("unreadable teacher logits %s (%s): labelling again", path, err)
    # rows of similar length batched together: far less padding for the (large) teacher to read
    lengths = [len(ids) for ids in train_set["input_ids"]]
    order = sorted(range(len(train_set)), key=lengths.__getitem__)
    logits = []
    batches = loader(train_set.select(order), tokenizer, 64, collate_fn=collate)
    for batch in tqdm(batches, desc="teacher logits", total=len(batches)):
        with precision.targets_autocast(device):
            logits.append(teacher(**teacher_inputs(batch)).logits.float())
    by_length = torch.cat(logits)
    in_order = torch.empty_like(by_length)
    in_order[torch.tensor(order, device=by_length.device)] = by_length
    if path is not None and PartialState().is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(in_order.cpu(), tmp)
        os.replace(tmp, path)  # whole or not at all
    return train_set.add_column("teacher_logits", in_order.tolist())


def _weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def teacher_labelled(state: PipelineState, teacher: torch.nn.Module,
                     teacher_tokenizer, cache: Path | None = None) -> datasets.Dataset:
    """The state's training rows (its tokenizer's ids) with `teacher`'s logits beside them, computed once
    in one pass (or read from `cache`); the teacher reads its own ids when its tokenizer differs. Batch
    them with `TeacherStudentCollator(state.tokenizer)`."""
    train_set = state.data["train"]
    shared_ids = same_tokenizer(teacher_tokenizer, state.tokenizer)
    if not shared_ids:
        train_set = with_teacher_ids(train_set, state.raw["train"], teacher_tokenizer, state.max_length)
    collate = TeacherStudentCollator(state.tokenizer, None if shared_ids else teacher_tokenizer)
    labelled = with_teacher_logits(train_set, teacher, state.tokenizer, collate, cache)
    return labelled.remove_columns([c for c in labelled.column_names if c.startswith(TEACHER_PREFIX)])

"""Load a task's splits from a packaged asset, the `datasets` hub or local files, and tokenize."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from compresskit import assets
from compresskit.data.tasks import KNOWN_TASKS, TaskSpec
from compresskit.errors import DataError

log = logging.getLogger(__name__)

FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def resolve_task(task: str | TaskSpec | dict[str, Any]) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, dict):
        return TaskSpec.model_validate(task)
    if task in KNOWN_TASKS:
        return KNOWN_TASKS[task]
    import difflib

    close = difflib.get_close_matches(task, list(KNOWN_TASKS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(
        f"unknown task {task!r}.{hint} Known tasks: {', '.join(KNOWN_TASKS)}; "
        "or describe your own with a mapping (name, source, data_files, text_fields, num_labels)."
    )


def _raw_splits(task: TaskSpec, wanted: list[str]) -> datasets.DatasetDict:
    if task.source == "packaged":
        root = assets.resolve(task.name, "task")
        files = {s: str(root / f"{task.splits[s]}.jsonl") for s in wanted}
        return datasets.load_dataset("json", data_files=files)
    if task.source == "files":
        files = {}
        for split in wanted:
            name = task.splits.get(split, split)
            if name not in task.data_files:
                raise DataError(f"task {task.name!r}: data_files has no {name!r} split "
                                f"(has {', '.join(task.data_files)})")
            files[split] = task.data_files[name]
        suffixes = {Path(f).suffix.lower() for f in files.values()}
        builders = {FILE_BUILDERS.get(s) for s in suffixes}
        if None in builders or len(builders) != 1:
            raise DataError(f"task {task.name!r}: data files must all be one of "
                            f"{', '.join(FILE_BUILDERS)}; got {sorted(suffixes)}")
        for f in files.values():
            if not Path(f).is_file():
                raise DataError(f"task {task.name!r}: data file {f} does not exist")
        builder = builders.pop()
        extra = {"delimiter": "\t"} if suffixes == {".tsv"} else {}
        return datasets.load_dataset(builder, data_files=files, **extra)
    try:
        loaded = datasets.load_dataset(task.path, task.subset)
    except Exception as err:  # the hub raises many types; all mean "not reachable as named"
        raise DataError(f"task {task.name!r}: could not load {task.path}/{task.subset} from the hub: {err}") from err
    return datasets.DatasetDict({s: loaded[task.splits[s]] for s in wanted})


def _check_columns(task: TaskSpec, split: str, ds: datasets.Dataset) -> None:
    need = [*task.text_fields, task.label_field]
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        raise DataError(f"task {task.name!r}, split {split!r}: missing column(s) {missing}; "
                        f"the data has {ds.column_names}. Set text_fields / label_field to match.")


def _label_to_index(task: TaskSpec):
    names = {n: i for i, n in enumerate(task.labels or [])}

    def convert(value: Any) -> float | int:
        if task.is_regression:
            return float(value)
        if isinstance(value, str) and not value.lstrip("-").isdigit():
            if value not in names:
                raise DataError(f"task {task.name!r}: label {value!r} is not in labels {task.labels}")
            return names[value]
        index = int(value)
        if not 0 <= index < task.num_labels:
            raise DataError(f"task {task.name!r}: label {index} outside 0..{task.num_labels - 1}")
        return index

    return convert


def load_splits(task: TaskSpec, splits: list[str], seed: int = 0, max_train_samples: int | None = None,
                max_eval_samples: int | None = None) -> datasets.DatasetDict:
    """Rows as {text_a, [text_b], label}, shrunk (after a seeded shuffle) when asked."""
    raw = _raw_splits(task, splits)
    convert = _label_to_index(task)
    out = {}
    for split in splits:
        ds = raw[split]
        _check_columns(task, split, ds)
        limit = max_train_samples if split == "train" else max_eval_samples
        if limit is not None and limit < len(ds):
            ds = ds.shuffle(seed=seed).select(range(limit))
        columns = {"text_a": task.text_fields[0], "label": task.label_field}
        if len(task.text_fields) == 2:
            columns["text_b"] = task.text_fields[1]

        def rename(row: dict[str, Any], columns=columns) -> dict[str, Any]:
            new = {k: row[v] for k, v in columns.items()}
            new["label"] = convert(new["label"])
            return new

        out[split] = ds.map(rename, remove_columns=ds.column_names, desc=f"{task.name}/{split}")
    return datasets.DatasetDict(out)


def tokenize(splits: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int
             ) -> datasets.DatasetDict:
    """Token ids without padding (the collator pads each batch to its own longest row)."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [t if t is not None else "" for t in batch["text_a"]]
        pairs = [t if t is not None else "" for t in batch["text_b"]] if "text_b" in batch else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        enc["labels"] = batch["label"]
        return enc

    return splits.map(encode, batched=True, remove_columns=splits[next(iter(splits))].column_names,
                      desc="tokenize")

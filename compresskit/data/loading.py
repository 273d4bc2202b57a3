"""Load a task's splits from a packaged asset, the `datasets` hub or local files, and tokenize."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
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
    """A known task's spec, a task mapping's, or that of a YAML/JSON file holding one (`--task mine.yaml`)."""
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, dict):
        return TaskSpec.model_validate(task)
    if task in KNOWN_TASKS:
        return KNOWN_TASKS[task]
    if Path(task).suffix.lower() in (".yaml", ".yml", ".json"):
        return _task_file(Path(task))
    import difflib

    close = difflib.get_close_matches(task, list(KNOWN_TASKS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(
        f"unknown task {task!r}.{hint} Known tasks: {', '.join(KNOWN_TASKS)}; "
        "or describe your own with a mapping (name, source, data_files, text_fields, num_labels), in a recipe "
        "or in a YAML file given instead of the name."
    )


def _task_file(path: Path) -> TaskSpec:
    from pydantic import ValidationError

    from compresskit.yamlfile import load_yaml

    if not path.is_file():
        raise DataError(f"task file {path} does not exist")
    raw = load_yaml(path)  # a RecipeError (located) for a file that is not clean YAML
    if isinstance(raw, dict) and isinstance(raw.get("task"), dict):
        raw = raw["task"]  # a recipe file names its task under `task:`
    if not isinstance(raw, dict):
        raise DataError(f"task file {path}: expected a task mapping (name, source, data_files, text_fields, "
                        "num_labels)")
    try:  # data_files relative to the current directory, as in a recipe
        return TaskSpec.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'task'}: {e['msg']}" for e in err.errors())
        raise DataError(f"task file {path}: {problems}") from None


def _source(task: TaskSpec, split: str) -> str:
    """Where a split's rows come from, for messages: a file path or a hub name."""
    if task.source == "packaged":
        return str(assets.resolve(task.name, "task") / f"{task.splits[split]}.jsonl")
    if task.source == "files":
        return str(task.data_files[task.splits.get(split, split)])
    return f"{task.path}/{task.subset} (hub), split {task.splits[split]!r}"


def check_split_names(task: TaskSpec, wanted: list[str]) -> None:
    for split in wanted:
        if task.source == "files":
            name = task.splits.get(split, split)
            if name not in (task.data_files or {}):
                raise DataError(f"task {task.name!r}: data_files has no {name!r} split "
                                f"(has {', '.join(task.data_files or {})}); add it or pick one of those")
        elif split not in task.splits:
            raise DataError(f"task {task.name!r} has no split {split!r}; splits: {', '.join(task.splits)}")


def _read_file(path: str) -> datasets.Dataset:
    """One csv/tsv/jsonl/json/parquet file as a Dataset; any unreadable file is a DataError naming it."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise DataError(f"data file {path}: unknown format {suffix!r}; use one of {', '.join(FILE_BUILDERS)}")
    if not file.is_file():
        raise DataError(f"data file {path} does not exist")
    if file.stat().st_size == 0:
        raise DataError(f"data file {path} is empty")
    if suffix != ".parquet":
        head = file.read_bytes()
        if b"\0" in head[:65536]:
            raise DataError(f"data file {path} is not a text file (it holds NUL bytes)")
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            line = head[:err.start].count(b"\n") + 1
            raise DataError(f"data file {path}, line {line}: not UTF-8 text (byte 0x{head[err.start]:02x}); "
                            "save the file as UTF-8") from None
    options: dict[str, Any] = {}
    if suffix in (".csv", ".tsv"):
        # cells as written: pandas would turn empty cells and words like NA or null into NaN
        options = {"keep_default_na": False, "delimiter": "\t" if suffix == ".tsv" else ","}
    try:
        with _quiet():
            return datasets.load_dataset(FILE_BUILDERS[suffix], data_files={"rows": str(file)}, split="rows",
                                         **options)
    except Exception as err:  # pandas/pyarrow raise many types; all mean "this file is not readable as its format"
        cause = err.__cause__ or err
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        if "corresponds to no data" in reason:
            raise DataError(f"data file {path} has no rows (a header at most)") from None
        raise DataError(f"data file {path} cannot be read as {suffix[1:]}: {reason}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No `datasets` progress bars: reading and checking a split takes a second; the bars of long steps stay."""
    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    logger = logging.getLogger("datasets")  # a file it cannot parse is logged as an ERROR, then raised: ours says it
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
        if not quiet:
            datasets.enable_progress_bars()


def _raw_splits(task: TaskSpec, wanted: list[str]) -> datasets.DatasetDict:
    check_split_names(task, wanted)
    if task.source in ("packaged", "files"):
        return datasets.DatasetDict({s: _read_file(_source(task, s)) for s in wanted})
    try:
        loaded = datasets.load_dataset(task.path, task.subset)
    except Exception as err:  # the hub raises many types; all mean "not reachable as named"
        raise DataError(f"task {task.name!r}: could not load {task.path}/{task.subset} from the hub: {err}") from err
    return datasets.DatasetDict({s: loaded[task.splits[s]] for s in wanted})


def _check_columns(task: TaskSpec, split: str, ds: datasets.Dataset) -> None:
    need = [*task.text_fields, task.label_field]
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        raise DataError(f"task {task.name!r}, split {split!r} ({_source(task, split)}): missing column(s) "
                        f"{missing}; the data has {ds.column_names}. Set text_fields / label_field to match.")
    if len(ds) == 0:
        raise DataError(f"task {task.name!r}, split {split!r} ({_source(task, split)}) has no rows")


def label_converter(task: TaskSpec) -> Callable[[Any], float | int]:
    """A label cell to its class index (a name from `labels` or an integer) or regression target.

    Raises ValueError saying what is wrong with the value; the caller adds where it is.
    """
    names = {n: i for i, n in enumerate(task.labels or [])}

    def convert(value: Any) -> float | int:
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
            raise ValueError("the label is empty")
        if task.is_regression:
            try:
                target = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"label {value!r} is not a number (a regression task, num_labels: 1)") from None
            if not math.isfinite(target):
                raise ValueError(f"label {value!r} is not a finite number")
            return target
        if isinstance(value, str) and value in names:
            return names[value]
        if isinstance(value, str):
            if not value.lstrip("-").isdigit():
                hint = (f"it is not in labels {task.labels}" if task.labels else
                        "the column holds names: list them under `labels:` in class-index order")
                raise ValueError(f"label {value!r}: {hint}")
            value = int(value)
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"label {value!r} is a fraction; a classification label is a class index "
                                 f"(0..{task.num_labels - 1}) or a name from `labels` (regression: num_labels: 1)")
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"label {value!r} is neither a class index nor a label name")
        if not 0 <= value < task.num_labels:
            raise ValueError(f"label {value} is outside 0..{task.num_labels - 1} (num_labels: {task.num_labels})")
        return value

    return convert


def _rows(task: TaskSpec, split: str, ds: datasets.Dataset) -> datasets.Dataset:
    """{text_a, [text_b], label} rows with fixed column types; a bad cell names its file, row and column."""
    convert = label_converter(task)
    columns = {"text_a": task.text_fields[0]}
    if len(task.text_fields) == 2:
        columns["text_b"] = task.text_fields[1]
    features = datasets.Features({**{k: datasets.Value("string") for k in columns},
                                  "label": datasets.Value("float32" if task.is_regression else "int64")})
    row_word = "line" if _source(task, split).endswith(".jsonl") else "row"

    def rename(row: dict[str, Any], index: int) -> dict[str, Any]:
        new: dict[str, Any] = {k: None if row[v] is None else str(row[v]) for k, v in columns.items()}
        try:
            new["label"] = convert(row[task.label_field])
        except ValueError as err:
            counted = " (not counting the header)" if row_word == "row" else ""
            raise DataError(f"task {task.name!r}: {_source(task, split)}, {row_word} {index + 1}{counted}, column "
                            f"{task.label_field!r}: {err}") from None
        return new

    with _quiet():
        return ds.map(rename, with_indices=True, remove_columns=ds.column_names, features=features)


def load_splits(task: TaskSpec, splits: list[str], seed: int = 0, max_train_samples: int | None = None,
                max_eval_samples: int | None = None) -> datasets.DatasetDict:
    """Rows as {text_a, [text_b], label}, shrunk (after a seeded shuffle) when asked.

    Every row is checked (a bad label anywhere is an error naming its file, row and column),
    then the split is shrunk: the rows kept are those of a seeded shuffle of the whole split.
    """
    raw = _raw_splits(task, splits)
    out = {}
    for split in splits:
        ds = raw[split]
        _check_columns(task, split, ds)
        ds = _rows(task, split, ds)
        limit = max_train_samples if split == "train" else max_eval_samples
        if limit is not None and limit < len(ds):
            ds = ds.shuffle(seed=seed).select(range(limit))
        out[split] = ds
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

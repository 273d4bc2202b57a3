"""What `compresskit predict` reads: texts, pairs, or a file (txt / csv / jsonl), with clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from compresskit.errors import CompressKitError

Input = str | tuple[str, str]


def read_inputs(texts: tuple[str, ...], pairs: tuple[tuple[str, str], ...], file: str | None,
                columns: tuple[str, ...]) -> list[Input]:
    """Texts and pairs from the command line, then the file's rows, in order."""
    found: list[Input] = [*texts, *(tuple(p) for p in pairs)]
    if file is not None:
        found += read_file(Path(file), columns)
    if not found:
        raise CompressKitError("predict: nothing to classify; give --text, --pair or --file")
    if any(isinstance(x, tuple) for x in found) and any(isinstance(x, str) for x in found):
        raise CompressKitError("predict: mix of single texts and pairs; a model takes one or the other")
    return found


def read_file(path: Path, columns: tuple[str, ...]) -> list[Input]:
    if not path.exists():
        raise CompressKitError(f"predict: {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".txt", ""):
        # one text per line; a tab splits a pair. Blank lines are inputs too (empty text).
        lines = path.read_text(encoding="utf-8").splitlines()
        return [tuple(line.split("\t", 1)) if "\t" in line else line for line in lines]  # type: ignore[misc]
    if suffix not in (".csv", ".jsonl"):
        raise CompressKitError(f"predict: {path.name}: expected a .txt, .csv or .jsonl file")
    if not 1 <= len(columns) <= 2:
        raise CompressKitError(f"predict: {path.name} is a table: name its text column(s) with --column "
                               "(once for single texts, twice for pairs)")
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise CompressKitError(f"predict: {path.name} line {number} is not JSON: {err.msg}") from None
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise CompressKitError(f"predict: {path.name} has no column(s) {missing}; it has {sorted(rows[0])}")
    values = [[str(row.get(c) or "") for c in columns] for row in rows]
    return [v[0] if len(v) == 1 else (v[0], v[1]) for v in values]

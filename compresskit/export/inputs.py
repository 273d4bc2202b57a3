"""What `compresskit predict` reads: texts, pairs, or a file (txt / csv / jsonl), with clear errors."""

from __future__ import annotations

import csv
import io
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


def _text(path: Path) -> str:
    """The file as UTF-8 text, or an error that says what it is instead."""
    data = path.read_bytes()
    if b"\0" in data[:65536]:
        raise CompressKitError(f"predict: {path} is not a text file (it holds NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise CompressKitError(f"predict: {path}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); "
                               "save the file as UTF-8") from None


def read_file(path: Path, columns: tuple[str, ...]) -> list[Input]:
    if not path.is_file():
        raise CompressKitError(f"predict: {path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix in (".txt", ""):
        # one text per line; a tab splits a pair. Blank lines are inputs too (empty text).
        lines = _text(path).splitlines()
        return [tuple(line.split("\t", 1)) if "\t" in line else line for line in lines]  # type: ignore[misc]
    if suffix not in (".csv", ".jsonl"):
        raise CompressKitError(f"predict: {path.name}: expected a .txt, .csv or .jsonl file")
    if not 1 <= len(columns) <= 2:
        raise CompressKitError(f"predict: {path.name} is a table: name its text column(s) with --column "
                               "(once for single texts, twice for pairs)")
    text = _text(path)
    if suffix == ".csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as err:
            raise CompressKitError(f"predict: {path.name} is not a readable csv file: {err}") from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CompressKitError(f"predict: {path.name} line {number} is not JSON: {err.msg}") from None
                if not isinstance(row, dict):
                    raise CompressKitError(f"predict: {path.name} line {number} is not a JSON object")
                rows.append(row)
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise CompressKitError(f"predict: {path.name} has no column(s) {missing}; it has {sorted(rows[0])}")
    values = [[str(row.get(c) or "") for c in columns] for row in rows]
    return [v[0] if len(v) == 1 else (v[0], v[1]) for v in values]

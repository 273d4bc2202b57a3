"""Synthetic tasks the tests (and benchmarks/regression.py) learn from: csv splits whose label is
carried by keywords, so that a tiny model learns it in seconds. No side effects on import."""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path

POSITIVE = ["good", "great", "fine", "superb", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring"]
FILLER = ["the", "movie", "film", "plot", "was", "a", "very", "and", "actors", "story", "is", "quite"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + POSITIVE + NEGATIVE + FILLER


def sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
    rng.shuffle(words)
    return " ".join(words)


def _write_splits(directory: Path, sizes: dict[str, int] | None, seed: int, header: list[str],
                  row: Callable[[random.Random, int], list[str]]) -> dict[str, str]:
    """csv splits (default 96/48/48 rows) of `header` and `row(rng, i)`, one generator for all splits."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (sizes or {"train": 96, "validation": 48, "test": 48}).items():
        path = directory / f"{split}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(row(rng, i) for i in range(n))
        files[split] = str(path)
    return files


def make_task_files(directory: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, str]:
    """csv splits of a learnable sentiment task: the label is carried by one keyword."""
    return _write_splits(directory, sizes, seed, ["review", "sentiment"],
                         lambda rng, i: [sentence(rng, i % 2), "pos" if i % 2 else "neg"])


def _scored(rng: random.Random, i: int) -> list[str]:
    positive = i % 3
    words = rng.sample(FILLER, 3) + rng.sample(POSITIVE, positive) + rng.sample(NEGATIVE, 2 - positive)
    rng.shuffle(words)
    return [" ".join(words), f"{positive / 2 + rng.uniform(-0.05, 0.05):.4f}"]


def make_regression_files(directory: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, str]:
    """csv splits of a learnable regression: the score is the share of positive keywords (0, 0.5, 1),
    with a little noise."""
    return _write_splits(directory, sizes, seed, ["review", "score"], _scored)


def make_pair_files(directory: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, str]:
    """csv splits of a learnable three-class sentence-pair task: how many of the two sentences are positive."""
    def pair(rng: random.Random, i: int) -> list[str]:
        a, b = i % 2, (i // 2) % 2
        return [sentence(rng, a), sentence(rng, b), ["none", "one", "both"][a + b]]

    return _write_splits(directory, sizes, seed, ["first", "second", "verdict"], pair)


def task_spec(files: dict[str, str]) -> dict:
    return {"name": "tiny_sentiment", "source": "files", "data_files": files, "text_fields": ["review"],
            "label_field": "sentiment", "num_labels": 2, "labels": ["neg", "pos"]}

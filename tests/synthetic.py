"""Synthetic tasks the tests (and benchmarks/regression.py) learn from: csv splits whose label is
carried by keywords, so that a tiny model learns it in seconds. No side effects on import."""

from __future__ import annotations

import csv
import random
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


def make_task_files(directory: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, str]:
    """csv splits of a learnable sentiment task: the label is carried by one keyword."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (sizes or {"train": 96, "validation": 48, "test": 48}).items():
        path = directory / f"{split}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["review", "sentiment"])
            for i in range(n):
                label = i % 2
                writer.writerow([sentence(rng, label), "pos" if label else "neg"])
        files[split] = str(path)
    return files


def make_regression_files(directory: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, str]:
    """csv splits of a learnable regression: the score is the share of positive keywords (0, 0.5, 1),
    with a little noise."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (sizes or {"train": 96, "validation": 48, "test": 48}).items():
        path = directory / f"{split}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["review", "score"])
            for i in range(n):
                positive = i % 3
                words = rng.sample(FILLER, 3) + rng.sample(POSITIVE, positive) + rng.sample(NEGATIVE, 2 - positive)
                rng.shuffle(words)
                writer.writerow([" ".join(words), f"{positive / 2 + rng.uniform(-0.05, 0.05):.4f}"])
        files[split] = str(path)
    return files


def make_pair_files(directory: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, str]:
    """csv splits of a learnable three-class sentence-pair task: how many of the two sentences are positive."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (sizes or {"train": 96, "validation": 48, "test": 48}).items():
        path = directory / f"{split}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["first", "second", "verdict"])
            for i in range(n):
                a, b = i % 2, (i // 2) % 2
                writer.writerow([sentence(rng, a), sentence(rng, b), ["none", "one", "both"][a + b]])
        files[split] = str(path)
    return files


def task_spec(files: dict[str, str]) -> dict:
    return {"name": "tiny_sentiment", "source": "files", "data_files": files, "text_fields": ["review"],
            "label_field": "sentiment", "num_labels": 2, "labels": ["neg", "pos"]}

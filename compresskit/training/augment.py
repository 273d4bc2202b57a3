"""TinyBERT-style data augmentation for task-specific distillation on small tasks.

TinyBERT (Jiao et al., 2020, Algorithm 1) adds N_a copies of every training sentence in which
each word is replaced, with probability p_t, by one of its K nearest candidates: a BERT masked
LM's predictions for single-piece words, GloVe neighbours for the others. The teacher then
labels the copies, so a replacement that changes the meaning changes the target with it.

The packaged encoders ship neither an MLM head nor GloVe, so the candidates here are the K
nearest whole-word tokens by cosine similarity of a model's input word embeddings (for
MiniLM-L6: "terrific" -> "fantastic", "excellent", "great", ...); words the tokenizer splits into several
pieces are kept as they are.
"""

from __future__ import annotations

import random
import re
from typing import Any

import datasets
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

_WORD = re.compile(r"^(\W*)(\w+)(\W*)$")  # leading punctuation, the word, trailing punctuation


class WordNeighbours:
    """The K nearest whole-word vocabulary tokens of a word, by cosine of the input embeddings."""

    def __init__(self, tokenizer: Any, embeddings: torch.Tensor, k: int):
        vocab = tokenizer.get_vocab()
        # whole words only: no '##' continuations, no special or punctuation tokens, no 1-letter ones
        self.words = sorted((t for t, i in vocab.items() if t.isalpha() and len(t) > 1 and i < len(embeddings)),
                            key=vocab.__getitem__)
        self.index = {w: n for n, w in enumerate(self.words)}
        ids = torch.tensor([vocab[w] for w in self.words])
        self.vectors = F.normalize(embeddings.detach().float()[ids], dim=-1)
        self.lower = bool(getattr(tokenizer, "do_lower_case", False))
        self.k = k
        self._cache: dict[str, list[str]] = {}

    def lookup(self, word: str) -> str | None:
        """The vocabulary form of `word`, or None when the tokenizer would split it."""
        key = word.lower() if self.lower else word
        return key if key in self.index else None

    def prepare(self, words: set[str], chunk: int = 1024) -> None:
        """Compute the neighbours of many words at once (one matrix product per chunk)."""
        todo = [w for w in words if w not in self._cache]
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            sims = self.vectors[[self.index[w] for w in part]] @ self.vectors.T
            top = sims.topk(self.k + 1, dim=-1).indices.tolist()  # +1: a word is its own nearest
            for w, row in zip(part, top, strict=True):
                self._cache[w] = [self.words[j] for j in row if self.words[j] != w][:self.k]

    def __call__(self, word: str) -> list[str]:
        if word not in self._cache:
            self.prepare({word})
        return self._cache[word]


def augment_dataset(raw: datasets.Dataset, neighbours: WordNeighbours, copies: int, replace_prob: float,
                    seed: int) -> datasets.Dataset:
    """`raw` followed by `copies` altered copies of each of its rows ({text_a, [text_b], label})."""
    columns = [c for c in ("text_a", "text_b") if c in raw.column_names]
    vocab_words = {neighbours.lookup(m.group(2)) for c in columns for text in raw[c] if text
                   for token in text.split() if (m := _WORD.match(token))}
    neighbours.prepare({w for w in vocab_words if w is not None})
    rng = random.Random(seed)
    rows: dict[str, list] = {c: [] for c in raw.column_names}
    for row in tqdm(raw, desc="augment", total=len(raw)):
        for _ in range(copies):
            for c in raw.column_names:
                rows[c].append(_alter(row[c], neighbours, replace_prob, rng) if c in columns else row[c])
    return datasets.concatenate_datasets([raw, datasets.Dataset.from_dict(rows, features=raw.features)])


def _alter(text: str | None, neighbours: WordNeighbours, replace_prob: float, rng: random.Random) -> str | None:
    if not text:
        return text
    out = []
    for token in text.split():
        m = _WORD.match(token)
        word = neighbours.lookup(m.group(2)) if m else None
        if word is not None and rng.random() < replace_prob and (candidates := neighbours(word)):
            token = m.group(1) + rng.choice(candidates) + m.group(3)
        out.append(token)
    return " ".join(out)

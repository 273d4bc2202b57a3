"""Batching: length-grouped training batches (`data.group_by_length`) and evaluation read in length
order, results in the dataset's order."""

from __future__ import annotations

import random

import datasets
import numpy as np
import torch

from compresskit.data.batches import LengthGroupedBatches, length_grouping, loader
from compresskit.evaluation.evaluate import predict
from tests.conftest import make_tokenizer
from tests.test_modeling import compressed


def rows(n: int, seed: int = 0) -> datasets.Dataset:
    rng = random.Random(seed)
    ids = [[1, *(rng.randrange(5, 27) for _ in range(rng.randrange(1, 60))), 2] for _ in range(n)]  # tiny vocabulary
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                                       "labels": [i % 2 for i in range(n)]})


def padded_share(batches: list[list[int]], lengths: list[int]) -> float:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches) / sum(lengths)


def test_grouped_batches_cover_every_row_once_per_epoch_with_little_padding():
    lengths = [len(x) for x in rows(1000)["input_ids"]]
    sampler = LengthGroupedBatches(lengths, 16, torch.Generator().manual_seed(0), span=20)
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        assert sorted(i for b in epoch for i in b) == list(range(1000)) and len(epoch) == len(sampler) == 63
    assert first != second  # a new order every epoch
    again = list(LengthGroupedBatches(lengths, 16, torch.Generator().manual_seed(0), span=20))
    assert again == first  # reproducible from the seed
    shuffled = [list(range(i, min(i + 16, 1000))) for i in range(0, 1000, 16)]
    assert padded_share(first, lengths) < 1.1 < 1.5 < padded_share(shuffled, lengths)


def test_only_shuffled_loaders_inside_length_grouping_are_grouped(tmp_path):
    data, tokenizer = rows(64), make_tokenizer(tmp_path)
    with length_grouping(True):
        grouped = loader(data, tokenizer, 8, shuffle=True, seed=1)
        in_order = loader(data, tokenizer, 8)  # evaluation loaders keep the order they are given
    assert isinstance(grouped.batch_sampler, LengthGroupedBatches)
    assert not isinstance(in_order.batch_sampler, LengthGroupedBatches)
    assert not isinstance(loader(data, tokenizer, 8, shuffle=True).batch_sampler, LengthGroupedBatches)


def test_predictions_come_back_in_the_dataset_order(tmp_path):
    model, data, tokenizer = compressed("bert").eval(), rows(40, seed=3), make_tokenizer(tmp_path)
    out = predict(model, data, tokenizer, batch_size=8)
    for i in (0, 17, 39):  # each row alone: no padding, no batch
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([data[i]["input_ids"]])).logits[0].numpy()
        np.testing.assert_allclose(out["logits"][i], alone, atol=1e-5)
    np.testing.assert_array_equal(out["labels"], np.array(data["labels"]))

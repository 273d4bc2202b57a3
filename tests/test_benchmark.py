"""`compresskit benchmark`: how models share the machine while they are timed."""

import numpy as np
from transformers import AutoTokenizer

import compresskit.benchmark as bench


def test_models_take_turns_of_consecutive_batches_each_opened_by_an_untimed_call(monkeypatch, tiny_task,
                                                                                 tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    calls: list[tuple[str, bytes]] = []

    def fake_runner(spec, threads):
        def run(enc):
            calls.append((spec, enc["input_ids"].tobytes()))
            return np.ones(len(enc["input_ids"]))
        return run, tokenizer, "pytorch", lambda enc: None

    monkeypatch.setattr(bench, "load_runner", fake_runner)
    result = bench.benchmark(["big", "small"], task=tiny_task, split="test", examples=8, batch_sizes=(1,),
                             repeats=1, warmup=1, turn_examples=4)
    assert result["turn_examples"] == 4
    timed = calls[2:]  # after one warm-up batch each
    # turns of 4 timed batches, each opened by an untimed call of its first batch: 2 turns per model
    assert [spec for spec, _ in timed] == (["big"] * 5 + ["small"] * 5) * 2
    for start in range(0, len(timed), 5):
        assert timed[start][1] == timed[start + 1][1]  # the turn's first batch, run once untimed
    # every example is timed once per model, in order, whatever the turns
    for spec in ("big", "small"):
        inputs = [enc for s, enc in timed if s == spec]
        assert len(inputs) == 10 and len(set(inputs[1:5]) | set(inputs[6:10])) == 8
    assert all(row["avg_layers"] == 1.0 for row in result["rows"])

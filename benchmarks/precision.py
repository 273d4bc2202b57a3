"""Issue-20 result (docs/benchmarks.md, "Training precision"): training steps per second in bf16
against fp32 through compresskit's own training loop (`train()` under `precision`), on the
packaged MiniLM-L6 and MPNet-12, batch 32, 40 tokens per row, both settings interleaved in one
process (the ratio is within one run: these machines are shared and noisy).

    python benchmarks/precision.py [--threads 1] [--steps 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import random

import datasets
import torch

from compresskit.data.tasks import KNOWN_TASKS
from compresskit.modeling.loading import load_model
from compresskit.training import precision
from compresskit.training.trainer import TrainingConfig, train

WORDS = "the film was a quite good very bad story and actors plot dull superb lovely boring".split()


def rows(tokenizer, n: int, length: int, seed: int = 0) -> datasets.Dataset:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(length * 2)) for _ in range(n)]
    enc = tokenizer(texts, truncation=True, max_length=length, padding="max_length")
    return datasets.Dataset.from_dict({**enc, "labels": [i % 2 for i in range(n)]})


def steps_per_second(model_name: str, kind: str, steps: int, length: int) -> float:
    task = KNOWN_TASKS["rotten_tomatoes"]
    model, tokenizer = load_model(model_name, task, seed=0)
    data = rows(tokenizer, 32 * (steps + 1), length)
    settings = TrainingConfig(epochs=1, batch_size=32, learning_rate=2e-5, keep_best=False)
    with precision.training_precision(kind):
        # one step of warm-up is inside: a second epoch-sized pass would double the time
        result = train(model, data, None, task, tokenizer, settings, seed=0, desc=f"{model_name} {kind}")
    return (steps + 1) / result.seconds_per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--models", nargs="+", default=["minilm-l6", "mpnet-12"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = {}
    for name in args.models:
        measured = {"fp32": [], "bf16": []}
        for _ in range(args.rounds):
            for kind in ("fp32", "bf16"):
                measured[kind].append(steps_per_second(name, kind, args.steps, args.length))
        best = {k: max(v) for k, v in measured.items()}
        table[name] = {"steps_per_second": measured, "speedup": best["bf16"] / best["fp32"]}
        print(f"{name}: fp32 {best['fp32']:.3f} steps/s, bf16 {best['bf16']:.3f} steps/s, "
              f"bf16/fp32 {table[name]['speedup']:.2f}x", flush=True)
    print(json.dumps({"threads": args.threads, "batch": 32, "length": args.length,
                      "native_bf16": precision.native_bf16(torch.device("cpu")), "models": table}, indent=2))


if __name__ == "__main__":
    main()

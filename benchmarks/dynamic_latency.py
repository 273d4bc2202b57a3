"""PyTorch latency of a dynamic-depth model: routed inference vs the same model running every layer.

    python benchmarks/dynamic_latency.py runs/X/stages/01-skip/model --task rotten_tomatoes \
        --batch-sizes 1,32 --examples 256

Both modes run on the same batches, interleaved, in one process; the ratio is what counts (the
machine is shared). Prints a table and writes JSON next to --output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from compresskit.data.batches import loader, model_inputs
from compresskit.data.loading import load_splits, resolve_task, tokenize
from compresskit.modeling.loading import load_model


def measure(model, batches, dynamic: bool) -> list[float]:
    times = []
    with torch.no_grad():
        for batch in batches:
            started = time.perf_counter()
            model(**batch, dynamic=dynamic)
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    task = resolve_task(args.task)
    model, tokenizer = load_model(args.model, task)
    model.eval()
    data = tokenize(load_splits(task, [args.split], max_eval_samples=args.examples), tokenizer, args.max_length)
    results = {"model": args.model, "threads": torch.get_num_threads(), "examples": args.examples, "rows": []}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        batches = [model_inputs(b) for b in loader(data[args.split], tokenizer,
                                                                                     batch_size)]
        measure(model, batches[:3], True), measure(model, batches[:3], False)  # warm-up
        routed, full, layers = [], [], []
        for _ in range(args.repeats):  # interleaved, so both modes see the same machine load
            routed += measure(model, batches, True)
            full += measure(model, batches, False)
        with torch.no_grad():
            for batch in batches:
                layers.append(model(**batch).layers_executed.mean().item())
        avg_layers = statistics.fmean(layers)
        row = {
            "batch_size": batch_size,
            "routed_median_ms": 1e3 * statistics.median(routed),
            "full_median_ms": 1e3 * statistics.median(full),
            "speedup": sum(full) / sum(routed),
            "avg_layers": avg_layers,
            "ideal_speedup": model.num_layers / avg_layers,
        }
        row["share_of_ideal"] = row["speedup"] / row["ideal_speedup"]
        results["rows"].append(row)
    print(f"threads: {results['threads']}")
    print("| batch | routed ms | all-layers ms | speed-up | avg layers | ideal (L/avg) | share of ideal |")
    print("|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(f"| {r['batch_size']} | {r['routed_median_ms']:.1f} | {r['full_median_ms']:.1f} | {r['speedup']:.2f}x "
              f"| {r['avg_layers']:.2f} | {r['ideal_speedup']:.2f}x | {r['share_of_ideal']:.2f} |")
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()

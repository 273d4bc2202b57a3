"""Dynamic against static INT8 on ONNX Runtime for one static model (issue 20): accuracy and speed.

    python benchmarks/int8.py MODEL_DIR [--out runs/int8] [--task rotten_tomatoes] [--rows 256]

Exports MODEL_DIR twice (dynamic INT8; static QDQ INT8 calibrated on --rows training rows), compares
both INT8 graphs and the fp32 one with PyTorch over the whole test split, then times fp32, dynamic
and static INT8 side by side at batch 1 and 32 (`compresskit benchmark`). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compresskit.benchmark import benchmark
from compresskit.data.loading import load_splits, resolve_task, tokenize
from compresskit.export import OnnxClassifier, export_model
from compresskit.modeling.loading import load_model
from compresskit.strategies.export import compare


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--out", default="runs/int8")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--rows", type=int, default=256)
    args = parser.parse_args()
    out, task = Path(args.out), resolve_task(args.task)
    model, tokenizer = load_model(args.model)
    splits = load_splits(task, ["train", "test"], seed=0, max_train_samples=args.rows)
    fields = [f for f in ("text_a", "text_b") if f in splits["train"].column_names]
    rows = [[r[f] for f in fields] for r in splits["train"]]
    for name, scheme in (("dynamic", "int8"), ("static", "int8-static")):
        if not (out / name).exists():
            export_model(model, tokenizer, out / name, quantize=scheme, calibration=rows if name == "static" else None)
    test = tokenize(splits, tokenizer, 64)["test"]
    accuracy = {"fp32": compare(model, OnnxClassifier(out / "dynamic"), test, tokenizer, atol=None,
                                one_at_a_time=False)}
    for name in ("dynamic", "static"):
        accuracy[name] = compare(model, OnnxClassifier(out / name, quantized=True), test, tokenizer, atol=None,
                                 one_at_a_time=False)
    speed = benchmark([str(out / "dynamic"), f"{out / 'dynamic'}:int8", f"{out / 'static'}:int8"], task=args.task)
    (out / "int8.json").write_text(json.dumps({"accuracy": accuracy, "speed": speed}, indent=2, default=float))
    print("| graphs | test accuracy | same predictions as PyTorch | b1 ms | b1 speed-up | b32 ms | b32 speed-up |")
    print("|---|---|---|---|---|---|---|")
    for (name, acc), path in zip(accuracy.items(), speed["rows"][:3], strict=True):
        by_batch = {r["batch_size"]: r for r in speed["rows"] if r["model"] == path["model"]}
        print(f"| {name} | {acc['onnx_accuracy']:.4f} | {acc['prediction_agreement']:.2%} "
              f"| {by_batch[1]['median_ms']:.2f} | {by_batch[1]['speedup_vs_first']:.2f}x "
              f"| {by_batch[32]['median_ms']:.2f} | {by_batch[32]['speedup_vs_first']:.2f}x |")


if __name__ == "__main__":
    main()

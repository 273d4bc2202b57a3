"""Export every strategy's model to ONNX and compare it with PyTorch over a whole split (issue 6).

    python benchmarks/export_check.py NAME=MODEL_DIR ... [--exports runs/exports] [--int8] [--output FILE.json]

Each model is exported to EXPORTS/NAME (kept if it is already there), then ONNX Runtime and
PyTorch classify the whole split: the largest absolute logit difference, the share of identical
predictions and both accuracies go to a Markdown table (stdout) and to --output as JSON. With
--int8 the exports also get INT8 graphs (ORTQuantizer) and the table their accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from compresskit.data.loading import load_splits, resolve_task, tokenize
from compresskit.errors import CompressKitError
from compresskit.export import OnnxClassifier, export_model
from compresskit.export.onnx_export import DYNAMIC_FORMAT
from compresskit.modeling.loading import load_model
from compresskit.strategies.export import compare

SOURCE = "exported_from.txt"  # beside the export: which model (and which save of it) it was made from


def source_stamp(directory: Path) -> str:
    weights = max(directory.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, default=directory)
    return f"{directory.resolve()} {weights.stat().st_mtime_ns}"


def existing_export(target: Path, directory: Path) -> OnnxClassifier | None:
    """The export of `directory` at `target`; None when the model was saved anew since, or the
    export predates the current format (export again)."""
    if not (target / SOURCE).exists() or (target / SOURCE).read_text() != source_stamp(directory):
        return None
    try:
        runtime = OnnxClassifier(target)
    except CompressKitError:
        return None
    old = runtime.manifest["kind"] == "dynamic" and runtime.manifest["format"] < DYNAMIC_FORMAT
    return None if old else runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="+", help="NAME=MODEL_DIR")
    parser.add_argument("--exports", type=Path, default=Path("runs/exports"))
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--int8", action="store_true", help="also write and score INT8 graphs")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    pairs = [spec.split("=", 1) for spec in args.models]
    if bad := [spec for spec, pair in zip(args.models, pairs, strict=True) if len(pair) != 2]:
        parser.error(f"give NAME=MODEL_DIR, got {bad}")
    task = resolve_task(args.task)
    raw = load_splits(task, [args.split])
    rows = []
    for name, directory in tqdm(pairs, desc="export + compare"):
        model, tokenizer = load_model(directory, task)
        target = args.exports / name
        runtime = existing_export(target, Path(directory))
        if runtime is None:
            export_model(model, tokenizer, target, quantize="int8" if args.int8 else None, overwrite=True)
            (target / SOURCE).write_text(source_stamp(Path(directory)))
            runtime = OnnxClassifier(target)
        data = tokenize(raw, tokenizer, args.max_length)[args.split]
        result = compare(model, runtime, data, tokenizer, atol=1e-4)
        if args.int8:
            result["int8_accuracy"] = compare(model, OnnxClassifier(target, quantized=True), data,
                                              tokenizer, atol=None, one_at_a_time=False)["onnx_accuracy"]
        rows.append({"name": name, "model": directory, "dynamic": model.is_dynamic, **result})
    print(f"ONNX Runtime vs PyTorch on {args.task}/{args.split} (max length {args.max_length})\n")
    print("Batched (64 per call); dynamic exports also one example at a time (the one-call graph).\n")
    print("Logit differences are on the export's own routes; 'near-tie flips' count examples routed differently "
          "at a decision within 1e-4 of its threshold.\n")
    print("| model | kind | examples | max abs logit diff | near-tie flips | identical predictions | one at a time: "
          "diff | identical | ONNX acc | PyTorch acc | INT8 acc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        int8 = f"{r['int8_accuracy']:.4f}" if "int8_accuracy" in r else "-"
        alone = r.get("one_at_a_time")
        alone = f"{alone['max_abs_diff']:.1e} | {alone['prediction_agreement']:.2%}" if alone else "- | -"
        print(f"| {r['name']} | {'dynamic' if r['dynamic'] else 'static'} | {r['examples']} | {r['max_abs_diff']:.1e} "
              f"| {r['flipped']} | {r['prediction_agreement']:.2%} | {alone} | {r['onnx_accuracy']:.4f} "
              f"| {r['pytorch_accuracy']:.4f} | {int8} |")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

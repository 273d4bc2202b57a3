"""Issue-20 result (docs/benchmarks.md, "Serving on OpenVINO"): the same exports served by ONNX
Runtime fp32 / INT8 (dynamic) and OpenVINO fp32 / bf16, batch 1 and 32, in one `benchmark` run
(models take turns batch by batch), and OpenVINO bf16's agreement with PyTorch on the test split.

    python benchmarks/serving.py [--out runs/openvino]   # ~15 min on 2 cores

Models: a MiniLM-L6 fine-tuned here (1 epoch, bf16 where native), the packaged MPNet-12 (random
head: speed only), and the HadSkip / PABEE exports of benchmarks/regression.py if present.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import compresskit
from compresskit.benchmark import benchmark, markdown
from compresskit.data.loading import load_splits, resolve_task
from compresskit.export import OnnxClassifier, export_model
from compresskit.modeling.loading import load_model

VARIANTS = ["", ":int8", ":openvino", ":openvino-bf16"]


def agreement_on_test(model_dir: Path, export_dir: Path) -> dict:
    """PyTorch fp32 against OpenVINO bf16 (and ONNX Runtime fp32) over the whole test split."""
    task = resolve_task("rotten_tomatoes")
    test = load_splits(task, ["test"])["test"]
    texts, labels = list(test["text_a"]), np.asarray(test["label"])
    import torch

    model, tokenizer = load_model(str(model_dir))
    model.eval()
    reference = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            enc = tokenizer(texts[i:i + 32], truncation=True, max_length=64, padding=True, return_tensors="pt")
            reference.append(model(**enc).logits.numpy())
    reference = np.concatenate(reference)
    out = {"examples": len(texts), "pytorch_accuracy": float((reference.argmax(1) == labels).mean())}
    for name, kwargs in {"onnxruntime-fp32": {}, "openvino-bf16": {"runtime": "openvino", "precision": "bf16"}}.items():
        runtime = OnnxClassifier(export_dir, **kwargs)
        logits = []
        for i in range(0, len(texts), 32):
            enc = runtime.tokenizer(texts[i:i + 32], truncation=True, max_length=64, padding=True, return_tensors="np")
            logits.append(runtime.forward(dict(enc)).logits)
        logits = np.concatenate(logits)
        out[name] = {"accuracy": float((logits.argmax(1) == labels).mean()),
                     "identical_predictions": float((logits.argmax(1) == reference.argmax(1)).mean()),
                     "max_abs_logit_diff": float(np.abs(logits - reference).max())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/openvino")
    parser.add_argument("--examples", type=int, default=256)
    out = Path(parser.parse_args().out)
    finetuned = compresskit.apply("recipes/finetune_rotten_tomatoes.yaml", output_dir=out / "minilm-l6-1ep",
                                  overrides={"stages.finetuned.epochs": 1, "precision": "auto"})
    exports = {}
    for name, model_dir in {"minilm-l6": finetuned.final_model_dir,
                            "mpnet-12": None}.items():
        target = out / f"{name}-onnx"
        if not (target / "compresskit_export.json").exists():
            model, tokenizer = load_model(str(model_dir) if model_dir else name)
            export_model(model, tokenizer, target, quantize="int8")
        exports[name] = target
    for name in ("hadskip", "pabee"):
        target = out.parent / "regression" / name / "stages" / "02-onnx" / "onnx"  # benchmarks/regression.py's
        if (target / "compresskit_export.json").exists():
            export_model(*load_model(str(target.parent.parent / "01-skip" / "model")), out / f"{name}-onnx",
                         quantize="int8", overwrite=True)
            exports[f"{name} (regression, dynamic)"] = out / f"{name}-onnx"
    results = {}
    for name, target in exports.items():
        result = benchmark([f"{target}{v}" for v in VARIANTS], task="rotten_tomatoes", split="test",
                           examples=parser.parse_args().examples, batch_sizes=(1, 32), repeats=2)
        results[name] = result
        print(f"## {name}\n\n{markdown(result)}\n", flush=True)
    results["agreement_minilm_l6"] = agreement_on_test(finetuned.final_model_dir, exports["minilm-l6"])
    print(json.dumps(results["agreement_minilm_l6"], indent=2))
    (out / "summary.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

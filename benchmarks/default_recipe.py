"""Issue-21 result (docs/benchmarks.md, "The default recipe"): the default recipe's export against its
teacher exported to ONNX Runtime fp32, in one `compresskit benchmark` run, plus test accuracy and
agreement of every runtime the export is served on.

    compresskit apply recipes/tinybert_hadskip.yaml                      # the main job
    python benchmarks/default_recipe.py runs/tinybert_hadskip [--out docs/results/default_recipe]

Exports the teacher stage's model (fp32, into RUN/exports/teacher) and the final model with static
INT8 (into RUN/exports/final-int8-static, calibrated on 256 training rows) unless they are there,
then times the teacher's export, the final export on ONNX Runtime fp32, INT8 (dynamic, static) and
on OpenVINO fp32, bf16 and INT8 (the static graphs), taking turns (32 examples a turn) at batch 1 and 32
(256 test texts; one run per --threads), and compares each runtime of the final export with the
PyTorch model over the whole test split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from compresskit.benchmark import benchmark, markdown
from compresskit.data.loading import load_splits, resolve_task, tokenize
from compresskit.export import OnnxClassifier, export_model
from compresskit.modeling.loading import load_model
from compresskit.strategies.export import compare

VARIANTS = {"": {}, ":int8": {"quantized": True}, ":openvino": {"runtime": "openvino"},
            ":openvino-bf16": {"runtime": "openvino", "precision": "bf16"}}
STATIC_VARIANTS = {":int8": {"quantized": True}, ":openvino-int8": {"runtime": "openvino", "quantized": True}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--out", default="docs/results/default_recipe")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="one benchmark run per thread count")
    args = parser.parse_args()
    run, out = Path(args.run_dir), Path(args.out)
    stages = {json.loads(p.read_text())["name"]: p.parent for p in sorted((run / "stages").glob("*/stage.json"))}
    teacher = run / "exports" / "teacher"
    if not teacher.exists():
        model, tokenizer = load_model(str(stages["teacher"] / "model"))
        export_model(model, tokenizer, teacher)
    final = next(p for p in (run / "stages").glob("*/onnx") if (p / "compresskit_export.json").exists())
    model, tokenizer = load_model(str(final.parent / "model"))
    task = resolve_task("rotten_tomatoes")
    static = run / "exports" / "final-int8-static"
    if not static.exists():
        train = load_splits(task, ["train"])["train"].shuffle(seed=0).select(range(256))
        export_model(model, tokenizer, static, quantize="int8-static", calibration=[[t] for t in train["text_a"]])
    rows = {f"{final}{v}": (final, settings) for v, settings in VARIANTS.items()}
    rows |= {f"{static}{v}": (static, settings) for v, settings in STATIC_VARIANTS.items()}
    speed = {n: benchmark([str(teacher), *rows], task="rotten_tomatoes", threads=n) for n in args.threads}

    test = tokenize(load_splits(task, ["test"]), tokenizer, 64)["test"]
    served = {name.removeprefix(str(run) + "/"): compare(model, OnnxClassifier(directory, **settings), test,
                                                         tokenizer, atol=None, one_at_a_time=False)
              for name, (directory, settings) in rows.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "vs_teacher.json").write_text(json.dumps({"speed": speed, "test": served}, indent=1))
    for result in speed.values():
        print(markdown(result), "\n")
    print("| runtime | test accuracy | same predictions as PyTorch | max logit diff |\n|---|---|---|---|")
    for name, r in served.items():
        print(f"| {name} | {r['onnx_accuracy']:.4f} | {100 * r['prediction_agreement']:.2f}% "
              f"| {r['max_abs_diff']:.2g} |")


if __name__ == "__main__":
    main()

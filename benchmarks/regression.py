"""Issue-19 result (docs/benchmarks.md, "Any task"): a regression through finetune -> hadskip -> export
and finetune -> pabee -> export on the packaged MiniLM-L6, with data the tests make (the score is the
share of positive keywords, tests/conftest.py `make_regression_files`).

    python benchmarks/regression.py [--out runs/regression]   # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from tests.synthetic import make_regression_files

SIZES = {"train": 1200, "validation": 300, "test": 300}
STAGES = {
    "hadskip": {"strategy": "hadskip", "name": "skip", "budget": 3, "beta": 30, "gate_epochs": 0.5,
                "homotopic": False, "epochs_per_budget": 1},
    "pabee": {"strategy": "pabee", "name": "skip", "epochs": 2, "learning_rate": 5e-5,
              "calibration": {"max_accuracy_drop": 0.01}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/regression")
    out = Path(parser.parse_args().out)
    files = make_regression_files(out / "data", SIZES)
    task = {"name": "keyword_share", "source": "files", "data_files": files, "text_fields": ["review"],
            "label_field": "score", "num_labels": 1, "metrics": ["pearson", "spearman"]}
    rows = []
    for name, stage in STAGES.items():
        recipe = {"version": 1, "name": f"regression_{name}", "seed": 42, "model": "minilm-l6", "task": task,
                  "data": {"max_length": 32}, "baseline": "teacher",
                  "evaluation": {"split": "validation", "final_splits": ["test"]},
                  "stages": [{"strategy": "finetune", "name": "teacher", "epochs": 2, "learning_rate": 1e-4},
                             stage, {"strategy": "export", "name": "onnx"}]}
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        report = Pipeline(load_recipe(path), out / name).run()
        teacher, final = report["baseline"], report["final"]
        check = report["stages"][2]["info"]["validation"]
        rows.append({"strategy": name, "teacher_test": teacher["test"], "final_test": final["test"],
                     "final_validation": final["validation"], "export": check})
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    print("| pipeline | teacher test Pearson / Spearman | final test Pearson / Spearman | avg layers (test) "
          "| export: max abs diff, mismatched routes, one at a time |")
    print("|---|---|---|---|---|")
    for r in rows:
        t, f, e = r["teacher_test"], r["final_test"], r["export"]
        print(f"| finetune -> {r['strategy']} -> export | {t['pearson']:.4f} / {t['spearman']:.4f} "
              f"| {f['pearson']:.4f} / {f['spearman']:.4f} | {f['avg_layers']:.2f} of 6 "
              f"| {e['max_abs_diff']:.1e}, {e['mismatched']}, {e['one_at_a_time']['mismatched']} |")


if __name__ == "__main__":
    main()

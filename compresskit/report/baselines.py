"""The trivial routes a user would take instead of the recipe, trained and measured beside its result.

`report: {baselines: [first_k, smaller_model]}` in a recipe:
- `first_k`: the first k layers of the model the first dynamic stage received (the whole
  baseline's when no stage is dynamic), k = the final model's average depth on the evaluation
  split, rounded — the "just truncate it" route at the same depth;
- `smaller_model`: a smaller pretrained encoder (`smaller_model`, the packaged MiniLM-L3 by
  default) fine-tuned on the task.
Each is fine-tuned on the training rows the stages saw (a goal's held-out rows excluded), profiled
like the stages (every split, counted FLOPs) and kept in `baselines/NAME/` of the run directory,
written whole and reused while its inputs are unchanged. The speed of baseline, final model and
trivial routes is measured side by side when the report is written (PyTorch, `speed_batch_size`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from accelerate import PartialState
from accelerate.utils import set_seed
from pydantic import Field

from compresskit.files import write_json
from compresskit.goal import side_by_side
from compresskit.modeling.loading import load_model
from compresskit.modeling.surgery import select_layers
from compresskit.rundir import fingerprint, input_digest
from compresskit.stage import PipelineState
from compresskit.training.trainer import TrainingConfig, train

log = logging.getLogger(__name__)
Baseline = Literal["first_k", "smaller_model"]


class ReportConfig(TrainingConfig):
    """The recipe's `report:` block: trivial routes to train beside the result (their training settings)."""

    baselines: list[Baseline] = Field(default_factory=list, description="trivial routes trained and "
                                      "measured beside the result: first_k, smaller_model")
    smaller_model: str = Field("minilm-l3", description="the encoder of the smaller_model route")
    epochs: float = Field(2.0, gt=0, description="fine-tuning epochs of each route")
    max_train_samples: int | None = Field(None, ge=1, description="training rows of each route (default: all)")
    speed_batch_size: int = Field(1, ge=1, le=1024, description="batch size at which speed is measured")
    timing_examples: int = Field(64, ge=1, description="evaluation examples timed per model")


def train_baselines(cfg: ReportConfig, run_dir: Path, key: str, depth: int, source: str,
                    source_state: Callable[[], PipelineState], raw: Any, seed: int, eval_split: str,
                    profile: Callable[[PipelineState], dict[str, Any]]) -> list[dict[str, Any]]:
    """Each trivial route's profile, trained now or reused from `baselines/NAME/` (its `model` there);
    `source` names the stage (or 'input') whose model `source_state()` loads for first_k."""
    out = []
    for kind in cfg.baselines:
        what = {"first_k": f"first {depth} layers of {source!r}, fine-tuned",
                "smaller_model": f"{cfg.smaller_model}, fine-tuned"}[kind]
        reads = input_digest(cfg.smaller_model) if kind == "smaller_model" else depth
        stamp = fingerprint(key, kind, cfg.model_dump(mode="json"), reads)
        directory = run_dir / "baselines" / kind
        saved = directory / "result.json"
        if saved.exists() and json.loads(saved.read_text()).get("fingerprint") == stamp:
            out.append({**json.loads(saved.read_text()), "directory": str(directory / "model")})
            continue
        log.info("baseline %s: %s", kind, what)
        base = source_state()
        set_seed(seed)
        if kind == "first_k":
            model, tokenizer = select_layers(base.model, list(range(min(depth, base.model.num_layers)))), base.tokenizer
        else:
            model, tokenizer = load_model(cfg.smaller_model, base.task, seed=seed)
        model.to(base.model.device)
        rows = raw["train"]
        if cfg.max_train_samples is not None and cfg.max_train_samples < len(rows):
            rows = rows.shuffle(seed=seed).select(range(cfg.max_train_samples))
        state = PipelineState(model=model, tokenizer=tokenizer, task=base.task, raw=type(raw)({**raw, "train": rows}),
                              max_length=base.max_length)
        train(model, state.data["train"], state.data[eval_split], state.task, tokenizer, TrainingConfig.of(cfg), seed,
              desc=f"baseline {kind}")
        result = {"name": kind, "description": what, "fingerprint": stamp, **profile(state)}
        if PartialState().is_main_process:  # every process trained it (DDP); one writes it
            _write_whole(directory, state, result)
        PartialState().wait_for_everyone()
        out.append({**result, "directory": str(directory / "model")})
    return out


def _write_whole(directory: Path, state: PipelineState, result: dict[str, Any]) -> None:
    tmp = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    state.model.save_pretrained(tmp / "model")
    state.tokenizer.save_pretrained(tmp / "model")
    write_json(tmp / "result.json", result)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def compare_routes(cfg: ReportConfig, report: dict[str, Any], routes: list[dict[str, Any]],
                   loaders: dict[str, Callable[[], PipelineState]], split: str) -> dict[str, Any]:
    """Baseline, result and trivial routes (loaded by `loaders[name]`), timed here taking turns pass by pass."""
    states = {name: load() for name, load in loaders.items()}
    ms = dict(zip(states, side_by_side([(st.model, st.data[split], st.tokenizer) for st in states.values()],
                                       cfg.speed_batch_size, cfg.timing_examples, 3), strict=True))
    models = [{"name": "baseline", "description": f"the baseline ({report['baseline']['stage']})",
               **report["baseline"]},
              {"name": "final", "description": f"the result ({report['final']['stage']})", **report["final"]},
              *routes]
    for model in models:
        model.update(ms_per_example=ms[model["name"]], speedup=ms["baseline"] / ms[model["name"]])
    return {"runtime": "pytorch", "batch_size": cfg.speed_batch_size, "split": split, "models": models}

"""`layer_prune`: Greedy Layer Pruning (Peer et al., 2022), plus the top-layers and explicit baselines.

At each step every remaining layer is a candidate: remove it, fine-tune briefly, score on a
held-out part of the TRAINING split (15% by default, never the evaluation split); the layer
whose removal hurts least goes (ties: the higher layer). Repeat until the target depth. The
candidates of a step are independent jobs (`workers: N` runs them in parallel processes), and
every scored candidate is checkpointed, so a killed search resumes at the candidate it was on.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from pydantic import Field, model_validator

from compresskit.errors import CompressKitError
from compresskit.evaluation.evaluate import evaluate
from compresskit.files import write_json
from compresskit.modeling.model import CompressedModelForSequenceClassification
from compresskit.modeling.surgery import select_layers
from compresskit.registry import StageConfig, Strategy, register_strategy
from compresskit.stage import ModelShape, PipelineState, PlanContext, StageContext
from compresskit.training.trainer import TrainingConfig, train

log = logging.getLogger(__name__)


class LayerPruneConfig(StageConfig):
    """Recipe keys of a `layer_prune` stage."""

    method: Literal["greedy", "top", "explicit"] = Field("greedy", description="greedy search, drop the top "
                                                         "layers, or drop `layers`")
    target_layers: int | None = Field(None, ge=1, description="depth to reach (greedy, top)")
    layers: list[int] | None = Field(None, description="0-based layers to drop (explicit)")
    heldout_fraction: float = Field(0.15, gt=0, lt=1, description="share of the train split that scores candidates")
    candidate_epochs: float = Field(0.5, gt=0, description="fine-tuning of each candidate")
    candidate_max_samples: int | None = Field(None, ge=1, description="train rows per candidate fine-tune")
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    workers: int = Field(1, ge=1, description="candidates scored in parallel processes")

    @model_validator(mode="after")
    def _consistent(self) -> LayerPruneConfig:
        if self.method == "explicit" and not self.layers:
            raise ValueError("method explicit needs `layers` (0-based layers to drop)")
        if self.method != "explicit" and self.target_layers is None:
            raise ValueError(f"method {self.method} needs `target_layers`")
        return self


@register_strategy
class LayerPruneStrategy(Strategy[LayerPruneConfig]):
    """Greedy Layer Pruning: drop, one at a time, the layer whose removal hurts held-out data least.

    Usually followed by a fine-tune or distill stage. Example stage::

        - strategy: layer_prune
          target_layers: 4
          candidate_epochs: 0.5
          workers: 2
    """

    name = "layer_prune"
    kind = "static"

    def plan(self, shape: ModelShape, ctx: PlanContext) -> ModelShape:
        cfg = self.config
        layers = shape.num_layers
        if cfg.method == "explicit":
            bad = [i for i in cfg.layers or [] if not 0 <= i < layers]
            if bad:
                ctx.problem("layers", f"{bad}: the model this stage receives has layers 0..{layers - 1}")
            if len(set(cfg.layers or [])) != len(cfg.layers or []):
                ctx.problem("layers", f"{cfg.layers} names a layer twice")
            if not bad and len(set(cfg.layers or [])) >= layers:
                ctx.problem("layers", f"would drop all {layers} layers; keep at least one")
            return shape.with_layers(max(1, layers - len(set(cfg.layers or []))))
        if cfg.target_layers is not None and cfg.target_layers > layers:
            ctx.problem("target_layers", f"{cfg.target_layers} exceeds the {layers} layers of the model this stage "
                                         "receives")
        return shape.with_layers(min(cfg.target_layers or layers, layers))

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        cfg = self.config
        layers = state.model.num_layers
        target = cfg.target_layers if cfg.method != "explicit" else layers - len(set(cfg.layers))
        if not 1 <= target <= layers:
            raise CompressKitError(f"stage {ctx.name!r}: cannot go from {layers} layers to {target}")
        if cfg.method == "top":
            removed = list(range(layers - 1, target - 1, -1))
            info: dict[str, Any] = {"removed": removed}
        elif cfg.method == "explicit":
            removed = sorted(set(cfg.layers))
            info = {"removed": removed}
        else:
            removed, steps, seconds = self._greedy(state, ctx, target)
            info = {"removed": removed, "steps": steps, "search_seconds": seconds}
        keep = [i for i in range(layers) if i not in removed]
        state.model = select_layers(state.model, keep)
        info["kept"] = keep
        state.info = info
        return state

    def _greedy(self, state: PipelineState, ctx: StageContext, target: int) -> tuple[list[int], list, float]:
        cfg = self.config
        ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        progress_path = ctx.checkpoint_dir / "search.json"
        progress = {"steps": [], "seconds": 0.0}
        if progress_path.exists():
            try:
                progress = json.loads(progress_path.read_text())
            except ValueError:  # damaged: the search starts over
                log.warning("%s is unreadable; the greedy search starts over", progress_path)
        split = state.data["train"].train_test_split(test_size=cfg.heldout_fraction, seed=ctx.seed)
        train_rows, heldout = split["train"], split["test"]
        if cfg.candidate_max_samples is not None and cfg.candidate_max_samples < len(train_rows):
            train_rows = train_rows.select(range(cfg.candidate_max_samples))
        data_dir = ctx.checkpoint_dir / "data"
        if not data_dir.exists():  # workers read the rows from disk
            datasets.DatasetDict({"train": train_rows, "heldout": heldout}).save_to_disk(str(data_dir))
        base_dir = ctx.checkpoint_dir / "base"
        if not base_dir.exists():
            _save_whole(state.model, state.tokenizer, base_dir)
        removed = [step["removed"] for step in progress["steps"] if "removed" in step]
        layers = state.model.num_layers
        while layers - len(removed) > target:
            step = progress["steps"][len(removed)] if len(progress["steps"]) > len(removed) else {"scores": {}}
            if len(progress["steps"]) <= len(removed):
                progress["steps"].append(step)
            remaining = [i for i in range(layers) if i not in removed]
            todo = [i for i in remaining if str(i) not in step["scores"]]
            jobs = [(str(base_dir), removed + [i], str(data_dir), cfg.model_dump(), state.task.model_dump(),
                     ctx.seed) for i in todo]
            for layer, (score, seconds) in zip(todo, self._run(jobs), strict=True):
                step["scores"][str(layer)] = score
                progress["seconds"] += seconds
                write_json(progress_path, progress)  # every scored candidate survives a kill
                log.info("%s: without layer %d -> held-out %s %.4f", ctx.name, layer, state.task.main_metric, score)
            best = max(remaining, key=lambda i: (step["scores"][str(i)], i))  # ties: the higher layer goes
            step["removed"] = best
            removed.append(best)
            write_json(progress_path, progress)
        return removed, progress["steps"], progress["seconds"]

    def _run(self, jobs: list[tuple]) -> Iterator[tuple[float, float]]:
        """Scores in job order, each as soon as it is known (so it can be checkpointed at once)."""
        if self.config.workers == 1 or len(jobs) <= 1:
            yield from (score_candidate(*job) for job in jobs)
            return
        # spawn: forking a process that already runs torch's thread pool can deadlock
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(self.config.workers, mp_context=context,
                                                    initializer=_one_thread) as pool:
            yield from pool.map(score_candidate, *zip(*jobs, strict=True))


def score_candidate(base_dir: str, removed: list[int], data_dir: str, config: dict, task: dict, seed: int
                    ) -> tuple[float, float]:
    """Fine-tune the base model without `removed` layers; its held-out main metric (and seconds)."""
    import time

    from transformers import AutoTokenizer

    from compresskit.data.tasks import TaskSpec

    started = time.perf_counter()
    cfg, spec = LayerPruneConfig.model_validate(config), TaskSpec.model_validate(task)
    base = CompressedModelForSequenceClassification.from_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = select_layers(base, [i for i in range(base.num_layers) if i not in removed])
    data = datasets.load_from_disk(data_dir)
    train(model, data["train"], None, spec, tokenizer,
          TrainingConfig(epochs=cfg.candidate_epochs, learning_rate=cfg.learning_rate, batch_size=cfg.batch_size),
          seed, desc=f"without {removed}")
    score = evaluate(model, data["heldout"], spec, tokenizer)[spec.main_metric]
    return float(score), time.perf_counter() - started


def _one_thread() -> None:
    torch.set_num_threads(1)


def _save_whole(model, tokenizer, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".base-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)

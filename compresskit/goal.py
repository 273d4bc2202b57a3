"""A recipe's `goal:` — what the user needs (accuracy kept, speed gained), met on held-out training rows.

A recipe with a goal holds `heldout_fraction` of the training rows out of every stage (the
`heldout` split). Once the baseline exists, the pipeline scores it there (and times it, for a
speed goal); every stage with a trade-off knob (early exits' threshold, HadSkip's budget) then
scores and times its candidate operating points on the same rows and keeps the one the goal asks
for:
- with an accuracy bound (`max_accuracy_drop`, `max_relative_drop`): the fastest candidate within
  it — fewest layers per example, which is deterministic, unlike a clock — also meeting any speed
  bound;
- with speed bounds only (`min_speedup`, `max_latency_ms`): the most accurate candidate meeting them.
When no candidate meets the goal the stage fails, naming the best point it reached: no model
pretends to meet it. The evaluation split never chooses; the report says whether the goal holds
there and on the test split.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import datasets
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import PreTrainedTokenizerBase

from compresskit.data.batches import loader, model_inputs
from compresskit.data.tasks import TaskSpec
from compresskit.errors import CompressKitError
from compresskit.evaluation.evaluate import evaluate

HELDOUT = "heldout"  # the split name of the held-out training rows


class GoalConfig(BaseModel):
    """The recipe's `goal:` block."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_accuracy_drop: float | None = Field(None, ge=0, lt=1, description="the largest drop of the task's first "
                                            "metric against the baseline, absolute (0.01 = one point)")
    max_relative_drop: float | None = Field(None, ge=0, lt=1, description="or relative to the baseline's score "
                                            "(0.07 = keep at least 93% of it)")
    min_speedup: float | None = Field(None, ge=1, description="measured latency of the baseline over the "
                                      "model's, at `batch_size` on `runtime`")
    max_latency_ms: float | None = Field(None, gt=0, description="measured milliseconds per example at "
                                         "`batch_size` on `runtime`")
    runtime: Literal["pytorch"] = Field("pytorch", description="where speed is measured while choosing: "
                                        "PyTorch eager fp32 on the run's device and threads (the report and "
                                        "`compresskit benchmark` measure the exports)")
    batch_size: int = Field(1, ge=1, le=1024, description="batch size of the speed measurement")
    heldout_fraction: float = Field(0.1, gt=0, le=0.5, description="share of the training rows no stage trains "
                                    "on; the goal is met on them")
    timing_examples: int = Field(64, ge=1, description="held-out examples timed per candidate (speed goals)")
    timing_rounds: int = Field(3, ge=1, description="timed passes per candidate; the median counts")

    @model_validator(mode="after")
    def _meaningful(self) -> GoalConfig:
        if self.max_accuracy_drop is not None and self.max_relative_drop is not None:
            raise ValueError("give only one of max_accuracy_drop (absolute) or max_relative_drop (relative)")
        if not self.wants_accuracy and not self.wants_speed:
            raise ValueError("a goal needs at least one of max_accuracy_drop, max_relative_drop, min_speedup, "
                             "max_latency_ms")
        return self

    @property
    def wants_accuracy(self) -> bool:
        return self.max_accuracy_drop is not None or self.max_relative_drop is not None

    @property
    def wants_speed(self) -> bool:
        return self.min_speedup is not None or self.max_latency_ms is not None

    def floor(self, baseline: float) -> float | None:
        """The lowest score the goal accepts against a baseline scoring `baseline` (None: no accuracy bound)."""
        if self.max_accuracy_drop is not None:
            return baseline - self.max_accuracy_drop
        if self.max_relative_drop is not None:
            return baseline * (1 - self.max_relative_drop)
        return None

    def describe(self) -> str:
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"at most {self.max_accuracy_drop:g} below the baseline")
        if self.max_relative_drop is not None:
            parts.append(f"at least {1 - self.max_relative_drop:.0%} of the baseline's score")
        if self.min_speedup is not None:
            parts.append(f">= {self.min_speedup:g}x faster than the baseline")
        if self.max_latency_ms is not None:
            parts.append(f"<= {self.max_latency_ms:g} ms per example")
        where = f" (measured on {self.runtime}, batch {self.batch_size})" if self.wants_speed else ""
        return ", ".join(parts) + where


def split_heldout(train: datasets.Dataset, cfg: GoalConfig, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The training rows stages see and the goal's held-out rows (seeded, so a resumed run holds out the same)."""
    parts = train.train_test_split(test_size=cfg.heldout_fraction, seed=seed)
    return parts["train"], parts["test"]


@torch.no_grad()
def ms_per_example(model: torch.nn.Module, dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase,
                   batch_size: int, examples: int, rounds: int) -> float:
    """Median over `rounds` timed passes (after one warm-up) of inference milliseconds per example."""
    return side_by_side([(model, dataset, tokenizer)], batch_size, examples, rounds)[0]


@torch.no_grad()
def side_by_side(runs: list[tuple[torch.nn.Module, datasets.Dataset, PreTrainedTokenizerBase]], batch_size: int,
                 examples: int, rounds: int) -> list[float]:
    """Median milliseconds per example of each (model, its rows, its tokenizer), the models taking turns
    pass by pass (one warm-up pass each first), so load that changes meanwhile reaches them alike."""
    prepared = []
    for model, dataset, tokenizer in runs:
        rows = dataset.select(range(min(examples, len(dataset))))
        prepared.append((model, [model_inputs(b) for b in loader(rows, tokenizer, batch_size)], len(rows)))
    modes = [model.training for model, _, _ in prepared]
    for model, _, _ in prepared:
        model.eval()
    times: list[list[float]] = [[] for _ in prepared]
    for i in range(rounds + 1):
        for (model, batches, _), kept in zip(prepared, times, strict=True):
            started = time.perf_counter()
            for batch in batches:
                model(**batch)
            if i:  # the first pass warms caches and allocators
                kept.append(time.perf_counter() - started)
    for (model, _, _), mode in zip(prepared, modes, strict=True):
        model.train(mode)
    return [1000 * statistics.median(kept) / count for kept, (_, _, count) in zip(times, prepared, strict=True)]


@dataclass
class GoalTarget:
    """The goal with the baseline's numbers on the held-out rows: what a stage's candidates are judged by."""

    config: GoalConfig
    task: TaskSpec
    baseline_score: float
    baseline_ms: float | None  # measured only for a speed goal
    # the baseline's (model, held-out rows, tokenizer), to time it beside each candidate: a ratio of two
    # measurements taken minutes apart on a shared machine is skewed by whatever ran in between
    baseline_run: Callable[[], tuple[torch.nn.Module, datasets.Dataset, PreTrainedTokenizerBase]] | None = None

    @property
    def metric(self) -> str:
        return self.task.main_metric

    @property
    def floor(self) -> float | None:
        """The lowest held-out score the goal accepts (None: no accuracy bound)."""
        return self.config.floor(self.baseline_score)

    def measure(self, model: torch.nn.Module, heldout: datasets.Dataset, tokenizer: PreTrainedTokenizerBase
                ) -> dict[str, float]:
        """A candidate's held-out score and depth, and its speed when the goal bounds speed."""
        metrics = evaluate(model, heldout, self.task, tokenizer)
        point = {self.metric: metrics[self.metric], "avg_layers": metrics["avg_layers"]}
        return {**point, **self.timing(model, heldout, tokenizer)}

    def timing(self, model: torch.nn.Module, heldout: datasets.Dataset, tokenizer: PreTrainedTokenizerBase
               ) -> dict[str, float]:
        if not self.config.wants_speed:
            return {}
        cfg = self.config
        if self.baseline_run is not None:
            base, ms = side_by_side([self.baseline_run(), (model, heldout, tokenizer)], cfg.batch_size,
                                    cfg.timing_examples, cfg.timing_rounds)
            return {"ms_per_example": ms, "baseline_ms_per_example": base, "speedup": base / ms}
        ms = ms_per_example(model, heldout, tokenizer, cfg.batch_size, cfg.timing_examples, cfg.timing_rounds)
        return {"ms_per_example": ms, "speedup": self.baseline_ms / ms}

    def meets(self, point: dict[str, Any]) -> bool:
        cfg, floor = self.config, self.floor
        if floor is not None and point[self.metric] < floor:
            return False
        if cfg.min_speedup is not None and point["speedup"] < cfg.min_speedup:
            return False
        return cfg.max_latency_ms is None or point["ms_per_example"] <= cfg.max_latency_ms

    def choose(self, points: list[dict[str, Any]], what: str,
               timed: Callable[[dict[str, Any]], dict[str, float]] | None = None) -> dict[str, Any]:
        """The point of `points` (held-out score and avg_layers each) the goal asks for; `timed(point)`
        measures one when the goal bounds speed (only points within the accuracy bound are timed)."""
        floor = self.floor
        if self.config.wants_speed and timed is not None:
            for point in points:
                if "speedup" not in point and (floor is None or point[self.metric] >= floor):
                    point.update(timed(point))
        feasible = [p for p in points if "speedup" in p or not self.config.wants_speed]
        feasible = [p for p in feasible if self.meets(p)]
        if not feasible:
            raise CompressKitError(self._unmet(points, what))
        if floor is not None:  # the fastest within the bound; among equally deep the best scoring
            return min(feasible, key=lambda p: (p["avg_layers"], -p[self.metric]))
        return max(feasible, key=lambda p: (p[self.metric], -p["avg_layers"]))

    def _unmet(self, points: list[dict[str, Any]], what: str) -> str:
        best = max(points, key=lambda p: (p[self.metric], -p["avg_layers"]))
        fastest = min(points, key=lambda p: p["avg_layers"])
        floor = self.floor
        need = f"held-out {self.metric} >= {floor:.4f}" if floor is not None else ""
        return (f"no {what} meets the goal ({self.config.describe()}; baseline {self.metric} "
                f"{self.baseline_score:.4f} on the held-out rows{'; ' + need if need else ''}). "
                f"Best reached: {_point(best, self.metric)}; fastest: {_point(fastest, self.metric)}. "
                "Relax the goal, or give the stage more room (a lower budget, more epochs, other candidates)")


def _point(point: dict[str, Any], metric: str) -> str:
    text = f"{metric} {point[metric]:.4f} at {point['avg_layers']:.2f} layers"
    return text + (f", {point['speedup']:.2f}x" if "speedup" in point else "")


def baseline_numbers(cfg: GoalConfig, model: torch.nn.Module, heldout: datasets.Dataset,
                     tokenizer: PreTrainedTokenizerBase, task: TaskSpec) -> dict[str, float]:
    """The baseline's held-out score (and speed, for a speed goal): what the goal is judged against."""
    out = {"score": evaluate(model, heldout, task, tokenizer)[task.main_metric]}
    if cfg.wants_speed:
        out["ms_per_example"] = ms_per_example(model, heldout, tokenizer, cfg.batch_size, cfg.timing_examples,
                                               cfg.timing_rounds)
    return out


def recheck_speed(cfg: GoalConfig, split: str, baseline: Callable[[], Any], final: Callable[[], Any]
                  ) -> dict[str, Any]:
    """The speed bound re-measured on `split`: the baseline's and the final model's states (loaded by the
    callables), timed as the goal times its candidates."""
    out: dict[str, Any] = {"split": split, "runtime": cfg.runtime, "batch_size": cfg.batch_size}
    states = [load() for load in (baseline, final)]
    out["baseline_ms_per_example"], out["ms_per_example"] = side_by_side(
        [(state.model, state.data[split], state.tokenizer) for state in states], cfg.batch_size,
        cfg.timing_examples, cfg.timing_rounds)
    return out


def goal_report(target: GoalTarget, report: dict[str, Any], splits: list[str],
                speed: dict[str, float] | None) -> dict[str, Any]:
    """What the goal asked, what each stage chose on the held-out rows, and whether it holds on the
    evaluation and final splits (accuracy there; speed re-measured on the evaluation split)."""
    metric, cfg = target.metric, target.config
    chosen = {}
    for stage in report["stages"]:
        info = stage["info"] or {}
        point = (info.get("goal") or {}).get("chosen") or (info.get("calibration") or {}).get("chosen")
        if point is not None:
            chosen[stage["name"]] = point
    holds: dict[str, Any] = {}
    for split in splits:
        base, final = report["baseline"][split][metric], report["final"][split][metric]
        floor = cfg.floor(base)
        holds[split] = {"baseline": base, "final": final, "drop": base - final,
                        "accuracy_holds": floor is None or final >= floor}
    if speed is not None:
        speed = {**speed, "speedup": speed["baseline_ms_per_example"] / speed["ms_per_example"]}
        speed["speed_holds"] = ((cfg.min_speedup is None or speed["speedup"] >= cfg.min_speedup)
                                and (cfg.max_latency_ms is None or speed["ms_per_example"] <= cfg.max_latency_ms))
    return {"config": cfg.model_dump(mode="json"), "description": cfg.describe(), "metric": metric,
            "heldout": {"baseline_score": target.baseline_score, "floor": target.floor,
                        "baseline_ms_per_example": target.baseline_ms},
            "chosen": chosen, "splits": holds, "speed": speed,
            "met": all(h["accuracy_holds"] for h in holds.values()) and (speed is None or speed["speed_holds"])}

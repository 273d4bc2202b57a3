"""Runs a recipe's stages in order, checkpointing each, resuming after the last finished one.

Run directory layout:
    recipe.yaml        the resolved recipe (defaults filled in)
    environment.json   package versions, seed, threads, processes
    run.log            the log of every run in this directory
    progress.json      which stage is running
    goal.json          the baseline's numbers on the goal's held-out rows (recipes with a `goal:`)
    stages/NN-NAME/    model/ (save_pretrained + tokenizer), stage.json, extra artifacts
    cache/             a teacher's logits of the training rows, read again by later stages and resumed runs
    report.json        per-stage results, baseline and final model profiles

Each stage's directory is written under a temporary name and renamed when whole, so a killed
run leaves finished stages intact and no half-written one. A stage is reused when its
fingerprint matches: the contents of the input model and data files (sha256), the task, data
settings, seed, package versions and every stage config up to it; changing any of them reruns
that stage and every stage after it. A finished stage records the checksums of its files and is
checked against them before it is reused: a truncated or altered stage runs again.

The run directory is compresskit's (marked by `.compresskit-run`): it is never the current
directory or one of its ancestors, a directory holding other files is refused, only files
compresskit wrote are ever removed, and one run at a time holds it (`.lock`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import datasets
import torch
import yaml
from accelerate import PartialState
from accelerate.utils import set_seed
from transformers import AutoTokenizer

from compresskit import hardware
from compresskit.data.batches import length_grouping
from compresskit.data.loading import load_splits, resolve_task
from compresskit.errors import CompressKitError
from compresskit.files import DirectoryLock, verify_checksums, write_checksums, write_json
from compresskit.goal import HELDOUT, GoalTarget, baseline_numbers, goal_report, recheck_speed, split_heldout
from compresskit.modeling.loading import load_model, resolve_model_path
from compresskit.modeling.model import CompressedModelForSequenceClassification
from compresskit.preflight import check_inputs
from compresskit.profiling import profile
from compresskit.recipe import ResolvedRecipe
from compresskit.report.baselines import compare_routes, train_baselines
from compresskit.report.model_card import write_model_cards
from compresskit.report.results import build_report
from compresskit.rundir import (
    MARKER,
    check_run_dir,
    data_digest,
    fingerprint,
    input_digest,
    package_versions,
    remove_stale,
)
from compresskit.stage import PipelineState, StageContext
from compresskit.training import precision

log = logging.getLogger(__name__)

class Pipeline:
    def __init__(self, resolved: ResolvedRecipe, run_dir: str | Path):
        self.resolved = resolved
        self.recipe = resolved.recipe
        self.run_dir = Path(run_dir)
        self.stages_dir = self.run_dir / "stages"
        self.dist = PartialState(cpu=not torch.cuda.is_available())
        self.task = resolve_task(self.recipe.task)
        self.fingerprints: list[str] = []
        self._goal: GoalTarget | None = None

    # ---- bookkeeping -----------------------------------------------------------------------
    def _fingerprints(self) -> list[str]:
        """Per stage: a hash of everything its result depends on, the contents of what it reads included."""
        r = self.recipe
        task = self.task.model_dump(mode="json")
        versions = {k: v for k, v in package_versions().items() if k in ("compresskit", "torch", "transformers")}
        previous = fingerprint(r.model, input_digest(r.model), task, data_digest(self.task), r.data.model_dump(),
                               r.seed, r.evaluation.model_dump(), versions)
        if r.goal is not None:  # its held-out rows leave every stage's training data
            previous = fingerprint(previous, r.goal.heldout_fraction)
        out = []
        for i, stage in enumerate(self.resolved.stages):
            reads = [input_digest(name) for name in self.resolved.strategy(i).reads()]
            # the precision it trains in, as resolved on this machine (`auto` differs between machines)
            trains_in = precision.resolve(stage.precision or r.precision, self.dist.device)
            previous = fingerprint(previous, stage.model_dump(mode="json"), reads, trains_in)
            # the goal steers the stages with a knob (and, through them, every later one)
            if r.goal is not None and self.resolved.strategy(i).goal_knob:
                previous = fingerprint(previous, r.goal.model_dump(mode="json"))
            out.append(previous)
        return out

    def stage_dir(self, index: int) -> Path:
        return self.stages_dir / f"{index:02d}-{self.resolved.stages[index].name}"

    def checkpoint_dir(self, index: int) -> Path:
        # named by fingerprint: a stage whose settings changed never resumes another's progress
        return self.stages_dir / f".checkpoint-{self.stage_dir(index).name}-{self.fingerprints[index]}"

    def finished_stages(self) -> int:
        """How many leading stages are on disk, whole, unaltered and with matching fingerprints."""
        for i in range(len(self.resolved.stages)):
            directory = self.stage_dir(i)
            if not (directory / ".complete").exists():
                return i
            try:
                fingerprint = json.loads((directory / "stage.json").read_text()).get("fingerprint")
            except (OSError, ValueError, AttributeError):
                fingerprint = None
            if fingerprint != self.fingerprints[i]:
                return i
            problem = verify_checksums(directory)
            if problem:
                log.warning("stage %r is damaged (%s): it runs again", self.resolved.stages[i].name, problem)
                return i
        return len(self.resolved.stages)

    def _prepare_run_dir(self, done: int) -> None:
        self.stages_dir.mkdir(parents=True, exist_ok=True)
        keep = {self.stage_dir(i).name for i in range(done)}
        keep |= {self.checkpoint_dir(i).name for i in range(done, len(self.resolved.stages))}
        remove_stale(self.stages_dir, keep)
        (self.run_dir / "recipe.yaml").write_text(yaml.safe_dump(self.resolved.to_dict(), sort_keys=False))
        write_json(self.run_dir / "environment.json", {
            "packages": package_versions(), "seed": self.recipe.seed, "processes": self.dist.num_processes,
            "device": str(self.dist.device), "bf16_native": precision.native_bf16(self.dist.device),
            "precision": {"requested": self.recipe.precision,
                          "resolved": precision.resolve(self.recipe.precision, self.dist.device)},
            **hardware.environment(),
        })

    def _attach_log_file(self) -> logging.Handler | None:
        """run.log gets INFO and above whatever the caller's logging setup shows on screen."""
        if not self.dist.is_main_process:
            return None
        handler = logging.FileHandler(self.run_dir / "run.log")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("compresskit")
        handler.previous_level = logger.level  # type: ignore[attr-defined]
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        return handler

    # ---- running ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Check every input, then run the stages not finished yet; returns the report."""
        check_inputs(self.resolved)  # a broken recipe or input fails here, before any stage runs
        check_run_dir(self.run_dir)
        self.fingerprints = self._fingerprints()
        if self.dist.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / MARKER).touch()
            with DirectoryLock(self.run_dir, "`compresskit apply`"):
                return self._locked_run()
        return self._locked_run()

    def _locked_run(self) -> dict[str, Any]:
        if self.dist.is_main_process:
            done = self.finished_stages()
            self._prepare_run_dir(done)
        self.dist.wait_for_everyone()
        if not self.dist.is_main_process:
            done = self.finished_stages()
        handler = self._attach_log_file()
        try:
            return self._run(done)
        finally:
            if handler is not None:
                logger = logging.getLogger("compresskit")
                logger.removeHandler(handler)
                logger.setLevel(handler.previous_level)  # type: ignore[attr-defined]
                handler.close()

    def _run(self, done: int) -> dict[str, Any]:
        total = len(self.resolved.stages)
        if done:
            log.info("resuming: %d of %d stages already finished (%s)", done, total,
                     ", ".join(s.name for s in self.resolved.stages[:done]))
        state = self._initial_state(done)
        for i in range(done, total):
            state = self._run_stage(i, state)
        report = self.report()
        log.info("done: report at %s", self.run_dir / "report.json")
        return report

    def _stage_dirs(self, upto: int) -> dict[str, Path]:
        dirs = {"input": Path(resolve_model_path(self.recipe.model))}
        dirs.update({self.resolved.stages[i].name: self.stage_dir(i) / "model" for i in range(upto)})
        return dirs

    def _load_raw(self) -> datasets.DatasetDict:
        r = self.recipe
        splits = dict.fromkeys(["train", r.evaluation.split, *r.evaluation.final_splits])
        raw = load_splits(self.task, list(splits), seed=r.seed, max_train_samples=r.data.max_train_samples,
                          max_eval_samples=r.data.max_eval_samples)
        if r.goal is not None:
            raw["train"], raw[HELDOUT] = split_heldout(raw["train"], r.goal, r.seed)
        return raw

    def _initial_state(self, done: int) -> PipelineState:
        r = self.recipe
        raw = self._load_raw()
        if done:
            path = self.stage_dir(done - 1) / "model"
            model = CompressedModelForSequenceClassification.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
        else:  # a fresh head (the encoder has none) is drawn from the recipe's seed
            model, tokenizer = load_model(r.model, self.task, seed=r.seed)
        return PipelineState(model=model, tokenizer=tokenizer, task=self.task, raw=raw,
                             max_length=r.data.max_length)

    def _run_stage(self, index: int, state: PipelineState) -> PipelineState:
        stage = self.resolved.stages[index]
        strategy = self.resolved.strategy(index)
        final_dir = self.stage_dir(index)
        work_dir = self.stages_dir / f".tmp-{final_dir.name}"
        if self.dist.is_main_process:
            shutil.rmtree(work_dir, ignore_errors=True)
            work_dir.mkdir(parents=True)
            write_json(self.run_dir / "progress.json", {"stage": index, "name": stage.name,
                                                         "status": "running", "started": time.time()})
        self.dist.wait_for_everyone()
        log.info("stage %d/%d %r (%s) started", index + 1, len(self.resolved.stages), stage.name, stage.strategy)
        ctx = StageContext(index=index, name=stage.name, seed=self.recipe.seed + index, run_dir=self.run_dir,
                           work_dir=work_dir, checkpoint_dir=self.checkpoint_dir(index),
                           stage_dirs=self._stage_dirs(index), eval_split=self.recipe.evaluation.split,
                           goal=self._goal_target(state.raw) if strategy.goal_knob else None)
        state.info = {}
        # fresh modules (gates, exit heads, policies) draw from the global RNG: seed it here, or a
        # resumed run (earlier stages loaded, not trained) would initialise them differently
        set_seed(ctx.seed)
        started = time.perf_counter()
        full_raw = state.raw
        state.model.to(self.dist.device)
        trains_in = precision.resolve(stage.precision or self.recipe.precision, self.dist.device)
        if strategy.kind != "export":
            log.info("stage %r trains in %s (precision: %s)", stage.name, trains_in,
                     stage.precision or self.recipe.precision)
            if trains_in == "bf16" and not precision.native_bf16(self.dist.device):
                # measured on an AVX2-only CPU: torch's fallback bf16 GEMM made an MPNet step >20x slower
                log.warning("stage %r: this device has no native bf16 (%s): bf16 is emulated and far slower "
                            "than fp32; use precision: auto (or fp32) on this machine", stage.name,
                            "/".join(precision.NATIVE_BF16_FLAGS) + " on CPU")
        with precision.training_precision(trains_in), length_grouping(self.recipe.data.group_by_length):
            state = strategy.apply(self._train_subset(state, stage.max_train_samples), ctx)
        state.model.to(self.dist.device)  # a model a stage built anew starts on the host
        if state.raw is not full_raw:  # later stages and evaluation see every row again
            state = dataclasses.replace(state, raw=full_raw, _encoded={})
        seconds = time.perf_counter() - started
        evaluation = self.profile(state, [self.recipe.evaluation.split])
        meta = {"name": stage.name, "strategy": stage.strategy, "fingerprint": self.fingerprints[index],
                "seconds": seconds, "precision": trains_in, "evaluation": evaluation, "info": state.info,
                "config": stage.model_dump(mode="json")}
        if self.dist.is_main_process:
            state.model.save_pretrained(work_dir / "model")
            state.tokenizer.save_pretrained(work_dir / "model")
            write_json(work_dir / "stage.json", meta)
            write_checksums(work_dir)
            (work_dir / ".complete").write_text("ok\n")
            os.replace(work_dir, final_dir)
            shutil.rmtree(self.checkpoint_dir(index), ignore_errors=True)
            write_json(self.run_dir / "progress.json", {"stage": index, "name": stage.name, "status": "finished"})
        self.dist.wait_for_everyone()
        log.info("stage %r finished in %.1fs: %s", stage.name, seconds, evaluation[self.recipe.evaluation.split])
        return state

    def _goal_target(self, raw: datasets.DatasetDict) -> GoalTarget | None:
        """The goal with the baseline's held-out numbers: measured once, kept in goal.json for resumed runs."""
        goal = self.recipe.goal
        if goal is None or self._goal is not None:
            return self._goal
        if goal.wants_speed and self.dist.num_processes > 1:
            raise CompressKitError("a speed goal is timed in one process: run it without --num-processes, or keep "
                                   "only the goal's accuracy bound")
        names = self.resolved.stage_names()
        baseline = self.recipe.baseline or names[0]
        made_by = (fingerprint(input_digest(self.recipe.model), self.recipe.seed) if baseline == "input"
                   else self.fingerprints[names.index(baseline)])
        key = fingerprint(baseline, made_by, goal.model_dump(mode="json"))
        path = self.run_dir / "goal.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        if saved.get("key") != key:
            state = self._model_state(baseline, raw)
            saved = {"key": key, "baseline": baseline,
                     **baseline_numbers(goal, state.model, state.data[HELDOUT], state.tokenizer, self.task)}
            if self.dist.is_main_process:
                write_json(path, saved)
        @functools.cache
        def base():  # timed beside each candidate; loaded once, at the first
            state = self._model_state(baseline, raw)
            return state.model, state.data[HELDOUT], state.tokenizer
        self._goal = GoalTarget(goal, self.task, saved["score"], saved.get("ms_per_example"), base)
        log.info("goal: %s; the baseline %r scores %.4f on %d held-out rows", goal.describe(), baseline,
                 saved["score"], len(raw[HELDOUT]))
        return self._goal

    def _train_subset(self, state: PipelineState, rows: int | None) -> PipelineState:
        """The state with its train split cut to `rows` (a stage's `max_train_samples`)."""
        train = state.raw["train"]
        if rows is None or rows >= len(train):
            return state
        raw = datasets.DatasetDict({**state.raw, "train": train.shuffle(seed=self.recipe.seed).select(range(rows))})
        log.info("stage trains on %d of %d training rows (max_train_samples)", rows, len(train))
        return dataclasses.replace(state, raw=raw, _encoded={})

    # ---- evaluation and report -------------------------------------------------------------
    def profile(self, state: PipelineState, splits: list[str], known: dict[str, Any] | None = None) -> dict[str, Any]:
        return profile(state, splits, self.recipe.evaluation, known)

    def _state_from(self, path: Path, raw: datasets.DatasetDict) -> PipelineState:
        model = CompressedModelForSequenceClassification.from_pretrained(path).to(self.dist.device)
        return PipelineState(model=model, tokenizer=AutoTokenizer.from_pretrained(path), task=self.task, raw=raw,
                             max_length=self.recipe.data.max_length)

    def report(self) -> dict[str, Any]:
        """Write report.json: every stage, and full profiles of the baseline and final model."""
        r = self.recipe
        stages = [json.loads((self.stage_dir(i) / "stage.json").read_text())
                  for i in range(len(self.resolved.stages))]
        raw = self._load_raw()
        splits = list(dict.fromkeys([r.evaluation.split, *r.evaluation.final_splits]))

        report = build_report(r, self.task, stages, splits,
                              lambda name, known: self.profile(self._model_state(name, raw), splits, known))
        if r.goal is not None:
            report["goal"] = goal_report(self._goal_target(raw), report, splits, self._goal_speed(report, raw))
        if r.report.baselines:
            report["trivial_routes"] = self._trivial_routes(report, raw, splits)
        if self.dist.is_main_process:
            artifacts = self._final_artifacts(stages)
            if r.evaluation.latency_examples:
                report["latency"] = self._latency(artifacts)
            write_json(self.run_dir / "report.json", report)
            write_model_cards(self.run_dir, report, artifacts)
        return report

    def _model_state(self, name: str, raw: datasets.DatasetDict) -> PipelineState:
        """The model of a finished stage (or the recipe's input model, 'input') with the run's data."""
        if name != "input":
            return self._state_from(self.stage_dir(self.resolved.stage_names().index(name)) / "model", raw)
        model, tokenizer = load_model(self.recipe.model, self.task, seed=self.recipe.seed)
        return PipelineState(model=model.to(self.dist.device), tokenizer=tokenizer, task=self.task, raw=raw,
                             max_length=self.recipe.data.max_length)

    def _goal_speed(self, report: dict[str, Any], raw: datasets.DatasetDict) -> dict[str, Any] | None:
        """A speed goal re-measured on the evaluation split: baseline and final model, as the goal times them."""
        if not self.recipe.goal.wants_speed:
            return None
        return recheck_speed(self.recipe.goal, self.recipe.evaluation.split,
                             lambda: self._model_state(report["baseline"]["stage"], raw),
                             lambda: self._model_state(report["final"]["stage"], raw))

    def _trivial_routes(self, report: dict[str, Any], raw: datasets.DatasetDict, splits: list[str]) -> dict[str, Any]:
        """The recipe's result against the routes a user would take instead (compresskit/report/baselines.py)."""
        cfg, split, names = self.recipe.report, self.recipe.evaluation.split, self.resolved.stage_names()
        dynamic = [i for i in range(len(names)) if self.resolved.strategy(i).kind == "dynamic"]
        source = (names[dynamic[0] - 1] if dynamic[0] else "input") if dynamic else report["baseline"]["stage"]
        depth = max(1, round(report["final"][split]["avg_layers"]))
        with precision.training_precision(precision.resolve(self.recipe.precision, self.dist.device)), \
                length_grouping(self.recipe.data.group_by_length):  # the routes train as the stages do
            routes = train_baselines(cfg, self.run_dir, self.fingerprints[-1], depth, source,
                                     lambda: self._model_state(source, raw), raw, self.recipe.seed, split,
                                     lambda state: self.profile(state, splits))
        loaders = {"baseline": lambda: self._model_state(report["baseline"]["stage"], raw),
                   "final": lambda: self._model_state(report["final"]["stage"], raw)}
        loaders.update({r["name"]: (lambda d=r["directory"]: self._state_from(Path(d), raw)) for r in routes})
        return compare_routes(cfg, report, routes, loaders, split)

    def _final_artifacts(self, stages: list[dict[str, Any]]) -> dict[str, Path]:
        """The final model's directory and, if the recipe exports, the last export's."""
        artifacts = {"pytorch": self.stage_dir(len(stages) - 1) / "model"}
        exports = [i for i, s in enumerate(stages) if s["strategy"] == "export"]
        if exports:
            artifacts["onnx"] = self.stage_dir(exports[-1]) / stages[exports[-1]]["info"]["directory"]
        return artifacts

    def _latency(self, artifacts: dict[str, Path]) -> dict[str, Any]:
        """The final artifacts timed side by side (batch 1 and 32) on the evaluation split."""
        from compresskit.benchmark import benchmark

        r = self.recipe
        result = benchmark([str(p) for p in artifacts.values()], task=self.task, split=r.evaluation.split,
                           examples=r.evaluation.latency_examples, max_length=r.data.max_length, repeats=2)
        names = {str(p): kind for kind, p in artifacts.items()}
        rows = [{"artifact": names[row.pop("model")], **row} for row in result["rows"]]
        return {**{k: result[k] for k in ("split", "examples", "max_length", "threads")}, "rows": rows}

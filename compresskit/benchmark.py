"""Latency and throughput of several models side by side, in one process, on the same batches.

Each path is a PyTorch model directory (run with its routed inference: dynamic models skip work)
or an ONNX export directory (`compresskit export`; `DIR:int8` for its INT8 graphs). The models take
turns of a few consecutive batches, each turn opened by an untimed call, so a noisy neighbour slows
them all alike and each is timed warm, as it serves; ratios between rows of one run are what to compare.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from compresskit.data.loading import load_splits, resolve_task
from compresskit.errors import CompressKitError

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]  # encodings in, layers executed per example out
Counter = Callable[[dict[str, np.ndarray]], float | None]  # encodings in, FLOPs of that batch out (None: unknown)


# DIR:VARIANT -> how an export's graphs run
EXPORT_VARIANTS: dict[str, dict[str, Any]] = {
    "": {}, "int8": {"quantized": True}, "openvino": {"runtime": "openvino"},
    "openvino-bf16": {"runtime": "openvino", "precision": "bf16"},
    "openvino-int8": {"runtime": "openvino", "quantized": True},
}


def load_runner(spec: str, threads: int) -> tuple[Runner, Any, str, Counter]:
    """(run one batch, tokenizer, kind, count a batch's FLOPs) for a model or export directory; an
    export's graphs run on `DIR` ONNX Runtime fp32, `DIR:int8` its INT8 graphs, `DIR:openvino`
    OpenVINO fp32, `DIR:openvino-bf16` OpenVINO bf16, `DIR:openvino-int8` OpenVINO on the INT8 graphs."""
    path, _, variant = spec.partition(":")
    if not Path(path).is_dir():
        raise CompressKitError(f"benchmark: {path} is not a directory (a model or an export)")
    if (Path(path) / "compresskit_export.json").exists():
        from compresskit.export import OnnxClassifier

        settings = EXPORT_VARIANTS.get(variant)
        if settings is None:
            raise CompressKitError(f"benchmark: {spec}: ':{variant}' is not one of "
                                   f"{', '.join(':' + v for v in EXPORT_VARIANTS if v)}")
        model = OnnxClassifier(path, threads=threads, **settings)
        kind = f"{model.runtime}-{model.executed_precision}" + ("-int8" if settings.get("quantized") else "")
        if model.executed_precision != model.precision:
            kind += f" ({model.precision} asked; not native here)"
        return (lambda enc: model.forward(enc).layers_executed), model.tokenizer, kind, model.count_flops
    if variant:
        raise CompressKitError(f"benchmark: {spec}: ':{variant}' applies to ONNX exports only")
    from compresskit.modeling.loading import load_model

    model, tokenizer = load_model(path)
    model.eval()

    @torch.no_grad()
    def run(enc):
        return model(**{k: torch.from_numpy(v) for k, v in enc.items()}).layers_executed.numpy()

    def count(enc) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            run(enc)
        return float(counter.get_total_flops())

    return run, tokenizer, "pytorch", count


def benchmark(paths: list[str], task: str = "rotten_tomatoes", split: str = "test", examples: int = 256,
              batch_sizes: tuple[int, ...] = (1, 32), max_length: int = 64, repeats: int = 3, warmup: int = 2,
              threads: int | None = None, turn_examples: int = 32) -> dict[str, Any]:
    threads = threads or torch.get_num_threads()
    kept = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:  # the caller's thread count is theirs: restored however this ends
        return _benchmark(paths, task, split, examples, batch_sizes, max_length, repeats, warmup, threads,
                          turn_examples)
    finally:
        torch.set_num_threads(kept)


def _benchmark(paths: list[str], task: str, split: str, examples: int, batch_sizes: tuple[int, ...],
               max_length: int, repeats: int, warmup: int, threads: int, turn_examples: int) -> dict[str, Any]:
    runners = [load_runner(p, threads) for p in paths]  # a path that is not a model fails before any data loads
    spec = resolve_task(task)
    raw = load_splits(spec, [split], max_eval_samples=examples)[split]
    fields = [f for f in ("text_a", "text_b") if f in raw.column_names]
    texts = [[row[f] for f in fields] for row in raw]
    rows = []
    for batch_size in batch_sizes:
        chunks = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
        encoded = [[_encode(tok, chunk, max_length) for chunk in chunks] for _, tok, _, _ in runners]
        times: list[list[float]] = [[] for _ in runners]
        layers: list[list[float]] = [[] for _ in runners]
        for m, (run, *_) in enumerate(runners):
            for enc in encoded[m][:warmup]:
                run(enc)
        # Models take turns, a few consecutive batches each, so a noisy neighbour slows all of them
        # alike. Each turn opens with one untimed call: a served model runs request after request
        # with its weights warm in the caches, and without that call a small model would be timed
        # just after a big one flushed them (the default recipe's export measured 1.5x slower at
        # batch 1 taking turns batch by batch than alone; docs/deploy.md).
        per_turn = max(1, turn_examples // batch_size)
        for _ in range(repeats):
            for first in range(0, len(chunks), per_turn):
                for m, (run, *_) in enumerate(runners):
                    run(encoded[m][first])
                    for enc in encoded[m][first:first + per_turn]:
                        started = time.perf_counter()
                        executed = run(enc)
                        times[m].append(time.perf_counter() - started)
                        layers[m].extend(np.asarray(executed, dtype=float).tolist())
        for m, (path, (_, _, kind, count)) in enumerate(zip(paths, runners, strict=True)):
            ts = sorted(times[m])
            flops = _pass_flops(count, encoded[m])  # one untimed pass: counting is no part of the timing
            rows.append({"model": path, "runtime": kind, "isa": instruction_set(kind), "batch_size": batch_size,
                         "median_ms": 1e3 * statistics.median(ts), "p90_ms": 1e3 * ts[int(0.9 * (len(ts) - 1))],
                         "examples_per_s": len(texts) * repeats / sum(ts), "avg_layers": statistics.fmean(layers[m]),
                         "gflops_per_example": None if flops is None else flops / len(texts) / 1e9,
                         "gflops_per_s": None if flops is None else flops * repeats / sum(ts) / 1e9})
    base = {r["batch_size"]: r["examples_per_s"] for r in rows if r["model"] == paths[0]}
    for r in rows:
        r["speedup_vs_first"] = r["examples_per_s"] / base[r["batch_size"]]
    return {"task": task, "split": split, "examples": len(texts), "max_length": max_length, "threads": threads,
            "repeats": repeats, "turn_examples": turn_examples, "peak_gflops_per_s": peak_gflops(threads),
            "rows": rows}


def _pass_flops(count: Counter, batches: list[dict[str, np.ndarray]]) -> float | None:
    counted = [count(enc) for enc in batches]
    return None if any(c is None for c in counted) else sum(counted)


def peak_gflops(threads: int, size: int = 2048, repeats: int = 3) -> dict[str, float | None]:
    """What this machine's matrix units reach on a large square GEMM (torch, these threads), per
    precision: the ceiling a row's FLOPs/s is read against (a reference, not a bound: a runtime's
    own kernels on other shapes may pass it). bf16 only where it is native (an
    emulated bf16 GEMM would take long to say only that it is slow)."""
    from compresskit.training.precision import native_bf16

    peaks: dict[str, float | None] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if dtype == torch.bfloat16 and not native_bf16(torch.device("cpu")):
            peaks[name] = None
            continue
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        torch.mm(a, b)  # warm-up: the kernel's first call picks and packs
        best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))  # noqa: B023 (called here)
        peaks[name] = 2 * size ** 3 / best / 1e9
    return peaks


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def instruction_set(kind: str) -> str:
    """The widest matrix instructions the row's runtime can use here: PyTorch says which it dispatches
    to; ONNX Runtime (MLAS) and OpenVINO pick the widest the CPU has, as listed."""
    if kind == "pytorch":
        return torch.backends.cpu.get_cpu_capability()
    from compresskit import hardware

    flags = hardware.cpu()["matrix_instructions"]
    return "+".join(flags) or "baseline x86-64"


def _encode(tokenizer: Any, chunk: list[list[str]], max_length: int) -> dict[str, np.ndarray]:
    columns = [list(c) for c in zip(*chunk, strict=True)]
    enc = tokenizer(*columns, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"{result['examples']} examples of {result['task']}/{result['split']}, max length "
             f"{result['max_length']}, {result['threads']} threads, {result['repeats']} passes, models taking turns "
             f"of {result.get('turn_examples', 1)} examples", "",
             "| model | runtime | instructions | batch | median ms | p90 ms | examples/s | avg layers "
             "| GFLOPs/example | GFLOP/s (% of peak) | speed-up vs first |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    peaks = result.get("peak_gflops_per_s") or {}
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['runtime']} | {r['isa']} | {r['batch_size']} | {r['median_ms']:.1f} "
                     f"| {r['p90_ms']:.1f} | {r['examples_per_s']:.1f} | {r['avg_layers']:.2f} "
                     f"| {_number(r.get('gflops_per_example'), '.3f')} | {_rate(r, peaks)} "
                     f"| {r['speedup_vs_first']:.2f}x |")
    known = ", ".join(f"{k} {v:.0f}" for k, v in peaks.items() if v)
    if known:
        lines += ["", f"Peak: a 2048x2048 GEMM in torch on these threads reaches {known} GFLOP/s; a row is read "
                      "against its precision's (INT8 rows against fp32's)."]
    return "\n".join(lines)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _rate(row: dict[str, Any], peaks: dict[str, float | None]) -> str:
    rate = row.get("gflops_per_s")
    if rate is None:
        return "-"
    peak = peaks.get("bf16" if "bf16" in row["runtime"].split(" ")[0] else "fp32")
    return f"{rate:.1f}" + (f" ({100 * rate / peak:.0f}%)" if peak else "")

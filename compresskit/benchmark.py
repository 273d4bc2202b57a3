"""Latency and throughput of several models side by side, in one process, on the same batches.

Each path is a PyTorch model directory (run with its routed inference: dynamic models skip work)
or an ONNX export directory (`compresskit export`; `DIR:int8` for its INT8 graphs). The models take
turns batch by batch, so a noisy neighbour slows them all alike; ratios between rows of one run
are what to compare.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compresskit.data.loading import load_splits, resolve_task
from compresskit.errors import CompressKitError

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]  # encodings in, layers executed per example out


# DIR:VARIANT -> how an export's graphs run
EXPORT_VARIANTS: dict[str, dict[str, Any]] = {
    "": {}, "int8": {"quantized": True}, "openvino": {"runtime": "openvino"},
    "openvino-bf16": {"runtime": "openvino", "precision": "bf16"},
    "openvino-int8": {"runtime": "openvino", "quantized": True},
}


def load_runner(spec: str, threads: int) -> tuple[Runner, Any, str]:
    """(run one batch, tokenizer, kind) for a model or export directory; an export's graphs run on
    `DIR` ONNX Runtime fp32, `DIR:int8` its INT8 graphs, `DIR:openvino` OpenVINO fp32,
    `DIR:openvino-bf16` OpenVINO bf16."""
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
        return (lambda enc: model.forward(enc).layers_executed), model.tokenizer, kind
    if variant:
        raise CompressKitError(f"benchmark: {spec}: ':{variant}' applies to ONNX exports only")
    from compresskit.modeling.loading import load_model

    model, tokenizer = load_model(path)
    model.eval()

    @torch.no_grad()
    def run(enc):
        return model(**{k: torch.from_numpy(v) for k, v in enc.items()}).layers_executed.numpy()

    return run, tokenizer, "pytorch"


def benchmark(paths: list[str], task: str = "rotten_tomatoes", split: str = "test", examples: int = 256,
              batch_sizes: tuple[int, ...] = (1, 32), max_length: int = 64, repeats: int = 3, warmup: int = 2,
              threads: int | None = None) -> dict[str, Any]:
    threads = threads or torch.get_num_threads()
    kept = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:  # the caller's thread count is theirs: restored however this ends
        return _benchmark(paths, task, split, examples, batch_sizes, max_length, repeats, warmup, threads)
    finally:
        torch.set_num_threads(kept)


def _benchmark(paths: list[str], task: str, split: str, examples: int, batch_sizes: tuple[int, ...],
               max_length: int, repeats: int, warmup: int, threads: int) -> dict[str, Any]:
    runners = [load_runner(p, threads) for p in paths]  # a path that is not a model fails before any data loads
    spec = resolve_task(task)
    raw = load_splits(spec, [split], max_eval_samples=examples)[split]
    fields = [f for f in ("text_a", "text_b") if f in raw.column_names]
    texts = [[row[f] for f in fields] for row in raw]
    rows = []
    for batch_size in batch_sizes:
        chunks = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
        encoded = [[_encode(tok, chunk, max_length) for chunk in chunks] for _, tok, _ in runners]
        times: list[list[float]] = [[] for _ in runners]
        layers: list[list[float]] = [[] for _ in runners]
        for m, (run, _, _) in enumerate(runners):
            for enc in encoded[m][:warmup]:
                run(enc)
        for _ in range(repeats):
            for b in range(len(chunks)):
                for m, (run, _, _) in enumerate(runners):  # models take turns, batch by batch
                    started = time.perf_counter()
                    executed = run(encoded[m][b])
                    times[m].append(time.perf_counter() - started)
                    layers[m].extend(np.asarray(executed, dtype=float).tolist())
        for m, (path, (_, _, kind)) in enumerate(zip(paths, runners, strict=True)):
            ts = sorted(times[m])
            rows.append({"model": path, "runtime": kind, "isa": instruction_set(kind), "batch_size": batch_size,
                         "median_ms": 1e3 * statistics.median(ts), "p90_ms": 1e3 * ts[int(0.9 * (len(ts) - 1))],
                         "examples_per_s": len(texts) * repeats / sum(ts), "avg_layers": statistics.fmean(layers[m])})
    base = {r["batch_size"]: r["examples_per_s"] for r in rows if r["model"] == paths[0]}
    for r in rows:
        r["speedup_vs_first"] = r["examples_per_s"] / base[r["batch_size"]]
    return {"task": task, "split": split, "examples": len(texts), "max_length": max_length, "threads": threads,
            "repeats": repeats, "rows": rows}


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
             f"{result['max_length']}, {result['threads']} threads, {result['repeats']} passes", "",
             "| model | runtime | instructions | batch | median ms | p90 ms | examples/s | avg layers "
             "| speed-up vs first |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['runtime']} | {r['isa']} | {r['batch_size']} | {r['median_ms']:.1f} "
                     f"| {r['p90_ms']:.1f} "
                     f"| {r['examples_per_s']:.1f} | {r['avg_layers']:.2f} | {r['speedup_vs_first']:.2f}x |")
    return "\n".join(lines)

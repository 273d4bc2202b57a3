"""The `compresskit` command line. Bad input exits 2 with a message, no traceback (--debug shows it)."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from compresskit.errors import CompressKitError

log = logging.getLogger("compresskit")

POSITIVE = click.IntRange(min=1)
LENGTH = click.IntRange(min=8, max=4096)  # tokens per input, as a recipe's data.max_length


def _tolerance(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} is not a positive finite number")
    return value


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("urllib3", "filelock", "fsspec", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import transformers

    transformers.logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Known errors: message and exit 2. Anything else: exit 1 with a pointer to --debug."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return func(*args, **kwargs)
        except CompressKitError as err:
            if debug:
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except click.ClickException:
            raise  # click prints its usage errors and exits 2
        except KeyboardInterrupt:
            click.echo("interrupted; rerun the same command to resume after the last finished stage", err=True)
            sys.exit(130)
        except Exception as err:  # an internal error: say so plainly, keep the traceback behind --debug
            if debug:
                raise
            click.echo(f"internal error: {type(err).__name__}: {err}\n(rerun with --debug for the traceback)",
                       err=True)
            sys.exit(1)

    return wrapper


@click.group()
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="compresskit")
def main(debug: bool) -> None:
    """Compress BERT-family classifiers with composable, recipe-driven strategies."""
    _setup_logging(debug)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), help="Run directory (default runs/NAME).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. data.max_train_samples=500 or stages.teacher.epochs=1.")
@click.option("--num-processes", type=POSITIVE, default=1, show_default=True,
              help="Train with N data-parallel processes (DDP through accelerate, launched with torchrun).")
@handle_errors
def apply(recipe: str, output_dir: str | None, overrides: tuple[str, ...], num_processes: int) -> None:
    """Run RECIPE; rerunning resumes after the last finished stage."""
    from compresskit.recipe import load_recipe

    resolved = load_recipe(recipe, list(overrides))  # validate everything before anything runs
    if num_processes > 1 and "LOCAL_RANK" not in os.environ:
        _relaunch(num_processes)
        return
    from compresskit.pipeline import Pipeline

    run_dir = Path(output_dir or Path("runs") / resolved.recipe.name)
    try:
        report = Pipeline(resolved, run_dir).run()
    finally:
        _end_process_group()
    if os.environ.get("RANK", "0") != "0":
        return  # one process reports
    from compresskit.report.markdown import write_report

    click.echo(json.dumps(report["summary"], indent=2))
    click.echo(f"report: {run_dir / 'report.json'} and {write_report(run_dir)} (tables and plots)")


def _end_process_group() -> None:
    """A DDP process leaves its process group before exiting: left to the interpreter's teardown,
    gloo's threads can be destroyed while still running and abort the process (exit -6) after its
    work is done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _relaunch(num_processes: int) -> None:
    args, skip = [], False
    for arg in sys.argv[1:]:  # the same command minus --num-processes, run once per process
        if skip or arg.startswith("--num-processes="):
            skip = False
            continue
        skip = arg == "--num-processes"
        if not skip:
            args.append(arg)
    # torchrun spawns the processes; accelerate (PartialState/Accelerator) then sees LOCAL_RANK and
    # runs them as one DDP job (gloo on CPU). `accelerate launch --cpu` alone needs MPI for this.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(num_processes), "-m", "compresskit", *args]
    log.info("launching %d processes: %s", num_processes, " ".join(cmd))
    sys.exit(subprocess.call(cmd))


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@handle_errors
def validate(recipe: str, overrides: tuple[str, ...]) -> None:
    """Check RECIPE without running it; lists every problem with its location."""
    from compresskit.preflight import check_inputs
    from compresskit.recipe import load_recipe

    resolved = load_recipe(recipe, list(overrides))
    planned = check_inputs(resolved, recipe)  # the task's files and the models' configs, never weights
    names = ", ".join(f"{name} ({s.strategy}, {shape.num_layers} layers{', dynamic' if shape.dynamic else ''})"
                      for (name, shape), s in zip(planned, resolved.stages, strict=True))
    click.echo(f"ok: {resolved.recipe.name}: {len(resolved.stages)} stage(s): {names}")


@main.command()
@handle_errors
def strategies() -> None:
    """List the registered strategies."""
    from compresskit.registry import strategies as registered

    for name, cls in registered().items():
        click.echo(f"{name:<18} {cls.kind:<9} {cls.summary()}")


@main.group(invoke_without_command=True)
@click.pass_context
@handle_errors
def assets(ctx: click.Context) -> None:
    """List the packaged models and tasks (and whether they are installed)."""
    if ctx.invoked_subcommand is not None:
        return
    from compresskit.assets import ASSETS, cache_dir

    click.echo(f"cache: {cache_dir()}")
    for asset in ASSETS.values():
        mark = "installed" if asset.installed else "missing"
        click.echo(f"{asset.name:<16} {asset.kind:<6} {mark:<10} {asset.description}")


@assets.command("install")
@click.argument("names", nargs=-1)
@click.option("--keep-wheels", is_flag=True, help="Keep the downloaded wheels in the cache.")
@handle_errors
def assets_install(names: tuple[str, ...], keep_wheels: bool) -> None:
    """Download and prepare packaged assets (all by default)."""
    from compresskit.assets import install

    for asset in install(list(names) or None, keep_wheels=keep_wheels):
        click.echo(f"{asset.name}: {asset.path}")


@main.command()
@click.argument("model")
@click.option("--task", "task_name", required=True,
              help="Known task name, or a YAML file with a task mapping (docs/recipe-reference.md, `task`).")
@click.option("--split", default="validation", show_default=True)
@click.option("--max-samples", type=POSITIVE, default=None, help="Evaluate N rows of a seeded shuffle only.")
@click.option("--max-length", type=LENGTH, default=128, show_default=True)
@click.option("--batch-size", type=POSITIVE, default=64, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Draws a fresh classification head (an encoder without one) and the --max-samples rows.")
@handle_errors
def evaluate(model: str, task_name: str, split: str, max_samples: int | None, max_length: int,
             batch_size: int, seed: int) -> None:
    """Evaluate MODEL (packaged name, directory or hub name) on a task split; prints JSON (deterministic)."""
    from compresskit.data.loading import load_splits, resolve_task, tokenize
    from compresskit.evaluation.evaluate import evaluate as run_eval
    from compresskit.evaluation.flops import count_parameters
    from compresskit.modeling.loading import load_model

    task = resolve_task(task_name)
    rows = load_splits(task, [split], seed=seed, max_eval_samples=max_samples)  # a bad split fails before the model
    loaded, tokenizer = load_model(model, task, seed=seed)
    data = tokenize(rows, tokenizer, max_length)
    metrics = run_eval(loaded, data[split], task, tokenizer, batch_size)
    metrics["parameters"] = count_parameters(loaded)
    click.echo(json.dumps(metrics, indent=2))


@main.command()
@click.argument("model")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Export directory.")
@click.option("--quantize", type=click.Choice(["int8", "int8-static"]), default=None,
              help="Also write INT8 graphs: dynamic (ORTQuantizer) or static QDQ calibrated on --task's training "
                   "rows (a dynamic model's layers on the rows its routing sends them).")
@click.option("--task", default="rotten_tomatoes", show_default=True,
              help="Task (name or file) whose training rows calibrate int8-static.")
@click.option("--calibration-rows", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--atol", type=float, default=1e-4, show_default=True, callback=_tolerance,
              help="Largest logit difference vs PyTorch.")
@click.option("--overwrite", is_flag=True, help="Replace an existing export directory.")
@handle_errors
def export(model: str, output: str, quantize: str | None, task: str, calibration_rows: int, atol: float,
           overwrite: bool) -> None:
    """Export MODEL (a compresskit or stock model directory) to ONNX for ONNX Runtime."""
    from compresskit.export import export_model
    from compresskit.modeling.loading import load_model

    loaded, tokenizer = load_model(model)
    calibration = None
    if quantize == "int8-static":
        from compresskit.data.loading import load_splits, resolve_task

        train = load_splits(resolve_task(task), ["train"], max_train_samples=calibration_rows)["train"]
        fields = [f for f in ("text_a", "text_b") if f in train.column_names]
        calibration = [[row[f] for f in fields] for row in train]
    manifest = export_model(loaded, tokenizer, output, quantize=quantize, atol=atol, overwrite=overwrite,
                            calibration=calibration)
    click.echo(f"exported {manifest['kind']} model to {output}: {len(manifest['graphs'])} graph(s), "
               f"max |logit diff| vs PyTorch {manifest['max_abs_diff']:.1e}"
               + (", INT8 graphs written" if quantize else ""))


@main.command()
@click.argument("export_dir", type=click.Path(file_okay=False))
@click.option("--text", "texts", multiple=True, help="A text to classify (repeatable).")
@click.option("--pair", "pairs", multiple=True, nargs=2, help="A sentence pair (repeatable).")
@click.option("--file", "file", type=click.Path(dir_okay=False),
              help="One text per line (.txt; 'a<TAB>b' for pairs), or .csv/.jsonl with --column(s).")
@click.option("--column", "columns", multiple=True, help="Text column(s) of a csv/jsonl file (two for pairs).")
@click.option("--int8", is_flag=True, help="Use the INT8 graphs.")
@click.option("--runtime", type=click.Choice(["onnxruntime", "openvino"]), default="onnxruntime", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: OpenVINO only (CPUs with AVX512-BF16/AMX).")
@click.option("--max-length", type=LENGTH, default=128, show_default=True, help="Longer inputs are truncated.")
@click.option("--batch-size", type=POSITIVE, default=32, show_default=True)
@handle_errors
def predict(export_dir: str, texts: tuple[str, ...], pairs: tuple[tuple[str, str], ...], file: str | None,
            columns: tuple[str, ...], int8: bool, runtime: str, precision: str, max_length: int,
            batch_size: int) -> None:
    """Classify texts with an exported model; prints one JSON line per input."""
    from compresskit.export import OnnxClassifier
    from compresskit.export.inputs import read_inputs

    inputs = read_inputs(texts, pairs, file, columns)
    model = OnnxClassifier.from_pretrained(export_dir, quantized=int8, runtime=runtime, precision=precision)
    for result in model.predict(inputs, batch_size=batch_size, max_length=max_length):
        click.echo(json.dumps(result))


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--task", default="rotten_tomatoes", show_default=True,
              help="Task whose texts are used: a known name or a YAML file with a task mapping.")
@click.option("--split", default="test", show_default=True)
@click.option("--examples", type=POSITIVE, default=256, show_default=True)
@click.option("--batch-sizes", default="1,32", show_default=True, help="Comma-separated.")
@click.option("--max-length", type=LENGTH, default=64, show_default=True)
@click.option("--repeats", type=POSITIVE, default=3, show_default=True, help="Passes over the examples per model.")
@click.option("--threads", type=POSITIVE, default=None, help="torch and ONNX Runtime threads (default: torch's).")
@click.option("--turn-examples", type=POSITIVE, default=32, show_default=True,
              help="Examples each model runs per turn (after one untimed call) before the next model's turn.")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Also write the results as JSON.")
@handle_errors
def benchmark(paths: tuple[str, ...], task: str, split: str, examples: int, batch_sizes: str, max_length: int,
              repeats: int, threads: int | None, turn_examples: int, output: str | None) -> None:
    """Latency (median, p90) and throughput of models and exports side by side.

    An export runs on ONNX Runtime fp32; DIR:int8 its INT8 graphs; DIR:openvino,
    DIR:openvino-bf16 and DIR:openvino-int8 (its INT8 graphs) on OpenVINO."""
    from compresskit.benchmark import benchmark as run_benchmark
    from compresskit.benchmark import markdown

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"expected positive numbers like 1,32, got {batch_sizes!r}",
                                 param_hint="--batch-sizes")
    result = run_benchmark(list(paths), task=task, split=split, examples=examples, batch_sizes=sizes,
                           max_length=max_length, repeats=repeats, threads=threads, turn_examples=turn_examples)
    click.echo(markdown(result))
    if output:
        Path(output).write_text(json.dumps(result, indent=2))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--measure", is_flag=True, help="Time every stage's model side by side (else: FLOPs speed-up).")
@click.option("--batch-size", type=POSITIVE, default=32, show_default=True, help="Batch size of --measure.")
@handle_errors
def report(run_dir: str, measure: bool, batch_size: int) -> None:
    """Write RUN_DIR/report/report.md: per-stage table, accuracy vs speed-up plot, layer usage."""
    from compresskit.report.markdown import write_report

    click.echo(f"wrote {write_report(run_dir, measure=measure, batch_size=batch_size)}")

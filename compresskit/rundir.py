"""The run directory's rules and the facts a run is fingerprinted by.

A run directory is compresskit's (`.compresskit-run` marks it): never the current directory or
one of its ancestors, never a directory of someone else's files; only what compresskit wrote is
removed from it. A stage's fingerprint hashes the contents of what it reads (model and data files)
with the package versions, so a stage is reused only when its inputs are really the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import re
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from compresskit.data.tasks import TaskSpec
from compresskit.errors import CompressKitError
from compresskit.files import tree_digest
from compresskit.modeling.loading import resolve_model_path

log = logging.getLogger(__name__)

PACKAGES = ("compresskit", "torch", "transformers", "datasets", "accelerate", "torch-pruning",
            "optimum", "optimum-onnx", "onnxruntime", "pydantic")
MARKER = ".compresskit-run"  # a run directory compresskit made (it removes files only in those)
STAGE_DIR = re.compile(r"^\d{2}-[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def check_run_dir(run_dir: Path) -> Path:
    """The run directory, resolved; refused if it is the current directory or contains it, or if it
    holds files that compresskit did not write."""
    resolved, cwd = run_dir.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise CompressKitError(f"run directory {run_dir} is the current directory or one of its parents; "
                               "compresskit writes and removes files there. Choose another --output-dir "
                               "(or recipe name)")
    if resolved.is_file():
        raise CompressKitError(f"run directory {run_dir} is a file; choose another --output-dir")
    if resolved.is_dir() and not (resolved / MARKER).exists() and any(resolved.iterdir()):
        legacy = resolved / "environment.json"  # a run directory of compresskit before the marker
        try:
            ours = "compresskit" in json.loads(legacy.read_text()).get("packages", {})
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            example = sorted(p.name for p in resolved.iterdir())[0]
            raise CompressKitError(f"run directory {run_dir} already holds files compresskit did not write (e.g. "
                                   f"{example!r}); choose another --output-dir, or empty it")
    return resolved


def input_digest(name: str) -> str:
    """The contents of a model or data source a run reads: a sha256 of its files, or its name for a hub id."""
    path = Path(resolve_model_path(name))
    return tree_digest(path) if path.exists() else f"hub:{name}"


def data_digest(task: TaskSpec) -> list[str]:
    """The contents of a task's data: a sha256 per file, or the hub name."""
    if task.source == "files":
        return [tree_digest(Path(f)) for _, f in sorted((task.data_files or {}).items())]
    if task.source == "packaged":
        from compresskit import assets

        return [tree_digest(assets.resolve(task.name, "task"))]
    return [f"hub:{task.path}/{task.subset}"]


def remove_stale(stages_dir: Path, keep: set[str]) -> None:
    """Remove stale or half-written stage directories of compresskit's; leave anything else alone."""
    for path in stages_dir.iterdir():
        ours = path.is_dir() and (path.name.startswith((".tmp-", ".checkpoint-")) or (
            STAGE_DIR.match(path.name) and ((path / "stage.json").exists() or (path / ".complete").exists())))
        if path.name not in keep and ours:
            shutil.rmtree(path)
        elif path.name not in keep:
            log.warning("leaving %s alone: compresskit did not write it", path)

"""Tasks (text fields, labels, metrics) and their data sources."""

from compresskit.data.loading import load_splits, resolve_task, tokenize
from compresskit.data.tasks import KNOWN_TASKS, TaskSpec

__all__ = ["KNOWN_TASKS", "TaskSpec", "load_splits", "resolve_task", "tokenize"]

"""Task metrics, with scikit-learn's / SciPy's definitions (GLUE's official ones)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from compresskit.data.tasks import TaskSpec


def predictions(task: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Class indices, or the scalar score of a regression task."""
    return logits[:, 0] if task.is_regression else logits.argmax(-1)


def compute_metrics(task: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    preds = predictions(task, np.asarray(logits))
    labels = np.asarray(labels)
    out: dict[str, float] = {}
    for name in task.metrics:
        if name == "accuracy":
            out[name] = float(accuracy_score(labels, preds))
        elif name == "f1":
            # binary F1 of class 1 (GLUE's MRPC/QQP convention); macro for more classes
            average = "binary" if task.num_labels == 2 else "macro"
            out[name] = float(f1_score(labels, preds, average=average, zero_division=0))
        elif name == "matthews_correlation":
            out[name] = float(matthews_corrcoef(labels, preds))
        elif name in ("pearson", "spearman"):
            out[name] = _correlation(name, preds, labels)
    return out


def _correlation(name: str, preds: np.ndarray, labels: np.ndarray) -> float:
    """Pearson or Spearman; 0 where it is undefined (constant predictions or labels, one example):
    such a model predicts nothing of the labels, and a NaN would poison the best-epoch choice and
    the report's JSON."""
    if len(preds) < 2 or np.ptp(preds) == 0 or np.ptp(labels) == 0 or not np.isfinite(preds).all():
        return 0.0
    value = float((pearsonr if name == "pearson" else spearmanr)(preds, labels)[0])
    return value if np.isfinite(value) else 0.0

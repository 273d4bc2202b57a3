"""Task metrics agree with scikit-learn / SciPy on the predictions the model would make."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from compresskit.data.tasks import KNOWN_TASKS
from compresskit.evaluation.metrics import compute_metrics

rng = np.random.default_rng(0)


@pytest.mark.parametrize("name", [n for n, t in KNOWN_TASKS.items() if not t.is_regression])
def test_classification_metrics_match_sklearn(name):
    task = KNOWN_TASKS[name]
    logits = rng.normal(size=(200, task.num_labels))
    labels = rng.integers(0, task.num_labels, size=200)
    preds = logits.argmax(-1)
    expected = {
        "accuracy": accuracy_score(labels, preds),
        "f1": f1_score(labels, preds) if task.num_labels == 2 else f1_score(labels, preds, average="macro"),
        "matthews_correlation": matthews_corrcoef(labels, preds),
    }
    got = compute_metrics(task, logits, labels)
    assert set(got) == set(task.metrics)
    for metric, value in got.items():
        assert value == pytest.approx(expected[metric])


def test_regression_metrics_use_the_scalar_output():
    task = KNOWN_TASKS["stsb"]
    labels = rng.uniform(0, 5, size=100)
    logits = (labels + rng.normal(scale=0.5, size=100))[:, None]
    got = compute_metrics(task, logits, labels)
    assert got["pearson"] == pytest.approx(pearsonr(logits[:, 0], labels)[0])
    assert got["spearman"] == pytest.approx(spearmanr(logits[:, 0], labels)[0])


def test_known_values():
    task = KNOWN_TASKS["mrpc"]  # f1 first, then accuracy
    logits = np.array([[0, 1], [0, 1], [1, 0], [1, 0]], dtype=float)
    got = compute_metrics(task, logits, np.array([1, 0, 0, 1]))
    assert got == {"f1": 0.5, "accuracy": 0.5}
    assert compute_metrics(KNOWN_TASKS["cola"], logits, np.array([1, 1, 0, 0]))["matthews_correlation"] == 1.0


def test_glue_tasks_are_all_there_with_their_fields():
    glue = {n: t for n, t in KNOWN_TASKS.items() if t.source == "hub"}
    assert set(glue) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"}
    assert glue["mnli"].num_labels == 3 and glue["mnli"].splits["validation"] == "validation_matched"
    assert glue["stsb"].is_regression and len(glue["qqp"].text_fields) == 2


def test_a_correlation_of_constant_predictions_is_zero_not_nan():
    from compresskit.data.tasks import TaskSpec
    from compresskit.evaluation.metrics import compute_metrics

    task = TaskSpec(name="sts", source="files", data_files={"train": "x.csv"}, text_fields=["a", "b"],
                    num_labels=1, metrics=["pearson", "spearman"])
    constant = compute_metrics(task, np.full((4, 1), 0.3), np.array([0.0, 1.0, 2.0, 3.0]))
    assert constant == {"pearson": 0.0, "spearman": 0.0}
    perfect = compute_metrics(task, np.array([[0.0], [1.0], [2.0], [3.5]]), np.array([0.0, 1.0, 2.0, 3.0]))
    assert perfect["spearman"] == 1.0 and perfect["pearson"] > 0.99

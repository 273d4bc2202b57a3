"""Resolve a model name (packaged asset, local directory or hub name) to a model + tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from compresskit import assets
from compresskit.data.tasks import TaskSpec
from compresskit.errors import CompressKitError
from compresskit.modeling.model import CompressedModelForSequenceClassification

log = logging.getLogger(__name__)


def resolve_model_path(name: str) -> str:
    packaged = assets.resolve(name, "model")
    return str(packaged) if packaged is not None else name


def load_model(name: str, task: TaskSpec | None = None
               ) -> tuple[CompressedModelForSequenceClassification, PreTrainedTokenizerBase]:
    """A sequence classifier for `task` (a fresh head if the checkpoint has none) and its tokenizer."""
    path = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        local = "a local directory" if Path(path).exists() else "not a local directory"
        raise CompressKitError(
            f"model {name!r} could not be loaded ({local}; packaged models: "
            f"{', '.join(a for a, x in assets.ASSETS.items() if x.kind == 'model')}; "
            f"hub names need a network): {str(err).splitlines()[0]}"
        ) from None
    kwargs = {}
    if task is not None:
        has_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        if has_head and config.num_labels != task.num_labels:
            raise CompressKitError(
                f"model {name!r} has a {config.num_labels}-label head but task {task.name!r} has "
                f"{task.num_labels} labels; start from the encoder without a head or a matching model"
            )
        if not has_head and config.model_type != "compresskit":
            log.warning("model %r has no classification head: a fresh one is initialised (train it with "
                        "a finetune stage before trusting its predictions)", name)
        if config.model_type != "compresskit":
            labels = task.labels or [str(i) for i in range(task.num_labels)]
            kwargs = {"num_labels": task.num_labels, "id2label": dict(enumerate(labels)),
                      "label2id": {n: i for i, n in enumerate(labels)}}
            if task.is_regression:
                kwargs["problem_type"] = "regression"
    model = CompressedModelForSequenceClassification.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer

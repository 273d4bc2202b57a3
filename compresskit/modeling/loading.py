"""Resolve a model name (packaged asset, local directory or hub name) to a model + tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from compresskit import assets
from compresskit.data.tasks import TaskSpec
from compresskit.errors import CompressKitError
from compresskit.modeling.model import CompressedModelForSequenceClassification

log = logging.getLogger(__name__)


def resolve_model_path(name: str) -> str:
    packaged = assets.resolve(name, "model")
    return str(packaged) if packaged is not None else name


def check_model_directory(name: str, path: str) -> None:
    """A local model directory must hold a config and safetensors weights (pickle can run code when loaded)."""
    directory = Path(path)
    if not directory.exists():
        if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a hub id (`name`, `org/name`)
            raise CompressKitError(f"model {name!r}: no such directory (and not a packaged model: "
                                   f"{', '.join(a for a, x in assets.ASSETS.items() if x.kind == 'model')})")
        return  # a hub id: its config is fetched next (and fails without a network)
    if not directory.is_dir():
        raise CompressKitError(f"model {name!r} is a file; give the model's directory (config.json + weights)")
    if (directory / "compresskit_export.json").exists():
        raise CompressKitError(f"{name} is an ONNX export, not a PyTorch model: evaluate or export the model "
                               "directory it was made from, and use `compresskit predict` / `benchmark` on the export")
    if not (directory / "config.json").is_file():
        raise CompressKitError(f"model directory {name} has no config.json")
    if not any(directory.glob("*.safetensors")):
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        what = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
        raise CompressKitError(
            f"model directory {name} holds {what}; compresskit loads safetensors only (unpickling a file can run "
            "arbitrary code). If you trust its origin, convert it once: python -c \"import sys; from transformers "
            "import AutoModel as M; M.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])\" "
            f"{name} CONVERTED_DIR (AutoModelForSequenceClassification for a classifier), then use CONVERTED_DIR"
        )


def load_model(name: str, task: TaskSpec | None = None, seed: int = 0
               ) -> tuple[CompressedModelForSequenceClassification, PreTrainedTokenizerBase]:
    """A sequence classifier for `task` (a fresh head if the checkpoint has none) and its tokenizer.

    A fresh head is drawn from its own generator seeded with `seed`, so loading is deterministic
    and leaves the global random state alone.
    """
    path = resolve_model_path(name)
    check_model_directory(name, path)
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
            log.warning("model %r has no classification head: a fresh one is initialised (seed %d; train it "
                        "with a finetune stage before trusting its predictions)", name, seed)
        if config.model_type != "compresskit":
            labels = task.labels or [str(i) for i in range(task.num_labels)]
            kwargs = {"num_labels": task.num_labels, "id2label": dict(enumerate(labels)),
                      "label2id": {n: i for i, n in enumerate(labels)}}
            if task.is_regression:
                kwargs["problem_type"] = "regression"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CompressedModelForSequenceClassification.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer

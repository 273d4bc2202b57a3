"""Tiny random models and a small synthetic task, built offline in seconds; a hermetic environment."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

# Hermetic: the unit suite never reads or writes the user's caches (packaged assets, Hugging Face
# datasets/models) and never asks a hub, whatever is installed where. Set before transformers and
# datasets are imported (they read these once). The slow tests read the real packaged assets
# (USER_ASSET_CACHE). Subprocesses (the CLI, DDP) inherit the same environment.
USER_ASSET_CACHE = os.environ.get("COMPRESSKIT_CACHE") or str(Path.home() / ".cache" / "compresskit")
_SANDBOX = Path(tempfile.mkdtemp(prefix="compresskit-tests-"))
atexit.register(shutil.rmtree, _SANDBOX, ignore_errors=True)
os.environ.update(COMPRESSKIT_CACHE=str(_SANDBOX / "compresskit"), HF_HOME=str(_SANDBOX / "huggingface"),
                  HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

import pytest
import torch
import yaml
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertTokenizerFast,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    MPNetConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

from tests.synthetic import (  # noqa: E402,F401 (the tests import them from here too)
    FILLER,
    NEGATIVE,
    POSITIVE,
    SPECIAL,
    VOCAB,
    make_pair_files,
    make_regression_files,
    make_task_files,
    sentence,
    task_spec,
)

# Tiny models gain nothing from threads, and one thread per test process keeps a shared
# 2-core machine from thrashing (subprocesses inherit the variable).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

TINY = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64, num_labels=2)
WIDE = {**TINY, "hidden_size": 64, "intermediate_size": 96}
CONFIGS = {
    "bert": lambda: BertConfig(**TINY),
    # RoBERTa offsets positions by padding_idx + 1
    "roberta": lambda: RobertaConfig(**{**TINY, "max_position_embeddings": 70}, pad_token_id=0),
    "mpnet": lambda: MPNetConfig(**{**TINY, "max_position_embeddings": 70}, pad_token_id=0),
    # the architectures added later, at the size the support table names (hidden 64, 4 layers, 4 heads)
    "xlm-roberta": lambda: XLMRobertaConfig(**{**WIDE, "max_position_embeddings": 70}, pad_token_id=0),
    "electra": lambda: ElectraConfig(**WIDE, embedding_size=32),  # narrower embeddings, projected
    "distilbert": lambda: DistilBertConfig(vocab_size=len(VOCAB), dim=64, n_layers=4, n_heads=4, hidden_dim=96,
                                           max_position_embeddings=64, pad_token_id=0, num_labels=2),
    # DeBERTa-v3's layout: relative attention over log buckets, shared key projections, no absolute positions
    "deberta-v2": lambda: DebertaV2Config(**WIDE, relative_attention=True, position_buckets=8,
                                          max_relative_positions=64, pos_att_type=["p2c", "c2p"], share_att_key=True,
                                          norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0,
                                          pad_token_id=0),
    # every second layer attends within a window of 4 tokens either side (shorter than the tiny task's rows)
    "modernbert": lambda: ModernBertConfig(**WIDE, global_attn_every_n_layers=2, local_attention=8, pad_token_id=0,
                                           bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3),
}


def make_tokenizer(directory: Path) -> BertTokenizerFast:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    tokenizer.save_pretrained(directory)
    return tokenizer


def make_model_dir(directory: Path, backbone: str = "bert", seed: int = 0) -> Path:
    """A stock HF sequence classifier with random weights, saved with its tokenizer."""
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(CONFIGS[backbone]())
    model.save_pretrained(directory)
    make_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-bert"))


def make_encoder_dir(directory: Path, backbone: str = "bert", seed: int = 1) -> Path:
    """An encoder without a classification head (as the packaged ones are): loading draws a fresh head."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    AutoModel.from_config(CONFIGS[backbone]()).save_pretrained(directory)
    make_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    return make_encoder_dir(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def tiny_task_file(tmp_path_factory, tiny_task) -> Path:
    """The tiny task as a YAML file (what `--task FILE` takes)."""
    path = tmp_path_factory.mktemp("tiny-task-file") / "task.yaml"
    path.write_text(yaml.safe_dump(tiny_task))
    return path


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> dict:
    return task_spec(make_task_files(tmp_path_factory.mktemp("tiny-task")))


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir, tiny_task):
    """Write a two-stage fine-tune recipe on the tiny model and task; returns its path."""

    def write(stages: list[dict] | None = None, **top) -> Path:
        recipe = {
            "version": 1, "name": "tiny", "seed": 7, "model": str(tiny_model_dir), "task": tiny_task,
            "data": {"max_length": 16},
            "evaluation": {"split": "validation", "final_splits": ["test"], "batch_size": 16, "flops_examples": 8,
                           "latency_examples": 0},
            "stages": stages or [
                {"strategy": "finetune", "name": "teacher", "epochs": 2, "learning_rate": 1e-3, "batch_size": 16},
                {"strategy": "finetune", "name": "again", "epochs": 1, "learning_rate": 5e-4, "batch_size": 16},
            ],
            **top,
        }
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Cli:
    """`compresskit ARGS` as a process of its own (tests/cli_zygote.py): real exit codes, real stderr."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.lock = threading.Lock()
        self.count = 0
        self.process = subprocess.Popen([sys.executable, "-m", "tests.cli_zygote"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
        assert json.loads(self.process.stdout.readline()) == {"ready": True}

    def __call__(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
        with self.lock:
            self.count += 1
            out, err = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
            request = {"args": [str(a) for a in args], "cwd": str(cwd or Path.cwd()),
                       "env": {**os.environ, **(env or {})}, "stdout": str(out), "stderr": str(err)}
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            code = json.loads(self.process.stdout.readline())["code"]
        return CliResult(code, out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    runner = Cli(tmp_path_factory.mktemp("cli"))
    yield runner
    runner.close()


def console_script(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                   timeout: float = 600) -> CliResult:
    """The installed `compresskit` executable itself, in a subprocess (slow: imports every time)."""
    done = subprocess.run([str(Path(sys.executable).with_name("compresskit")), *map(str, args)], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    return CliResult(done.returncode, done.stdout, done.stderr)


def single_threaded_after_fork() -> None:
    """For a test's forked child: a child forked after the parent's OpenMP pool ran with two or more
    threads crashed (SIGSEGV) or hung in its first parallel region (seen at OMP_NUM_THREADS=2);
    with one thread it never enters the stale pool."""
    torch.set_num_threads(1)

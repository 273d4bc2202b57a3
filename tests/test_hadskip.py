"""HadSkip: the ReinMax estimator, the budget penalty, and the strategy end to end on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from compresskit.modeling import CompressedConfig, CompressedModelForSequenceClassification
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from compresskit.strategies.hadskip import HadSkipConfig, budget_schedule, gated, stage3_loss
from compresskit.training.estimators import reinmax, straight_through
from tests.conftest import CONFIGS
from tests.test_modeling import inputs


def softmax_jacobian(p: torch.Tensor) -> torch.Tensor:
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


@pytest.mark.parametrize("tau", [1.0, 1.5, 3.0])
def test_reinmax_gradient_is_the_reference_estimators(tau):
    """The gradient of the reference estimator (microsoft/ReinMax, `ReinMaxCore.backward`), written out:
    d out / d logits = 2 J(pi_1) - J(softmax(logits)) / 2 with pi_1 = (D + softmax(logits / tau)) / 2
    and J(q) = diag(q) - q q^T. The temperature enters the midpoint only; the -1/2 term is untempered."""
    torch.manual_seed(0)
    logits = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    sample = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0, 1, 0]), 2).double()
    out = reinmax(logits, tau, sample)
    assert torch.equal(out.detach(), sample[:, 1])  # the forward pass is the hard sample
    weights = torch.randn(6, dtype=torch.float64)
    (out * weights).sum().backward()

    upstream = torch.stack([torch.zeros(6, dtype=torch.float64), weights], 1)  # out reads the "run" column
    shifted = 0.5 * (torch.softmax(logits.detach() / tau, -1) + sample)
    probs = torch.softmax(logits.detach(), -1)
    expected = (torch.einsum("bij,bi->bj", softmax_jacobian(shifted), 2 * upstream)
                + torch.einsum("bij,bi->bj", softmax_jacobian(probs), -0.5 * upstream))
    expected = expected - expected.mean(-1, keepdim=True)  # the reference centres it (a no-op here)
    torch.testing.assert_close(logits.grad, expected)


def test_straight_through_gradient_is_the_softmax_gradient():
    logits = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    sample = torch.nn.functional.one_hot(torch.tensor([1, 0, 1, 1]), 2).double()
    straight_through(logits, 1.0, sample).sum().backward()
    p = torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(logits.grad, softmax_jacobian(p)[:, 1, :])


def test_reinmax_rejects_a_temperature_below_one():
    with pytest.raises(ValueError, match="tau >= 1"):
        reinmax(torch.zeros(2, 2), tau=0.5)


def test_homotopic_schedule():
    assert budget_schedule(6, 3, True) == [6.0, 5.0, 4.0, 3.0]
    assert budget_schedule(6, 2.5, True) == [6.0, 5.0, 4.0, 3.0, 2.5]
    assert budget_schedule(6, 3, False) == [3.0]


@pytest.mark.parametrize("gate_forward", ["argmax", "sample"])
def test_the_budget_penalty_moves_the_gate_mean_toward_the_budget(gate_forward):
    """With argmax gates the share of layers that run at inference reaches the budget; with
    sampled gates only the expected gate P(run) does (what the penalty then acts on)."""
    torch.manual_seed(0)
    base = CompressedModelForSequenceClassification(CompressedConfig.from_backbone_config(CONFIGS["bert"]()))
    cfg = HadSkipConfig(strategy="hadskip", budget=3, beta=50.0, gate_forward=gate_forward)
    model = gated(base, cfg).train()
    batch = {**inputs(batch=16), "labels": torch.randint(0, 2, (16,))}
    optimizer = torch.optim.Adam(model.gates.parameters(), lr=0.01)

    def gate_mean() -> float:
        with torch.no_grad():
            out = model.eval()(**{k: v for k, v in batch.items() if k != "labels"}, dynamic=False)
        model.train()
        if gate_forward == "argmax":
            return float(out.layer_mask.float().mean())
        return float(torch.stack([torch.softmax(x, -1)[:, 1] for x in out.gate_logits.values()]).mean())

    before = gate_mean()
    for _ in range(100):
        optimizer.zero_grad()
        stage3_loss(model, batch, teacher=None, target=0.75, cfg=cfg).backward()
        optimizer.step()
    after = gate_mean()
    assert abs(before - 0.75) > 0.2, before  # fresh gates are far from the budget
    assert abs(after - 0.75) < 0.05, (before, after)


def test_hadskip_stage_trains_gates_that_skip_and_reloads(tiny_recipe, tmp_path):
    recipe = tiny_recipe([
        {"strategy": "finetune", "name": "teacher", "epochs": 6, "learning_rate": 2e-3, "batch_size": 8},
        {"strategy": "hadskip", "name": "skip", "budget": 2, "gate_epochs": 2, "epochs_per_budget": 2,
         "learning_rate": 1e-3, "gate_learning_rate": 5e-3, "batch_size": 8, "beta": 5.0},
    ])
    run_dir = tmp_path / "run"
    report = Pipeline(load_recipe(recipe), run_dir).run()
    skip = report["stages"][1]
    assert skip["info"]["schedule"] == [4.0, 3.0, 2.0]
    usage = skip["info"]["layer_usage"]
    assert len(usage["per_layer"]) == 4 and sum(usage["histogram"]) == pytest.approx(1.0)
    assert report["final"]["validation"]["avg_layers"] < 4.0  # layers really are skipped
    assert report["final"]["flops_per_example"] < report["baseline"]["flops_per_example"]
    assert (run_dir / "stages" / "01-skip" / "layer_usage.png").exists()
    saved = json.loads((run_dir / "stages" / "01-skip" / "model" / "config.json").read_text())
    assert all(layer["gate"] for layer in saved["layers"]) and saved["gate"]["hidden_size"] == 64


class Killed(Exception):
    pass


def test_a_killed_hadskip_run_resumes_after_its_last_finished_phase(tiny_recipe, tmp_path, monkeypatch):
    """Each phase is checkpointed; the resumed run ends where an uninterrupted one does."""
    import compresskit.strategies.hadskip as hadskip
    from compresskit.modeling.loading import load_model

    stage = {"strategy": "hadskip", "name": "skip", "budget": 2, "gate_epochs": 1, "epochs_per_budget": 1,
             "learning_rate": 1e-3, "batch_size": 16, "save_budgets": True}
    recipe = tiny_recipe([stage])
    Pipeline(load_recipe(recipe), tmp_path / "whole").run()

    real_train, calls, killed = hadskip.train, [], []

    def train(*args, desc="", **kwargs):
        calls.append(desc)
        if desc.endswith("s=2") and not killed:
            killed.append(desc)
            raise Killed  # the process dies in the last phase
        return real_train(*args, desc=desc, **kwargs)

    monkeypatch.setattr(hadskip, "train", train)
    with pytest.raises(Killed):
        Pipeline(load_recipe(recipe), tmp_path / "killed").run()
    assert calls == ["skip II", "skip III s=4", "skip III s=3", "skip III s=2"]
    calls.clear()
    Pipeline(load_recipe(recipe), tmp_path / "killed").run()
    assert calls == ["skip III s=2"]  # the finished phases were loaded, not trained again

    whole, _ = load_model(str(tmp_path / "whole" / "stages" / "00-skip" / "model"))
    resumed, _ = load_model(str(tmp_path / "killed" / "stages" / "00-skip" / "model"))
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    budgets = tmp_path / "killed" / "stages" / "00-skip" / "budgets"
    assert sorted(p.name for p in budgets.iterdir()) == ["s3", "s4"]  # every budget's model, reloadable
    assert load_model(str(budgets / "s3"))[0].config.layers[0]["gate"]


PREDICTION_ONLY = {"alpha_hidden": 0, "alpha_attention": 0, "alpha_embedding": 0}


def test_stage3_learns_cached_predictions_without_running_f_v():
    """With another stage's logits in the batch and only the prediction term on, the loss is
    task + budget + KL to those logits, and f_v's forward pass is spared."""
    torch.manual_seed(0)
    base = CompressedModelForSequenceClassification(CompressedConfig.from_backbone_config(CONFIGS["bert"]()))
    cfg = HadSkipConfig(strategy="hadskip", budget=3, beta=2.0, **PREDICTION_ONLY)
    model = gated(base, cfg).train()
    target = torch.randn(8, 2)
    batch = {**inputs(batch=8), "labels": torch.randint(0, 2, (8,)), "teacher_logits": target}

    class Untouchable(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("f_v ran although the predictions were cached")

    torch.manual_seed(1)  # the same dropout masks in both passes
    loss = stage3_loss(model, batch, teacher=Untouchable(), target=0.75, cfg=cfg)
    torch.manual_seed(1)
    out = model(**inputs(batch=8) | {"labels": batch["labels"]})
    gates = torch.stack([out.gate_values[i] for i in sorted(out.gate_values)], 1)
    kl = torch.nn.functional.kl_div(out.logits.log_softmax(-1), target.log_softmax(-1), log_target=True,
                                    reduction="batchmean")
    torch.testing.assert_close(loss, out.loss + 2.0 * (gates.mean() - 0.75) ** 2 + kl)


def test_hadskip_learns_the_teachers_predictions_labelled_once_for_the_whole_run(tiny_recipe, tmp_path, caplog):
    """`teacher: <stage>`: stage III learns that stage's predictions; the distill stage labelled the same
    rows with the same teacher already, so HadSkip reads its cached logits instead of running it again."""
    caplog.set_level("INFO")
    recipe = tiny_recipe([
        {"strategy": "finetune", "name": "teacher", "epochs": 2, "learning_rate": 2e-3, "batch_size": 8},
        {"strategy": "distill", "name": "student", "student_layers": [0, 1, 3], "intermediate_epochs": 0,
         "prediction_epochs": 1, "batch_size": 8},
        {"strategy": "hadskip", "name": "skip", "teacher": "teacher", "budget": 2, "gate_epochs": 1,
         "homotopic": False, "epochs_per_budget": 1, "batch_size": 8, **PREDICTION_ONLY},
    ])
    run_dir = tmp_path / "run"
    report = Pipeline(load_recipe(recipe), run_dir).run()
    assert report["final"]["stage"] == "skip"
    assert len(list((run_dir / "cache").glob("teacher-logits-*.pt"))) == 1  # one teacher, one labelling
    assert any("read from" in r.getMessage() and "teacher logits" in r.getMessage() for r in caplog.records)
    assert any("learns the predictions of 'teacher'" in r.getMessage() for r in caplog.records)


def test_a_hadskip_teacher_must_be_an_earlier_stage_read_by_distillation(tiny_recipe):
    with pytest.raises(Exception, match=r"stages\[0\].teacher"):
        load_recipe(tiny_recipe([{"strategy": "hadskip", "teacher": "later", "budget": 2},
                                 {"strategy": "finetune", "name": "later"}]))
    with pytest.raises(ValueError, match="only read by prediction distillation"):
        HadSkipConfig(strategy="hadskip", budget=2, teacher="teacher", distill=False)


def test_prediction_only_hadskip_labels_f_v_once_and_a_rerun_reads_the_labels(tiny_recipe, tmp_path, caplog):
    """Without `teacher` and with only the prediction term, f_v's predictions are labelled once into the
    run's cache (not recomputed every step); the stage rerun with another budget reads them back."""
    caplog.set_level("INFO")
    teacher = {"strategy": "finetune", "name": "teacher", "epochs": 2, "learning_rate": 2e-3, "batch_size": 8}
    skip = {"strategy": "hadskip", "name": "skip", "budget": 3, "gate_epochs": 1, "homotopic": False,
            "epochs_per_budget": 1, "batch_size": 8, **PREDICTION_ONLY}
    run_dir = tmp_path / "run"
    first = Pipeline(load_recipe(tiny_recipe([teacher, skip])), run_dir).run()
    assert first["final"]["validation"]["avg_layers"] < 4.0
    assert len(list((run_dir / "cache").glob("teacher-logits-*.pt"))) == 1
    assert not any("read from" in r.getMessage() for r in caplog.records)
    caplog.clear()
    Pipeline(load_recipe(tiny_recipe([teacher, {**skip, "budget": 2}])), run_dir).run()
    assert any(r.getMessage().startswith("teacher logits of") and "read from" in r.getMessage() for r in caplog.records)

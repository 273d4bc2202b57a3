"""ConsistentEE: memorized layers, the policy-gradient loss, and the strategy on a tiny model."""

from __future__ import annotations

import torch

from compresskit.modeling import CompressedModelForSequenceClassification
from compresskit.modeling.dynamic import PolicyRule
from compresskit.pipeline import Pipeline
from compresskit.recipe import load_recipe
from compresskit.strategies.consistentee import (
    ConsistentEEConfig,
    LayerStates,
    fit_policies,
    memorized_layer,
    policy_gradient_loss,
)

TEACHER = {"strategy": "finetune", "name": "teacher", "epochs": 6, "learning_rate": 2e-3, "batch_size": 8}


def test_memorized_layer_on_hand_made_prediction_sequences():
    # columns are examples, rows layers 1..4: is that layer's classifier right?
    correct = torch.tensor([
        [1, 0, 1, 0, 0, 1],
        [1, 1, 0, 0, 0, 1],
        [1, 1, 1, 1, 0, 1],
        [1, 1, 1, 1, 0, 0],
    ], dtype=torch.bool)
    # all right -> 1; right from 2 on -> 2; wrong at 2 -> 3; from 3 -> 3; never -> L; last wrong -> L
    assert memorized_layer(correct).tolist() == [1, 2, 3, 3, 4, 4]


def test_policy_gradient_favours_the_better_action_and_the_baseline_centres_rewards():
    torch.manual_seed(0)
    logit = torch.zeros(64, 1, requires_grad=True)  # one policy (L = 2), P(exit) = 0.5
    layer_ce = torch.zeros(64, 2)  # both classifiers right: exiting early only saves depth
    loss = policy_gradient_loss(torch.sigmoid(logit), layer_ce, torch.ones(64, dtype=torch.long), alpha=0.1,
                                rollouts=8, epsilon=0.0)
    loss.backward()
    assert logit.grad.sum() < 0  # gradient descent raises P(exit)

    logit.grad = None
    wrong_early = torch.tensor([[5.0, 0.0]]).repeat(64, 1)  # the early classifier is badly wrong
    policy_gradient_loss(torch.sigmoid(logit), wrong_early, torch.full((64,), 2), alpha=0.1, rollouts=8,
                         epsilon=0.0).backward()
    assert logit.grad.sum() > 0  # now continuing is better

    same = policy_gradient_loss(torch.full((4, 1), 0.5, requires_grad=True), torch.zeros(4, 2),
                                torch.full((4,), 2), alpha=0.1, rollouts=8, epsilon=0.0)
    assert same.item() == 0.0  # hard examples (m = L) with equal losses: no advantage, no update


def test_policies_trained_on_cached_states_exit_easy_examples_early_and_keep_hard_ones():
    torch.manual_seed(0)
    layers, n = 3, 256
    easy = torch.arange(n) % 2 == 0
    summaries = torch.randn(layers - 1, n, 8) * 0.1
    summaries[:, :, 0] += torch.where(easy, 1.0, -1.0)  # what tells the policies the two kinds apart
    # easy: every classifier right; hard: wrong until the last layer
    layer_ce = torch.where(easy[:, None], torch.full((n, layers), 0.05), torch.tensor([[2.0, 2.0, 0.05]]))
    memorized = torch.where(easy, 1, layers)
    rule = PolicyRule(layers, 8, policy_hidden=16)
    cfg = ConsistentEEConfig(strategy="consistentee", name="rl", policy_epochs=20, batch_size=32,
                             policy_learning_rate=1e-2, epsilon=0.1)
    fit_policies(rule, LayerStates(summaries, layer_ce, memorized), cfg, alpha=0.2, seed=0, desc="test")
    with torch.no_grad():
        first = rule.exit_probability(0, summaries[0])
    assert first[easy].min() > 0.5 and first[~easy].max() < 0.5


def test_a_policy_fit_does_not_depend_on_what_ran_before_it():
    states = LayerStates(torch.randn(2, 64, 8), torch.rand(64, 3), torch.randint(1, 4, (64,)))
    cfg = ConsistentEEConfig(strategy="consistentee", name="rl", policy_epochs=2, batch_size=16)
    untrained = PolicyRule(3, 8, policy_hidden=4).state_dict()

    def fit(other_draws: int) -> dict:
        torch.rand(other_draws)  # other work drawing from the global generator before this fit
        rule = PolicyRule(3, 8, policy_hidden=4)
        rule.load_state_dict(untrained)
        fit_policies(rule, states, cfg, alpha=0.1, seed=3, desc="test")
        return rule.state_dict()

    first, second = fit(10), fit(5000)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_consistentee_trains_policies_that_exit_and_reloads(tiny_recipe, tmp_path):
    stage = {"strategy": "consistentee", "name": "rl", "init_epochs": 3, "rounds": 2, "policy_epochs": 2,
             "task_epochs": 1, "alpha": 0.2, "learning_rate": 1e-3, "exit_learning_rate": 5e-3,
             "policy_learning_rate": 1e-2, "batch_size": 8, "exit_thresholds": [0.3, 0.5, 0.7]}
    report = Pipeline(load_recipe(tiny_recipe([TEACHER, stage])), tmp_path / "run").run()
    info = report["stages"][1]["info"]
    # memorized layers before each round's policy step and before the final one, on the rows not held out
    assert len(info["memorized_layer_counts"]) == 3
    assert sum(info["memorized_layer_counts"][0]) == 96 - info["calibration"]["examples"]
    table = info["calibration"]["table"]
    alphas = ConsistentEEConfig.model_fields["alphas"].default
    assert [(row["alpha"], row["threshold"]) for row in table] == [(a, t) for a in alphas for t in (0.3, 0.5, 0.7)]
    assert info["calibration"]["chosen"]["accuracy"] >= info["calibration"]["full_score"] - 0.01
    final = report["final"]["validation"]
    assert final["avg_layers"] < 4.0 and final["accuracy"] >= 0.8
    assert report["final"]["flops_per_example"] < report["baseline"]["flops_per_example"]
    # the calibrated threshold is part of the saved exit rule
    chosen = info["calibration"]["chosen"]["threshold"]
    reloaded = CompressedModelForSequenceClassification.from_pretrained(tmp_path / "run" / "stages" / "01-rl" / "model")
    assert reloaded.exit_rule.threshold == chosen and reloaded.config.exit_rule["threshold"] == chosen

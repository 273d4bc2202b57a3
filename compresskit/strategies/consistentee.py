"""`consistentee`: ConsistentEE (Zeng et al., 2024): early exit learned by reinforcement learning.

A policy network per layer decides exit / continue from the layer's summary ([CLS] state, or the
mean over tokens with `exit_pooling: mean`). Training, on the train split minus the rows held out
for calibration:
  1. initialise backbone and exit heads on the layer-weighted sum of their losses (weight i);
  2. compute each training example's memorized layer m (earliest layer from which every later
     classifier is right; L if the last one is wrong);
  3. train the policies with the backbone frozen: K rollouts per example, reward
     -CE_t - alpha * t * (1 - m/L) (hardness-guided; `reward: vanilla` drops (1 - m/L)), the
     mean reward of the K rollouts as baseline, epsilon-greedy exploration;
  4. train backbone and exit heads with the policies frozen: only the classifier at the layer
     where the policy exits an example gets its loss;
  5. repeat 2-4 for `rounds`; then 2-3 once more, so the policies match the final backbone.
Inference exits when P(exit) > 0.5 (or the threshold of `exit_thresholds` the calibration picks).

Step 3 runs on the layer states and losses computed once per round: with the backbone frozen
they do not change, so the policies train for many epochs in seconds instead of one epoch of
backbone passes (and without the dropout noise of a training-mode backbone). alpha is the
method's accuracy/speed knob: the last policy step trains one set of policies per candidate in
`alphas`, and the calibration keeps the one (with a P(exit) threshold from `exit_thresholds`) that
fits the recipe's goal on the held-out rows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import datasets
import torch
from pydantic import Field
from torch.nn import functional as F
from tqdm.auto import tqdm

from compresskit.data.batches import model_inputs
from compresskit.registry import register_strategy
from compresskit.stage import StageContext
from compresskit.training.calibration import all_exit_logits, choose_setting, full_score, replayed_metrics
from compresskit.training.early_exit import (
    EarlyExitStrategy,
    ExitStageConfig,
    backbone_and_exits,
    train_exits,
    weighted_exits_loss,
)
from compresskit.training.trainer import require_finite, unwrap


class ConsistentEEConfig(ExitStageConfig):
    """Recipe keys of a `consistentee` stage."""

    init_epochs: float = Field(1.0, ge=0, description="step 1: layer-weighted training of backbone and exits")
    rounds: int = Field(2, ge=0, description="repetitions of steps 2-4 (0: no task step with the policies, "
                        "the ablation: initialisation, then the final policy step)")
    policy_epochs: float = Field(5.0, gt=0, description="step 3 epochs over the cached layer states")
    task_epochs: float = Field(1.0, gt=0, description="step 4 epochs per round")
    rollouts: int = Field(8, ge=2, description="K trajectories per example; their mean reward is the baseline")
    epsilon: float = Field(0.1, ge=0, le=1, description="share of random actions (exploration)")
    alpha: float = Field(0.1, ge=0, description="weight of depth against accuracy in the reward during the rounds")
    alphas: list[float] = Field([round(0.01 + 0.005 * i, 3) for i in range(39)], min_length=1,
                                description="alpha candidates of the final policy step (one policy fit of a few "
                                "seconds each), chosen by `calibration`; depth drops off a cliff within 0.01 of "
                                "alpha, hence the fine grid")
    exit_thresholds: list[float] = Field([0.5], min_length=1, description="P(exit) thresholds tried with each "
                                         "alpha's policies in the calibration (the paper exits at P > 0.5; a "
                                         "grid adds a finer knob than alpha, whose depth moves in steps)")
    reward: Literal["hardness", "vanilla"] = Field("hardness", description="hardness: alpha scaled by 1 - m/L")
    policy_hidden: int = Field(32, ge=1)
    learning_rate: float = Field(2e-5, gt=0, description="backbone")
    exit_learning_rate: float = Field(5e-4, gt=0, description="exit heads (fresh modules)")
    policy_learning_rate: float = Field(1e-3, gt=0)


@register_strategy
class ConsistentEEStrategy(EarlyExitStrategy[ConsistentEEConfig]):
    """ConsistentEE: per-layer policy networks trained by policy gradient decide when to exit.

    Example stage::

        - strategy: consistentee
          rounds: 2
          alphas: [0.05, 0.1, 0.15]
          calibration: {max_accuracy_drop: 0.01}
    """

    name = "consistentee"
    regression_refusal = ("rewards its exit policies with each layer's cross-entropy and the layer from which "
                          "its class stays right, which a regression does not have")

    def rule(self):
        return {"name": "policy", "policy_hidden": self.config.policy_hidden}

    def fit(self, model, rows, state, ctx):
        cfg = self.config
        self._untrained = copy.deepcopy(model.exit_rule.state_dict())
        trainable = backbone_and_exits(model, cfg.exit_learning_rate)
        history: dict[str, Any] = {}

        def fit(name, epochs, loss):
            history[name] = train_exits(model, rows, state, ctx, epochs, cfg.learning_rate, cfg.batch_size, loss,
                                        name, parameters=trainable)

        if cfg.init_epochs > 0:
            fit("init", cfg.init_epochs, weighted_exits_loss)
        memorized_counts = []
        for r in range(cfg.rounds):
            states = LayerStates.of(model, rows, state.tokenizer)
            memorized_counts.append(states.memorized_counts())
            history[f"round {r + 1} policy"] = fit_policies(model.exit_rule, states, cfg, cfg.alpha, ctx.seed,
                                                            desc=f"{ctx.name} round {r + 1} policy")
            fit(f"round {r + 1} task", cfg.task_epochs, _consistent_task_loss)
        self._states = LayerStates.of(model, rows, state.tokenizer)  # what the final policy step learns from
        memorized_counts.append(self._states.memorized_counts())
        return model, {"history": history, "memorized_layer_counts": memorized_counts}

    def calibrate(self, model, heldout, state, ctx):
        return _calibrate_alpha(model, self._states, heldout, state.tokenizer, state.task, self._untrained, self.config,
                                ctx)


@dataclass
class LayerStates:
    """What the policies learn from, computed once with the backbone frozen (eval mode)."""

    summaries: torch.Tensor  # (L-1, N, H): what policy i reads after layer i+1
    layer_ce: torch.Tensor  # (N, L): each classifier's loss, the last layer's included
    memorized: torch.Tensor  # (N,): 1-based memorized layers

    @classmethod
    def of(cls, model, dataset: datasets.Dataset, tokenizer) -> LayerStates:
        logits, summaries, labels = all_exit_logits(model, dataset, tokenizer)
        layers = logits.shape[0]
        ce = F.cross_entropy(logits.flatten(0, 1), labels.repeat(layers), reduction="none").view(layers, -1).T
        return cls(summaries[:-1], ce, memorized_layer(logits.argmax(-1) == labels))

    def to(self, device: torch.device) -> LayerStates:
        return LayerStates(self.summaries.to(device), self.layer_ce.to(device), self.memorized.to(device))

    def memorized_counts(self) -> list[int]:
        return torch.bincount(self.memorized, minlength=self.layer_ce.shape[1] + 1)[1:].tolist()


def fit_policies(rule, states: LayerStates, cfg: ConsistentEEConfig, alpha: float, seed: int, desc: str
                 ) -> list[dict[str, float]]:
    """Step 3: REINFORCE on the cached states for `cfg.policy_epochs`; the mean loss per epoch.

    Batches and rollouts draw from a generator seeded here, so a fit does not depend on what ran
    before it (the alpha candidates are fitted one after another)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(rule.parameters(), lr=cfg.policy_learning_rate)
    device = next(rule.parameters()).device
    states = states.to(device)
    n = states.layer_ce.shape[0]
    steps = max(1, round(cfg.policy_epochs * n / cfg.batch_size))
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(int(cfg.policy_epochs) + 1)])
    rule.train()
    history, total = [], 0.0
    for step in tqdm(range(steps), desc=desc, leave=False):
        rows = order[step * cfg.batch_size:(step + 1) * cfg.batch_size].to(device)
        exit_prob = torch.stack([rule.exit_probability(i, s[rows]) for i, s in enumerate(states.summaries)], 1)
        loss = policy_gradient_loss(exit_prob, states.layer_ce[rows], states.memorized[rows], alpha, cfg.rollouts,
                                    cfg.epsilon, cfg.reward == "hardness", generator)
        optimizer.zero_grad()
        require_finite(loss, f"{desc} step {step + 1}")
        loss.backward()
        optimizer.step()
        total += loss.item()
        if (step + 1) % max(1, n // cfg.batch_size) == 0 or step + 1 == steps:
            history.append({"step": step + 1, "policy_loss": total / max(1, n // cfg.batch_size)})
            total = 0.0
    rule.eval()
    return history


def _calibrate_alpha(model, states: LayerStates, heldout: datasets.Dataset, tokenizer, task, untrained: dict,
                     cfg: ConsistentEEConfig, ctx: StageContext) -> dict[str, Any]:
    """Final step 3 once per alpha candidate (from the same untrained policies); keep the one the
    calibration goal picks on the held-out rows."""
    logits, summaries, labels = all_exit_logits(model, heldout, tokenizer)
    full = full_score(logits, labels, task)
    table, weights = [], {}
    for alpha in cfg.alphas:
        model.exit_rule.load_state_dict(untrained)
        fit_policies(model.exit_rule, states, cfg, alpha, ctx.seed, desc=f"{ctx.name} policy alpha={alpha}")
        weights[alpha] = copy.deepcopy(model.exit_rule.state_dict())
        for threshold in cfg.exit_thresholds:
            model.exit_rule.threshold = threshold
            table.append({"alpha": alpha, "threshold": threshold,
                          **replayed_metrics(model, logits, summaries, labels, task)})
    if ctx.goal is not None:
        def timed(row: dict[str, Any]) -> dict[str, float]:
            model.exit_rule.load_state_dict(weights[row["alpha"]])
            model.exit_rule.threshold = row["threshold"]
            return ctx.goal.timing(model, heldout, tokenizer)
        chosen = ctx.goal.choose(table, "alpha and threshold", timed)
    else:
        chosen = choose_setting(table, full, cfg.calibration, "alpha and threshold", task.main_metric)
    model.exit_rule.load_state_dict(weights[chosen["alpha"]])
    model.exit_rule.threshold = chosen["threshold"]
    model.config.exit_rule = {**model.config.exit_rule, "threshold": chosen["threshold"]}
    return {"parameter": "alpha", "chosen": chosen, "metric": task.main_metric, "full_score": full, "table": table,
            "examples": int(labels.numel())}


def memorized_layer(correct: torch.Tensor) -> torch.Tensor:
    """(layers, examples) correctness -> 1-based earliest layer from which all later layers are right.

    An example the last layer gets wrong has never been memorized: L.
    """
    layers = correct.shape[0]
    suffix_all = torch.flip(torch.cumprod(torch.flip(correct.long(), [0]), 0), [0])  # right here and after
    trailing = suffix_all.sum(0)
    return torch.where(trailing > 0, layers - trailing + 1, torch.full_like(trailing, layers))


def policy_gradient_loss(exit_prob: torch.Tensor, layer_ce: torch.Tensor, memorized: torch.Tensor, alpha: float,
                         rollouts: int, epsilon: float, hardness: bool = True,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """REINFORCE over `rollouts` trajectories per example with their mean reward as the baseline.

    exit_prob: (N, L-1) P(exit) of the policies; layer_ce: (N, L) each classifier's loss (the
    last layer's included); memorized: (N,) 1-based memorized layers.
    """
    n, layers = layer_ce.shape
    p = exit_prob.unsqueeze(1).expand(n, rollouts, layers - 1)

    def uniform() -> torch.Tensor:
        # drawn on the host from the seeded generator, so every device sees the same rollouts
        return torch.rand(p.shape, generator=generator).to(p.device)

    sampled = uniform() < p.detach()
    random = uniform() < 0.5
    actions = torch.where(uniform() < epsilon, random, sampled)  # epsilon-greedy exploration
    forced = torch.ones(n, rollouts, 1, dtype=torch.bool, device=p.device)  # the last layer always exits
    exit_at = torch.cat([actions, forced], -1).float().argmax(-1)  # first exit, 0-based
    steps = torch.arange(layers - 1, device=p.device)
    log_continue = (torch.log1p(-p.clamp(max=1 - 1e-6)) * (steps < exit_at.unsqueeze(-1))).sum(-1)
    log_exit = torch.log(p.clamp(min=1e-6)).gather(-1, exit_at.clamp(max=layers - 2).unsqueeze(-1)).squeeze(-1)
    log_prob = log_continue + torch.where(exit_at < layers - 1, log_exit, torch.zeros_like(log_exit))
    depth_weight = (1 - memorized.float() / layers) if hardness else torch.ones(n, device=p.device)
    ce = layer_ce.gather(1, exit_at)  # (N, K)
    reward = -ce - alpha * (exit_at + 1).float() * depth_weight.unsqueeze(1)
    advantage = reward - reward.mean(1, keepdim=True)
    return -(advantage.detach() * log_prob).mean() / layers


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return model_inputs(batch)


def _all_layer_logits(out) -> torch.Tensor:
    return torch.stack([out.exit_logits[i] for i in sorted(out.exit_logits)] + [out.logits])  # (L, N, C)


def _summaries(out) -> list[torch.Tensor]:
    return [out.exit_summaries[i] for i in sorted(out.exit_summaries)]  # after layers 1..L-1


def _consistent_task_loss(model, batch):
    """Only the classifier at the layer where the (frozen) policy exits an example learns from it."""
    rule = unwrap(model).exit_rule
    out = model(**_inputs(batch), dynamic=False)
    with torch.no_grad():
        decisions = torch.stack([rule.exit_probability(i, s.detach()) > rule.threshold
                                 for i, s in enumerate(_summaries(out))], 1)
        forced = torch.ones(decisions.shape[0], 1, dtype=torch.bool, device=decisions.device)
        exit_at = torch.cat([decisions, forced], 1).float().argmax(1)
    logits = _all_layer_logits(out)  # (L, N, C)
    chosen = logits[exit_at, torch.arange(logits.shape[1], device=logits.device)]
    return F.cross_entropy(chosen, batch["labels"])

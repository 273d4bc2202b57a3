"""`consistentee`: ConsistentEE (Zeng et al., 2024): early exit learned by reinforcement learning.

A policy network per layer decides exit / continue from the [CLS] state. Training:
  1. initialise backbone and exit heads on the layer-weighted sum of their losses (weight i);
  2. compute each training example's memorized layer m (earliest layer from which every later
     classifier is right; L if the last one is wrong);
  3. train the policies with the backbone frozen: K rollouts per example, reward
     -CE_t - alpha * t * (1 - m/L) (hardness-guided; `reward: vanilla` drops (1 - m/L)), the
     mean reward of the K rollouts as baseline, epsilon-greedy exploration;
  4. train backbone and exit heads with the policies frozen: only the classifier at the layer
     where the policy exits an example gets its loss;
  5. repeat 2-4 for `rounds`. Inference exits when P(exit) > 0.5.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

import datasets
import torch
from pydantic import Field
from torch.nn import functional as F

from compresskit.evaluation.evaluate import MODEL_INPUTS, loader
from compresskit.pipeline import PipelineState, StageContext
from compresskit.registry import StageConfig, Strategy, register_strategy
from compresskit.training.early_exit import ExitHeadsConfig, layer_weighted_loss, with_exit_heads
from compresskit.training.trainer import TrainingConfig, train, unwrap


class ConsistentEEConfig(StageConfig, ExitHeadsConfig):
    """Recipe keys of a `consistentee` stage."""

    init_epochs: float = Field(1.0, ge=0, description="step 1: layer-weighted training of backbone and exits")
    rounds: int = Field(2, ge=1, description="repetitions of steps 2-4")
    policy_epochs: float = Field(1.0, gt=0, description="step 3 epochs per round")
    task_epochs: float = Field(1.0, gt=0, description="step 4 epochs per round")
    rollouts: int = Field(8, ge=2, description="K trajectories per example; their mean reward is the baseline")
    epsilon: float = Field(0.1, ge=0, le=1, description="share of random actions (exploration)")
    alpha: float = Field(0.05, ge=0, description="weight of depth against accuracy in the reward")
    reward: Literal["hardness", "vanilla"] = Field("hardness", description="hardness: alpha scaled by 1 - m/L")
    policy_hidden: int = Field(32, ge=1)
    learning_rate: float = Field(2e-5, gt=0, description="backbone")
    exit_learning_rate: float = Field(5e-4, gt=0, description="exit heads (fresh modules)")
    policy_learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)


@register_strategy
class ConsistentEEStrategy(Strategy):
    """ConsistentEE: per-layer policy networks trained by policy gradient decide when to exit.

    Example stage::

        - strategy: consistentee
          rounds: 2
          alpha: 0.05
    """

    name = "consistentee"
    kind = "dynamic"
    Config: ClassVar[type[StageConfig]] = ConsistentEEConfig

    def apply(self, state: PipelineState, ctx: StageContext) -> PipelineState:
        cfg: ConsistentEEConfig = self.config  # type: ignore[assignment]
        model = with_exit_heads(state.model, {"name": "policy", "policy_hidden": cfg.policy_hidden},
                                cfg.exit_pooling)
        rows = state.data["train"]
        policies = list(model.exit_rule.parameters())
        trainable = [{"params": [p for n, p in model.named_parameters()
                                 if not n.startswith(("exit_heads.", "exit_rule."))]},
                     {"params": list(model.exit_heads.parameters()), "lr": cfg.exit_learning_rate}]
        history: dict[str, Any] = {}

        def fit(name, epochs, lr, loss, params, data=rows):
            result = train(model, data, None, state.task, state.tokenizer,
                           TrainingConfig(epochs=epochs, learning_rate=lr, batch_size=cfg.batch_size), ctx.seed,
                           loss_fn=loss, parameters=params, desc=f"{ctx.name} {name}")
            history[name] = result.history

        if cfg.init_epochs > 0:
            fit("init", cfg.init_epochs, cfg.learning_rate, _weighted_loss, trainable)
        memorized_counts = []
        for r in range(cfg.rounds):
            memorized = memorized_layers_of(model, rows, state.tokenizer)
            memorized_counts.append(torch.bincount(memorized, minlength=model.num_layers + 1)[1:].tolist())
            with_memory = rows.add_column("memorized_layer", memorized.tolist())
            fit(f"round {r + 1} policy", cfg.policy_epochs, cfg.policy_learning_rate,
                functools.partial(_policy_loss, cfg=cfg), policies, with_memory)
            fit(f"round {r + 1} task", cfg.task_epochs, cfg.learning_rate, _consistent_task_loss, trainable)
        state.model = model
        state.info = {"history": history, "memorized_layer_counts": memorized_counts}
        return state


def memorized_layer(correct: torch.Tensor) -> torch.Tensor:
    """(layers, examples) correctness -> 1-based earliest layer from which all later layers are right.

    An example the last layer gets wrong has never been memorized: L.
    """
    layers = correct.shape[0]
    suffix_all = torch.flip(torch.cumprod(torch.flip(correct.long(), [0]), 0), [0])  # right here and after
    trailing = suffix_all.sum(0)
    return torch.where(trailing > 0, layers - trailing + 1, torch.full_like(trailing, layers))


@torch.no_grad()
def memorized_layers_of(model, dataset: datasets.Dataset, tokenizer) -> torch.Tensor:
    model.eval()
    correct = []
    for batch in loader(dataset, tokenizer, 64):
        logits = _all_layer_logits(model(**_inputs(batch), dynamic=False))
        correct.append(logits.argmax(-1) == batch["labels"])
    return memorized_layer(torch.cat(correct, 1))


def policy_gradient_loss(exit_prob: torch.Tensor, layer_ce: torch.Tensor, memorized: torch.Tensor, alpha: float,
                         rollouts: int, epsilon: float, hardness: bool = True) -> torch.Tensor:
    """REINFORCE over `rollouts` trajectories per example with their mean reward as the baseline.

    exit_prob: (N, L-1) P(exit) of the policies; layer_ce: (N, L) each classifier's loss (the
    last layer's included); memorized: (N,) 1-based memorized layers.
    """
    n, layers = layer_ce.shape
    p = exit_prob.unsqueeze(1).expand(n, rollouts, layers - 1)
    sampled = torch.rand_like(p) < p.detach()
    random = torch.rand_like(p) < 0.5
    actions = torch.where(torch.rand_like(p) < epsilon, random, sampled)  # epsilon-greedy exploration
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
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def _all_layer_logits(out) -> torch.Tensor:
    return torch.stack([out.exit_logits[i] for i in sorted(out.exit_logits)] + [out.logits])  # (L, N, C)


def _summaries(out) -> list[torch.Tensor]:
    return [out.exit_summaries[i] for i in sorted(out.exit_summaries)]  # after layers 1..L-1


def _weighted_loss(model, batch):
    return layer_weighted_loss(model(**_inputs(batch)), batch["labels"], "linear")


def _policy_loss(model, batch, cfg: ConsistentEEConfig):
    rule = unwrap(model).exit_rule
    with torch.no_grad():
        out = model(**_inputs(batch), dynamic=False)
        logits = _all_layer_logits(out)
        ce = F.cross_entropy(logits.flatten(0, 1), batch["labels"].repeat(logits.shape[0]), reduction="none")
        ce = ce.view(logits.shape[0], -1).T  # (N, L)
    exit_prob = torch.stack([rule.exit_probability(i, s) for i, s in enumerate(_summaries(out))], 1)
    return policy_gradient_loss(exit_prob, ce, batch["memorized_layer"], cfg.alpha, cfg.rollouts, cfg.epsilon,
                                cfg.reward == "hardness")


def _consistent_task_loss(model, batch):
    """Only the classifier at the layer where the (frozen) policy exits an example learns from it."""
    rule = unwrap(model).exit_rule
    out = model(**_inputs(batch), dynamic=False)
    with torch.no_grad():
        decisions = torch.stack([rule.exit_probability(i, s.detach()) > 0.5
                                 for i, s in enumerate(_summaries(out))], 1)
        forced = torch.ones(decisions.shape[0], 1, dtype=torch.bool, device=decisions.device)
        exit_at = torch.cat([decisions, forced], 1).float().argmax(1)
    logits = _all_layer_logits(out)  # (L, N, C)
    chosen = logits[exit_at, torch.arange(logits.shape[1])]
    return F.cross_entropy(chosen, batch["labels"])

"""Modules of dynamic-depth models: layer gates, exit heads and exit rules.

Exit rules are small modules (a learned rule owns parameters, e.g. ConsistentEE's policy
networks) registered by name, so a new early-exit method adds its rule with one decorator and
the saved config names it. A rule sees only the examples still in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compresskit.errors import ModelFormatError
from compresskit.plugins import load_entry_points


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """[CLS] state, or the mean over real tokens (mask: 1 for tokens, 0 for padding)."""
    if how == "cls":
        return hidden[:, 0]
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def sampled_straight_through(logits: torch.Tensor) -> torch.Tensor:
    """Default training gate: a hard Bernoulli sample with the straight-through gradient."""
    p_run = torch.softmax(logits, dim=-1)[..., 1]
    hard = (torch.rand_like(p_run) < p_run).to(p_run.dtype)
    return hard + p_run - p_run.detach()


class LayerGate(nn.Module):
    """A one-hidden-layer FFN that scores 'run' vs 'skip' for the layer it guards."""

    def __init__(self, hidden_size: int, gate_hidden: int, pooling: str):
        super().__init__()
        self.pooling = pooling
        self.net = nn.Sequential(nn.Linear(hidden_size, gate_hidden), nn.GELU(), nn.Linear(gate_hidden, 2))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits of (skip, run) per example."""
        return self.net(pool(hidden, mask, self.pooling))


class ExitHead(nn.Module):
    """A classifier on the pooled output of an intermediate layer (dense + tanh + linear)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        """Logits from the layer's summary vector (see `pool`: [CLS] state or token mean)."""
        return self.classifier(self.dropout(torch.tanh(self.dense(summary))))


# ---- exit rules ------------------------------------------------------------------------------

class ExitRule(nn.Module):
    """Decides, after an exit layer, which of the remaining examples stop there.

    A decision has two halves: `score` turns the exit head's outputs into one number per example
    (entropy, P(exit), ...) with tensor operations only, so an export computes it inside the layer's
    graph; `decide` compares scores with the rule's knob (a threshold, a patience) and keeps the
    per-example state, so calibration can move the knob without touching the graph. `decide` uses
    operators and indexing only, so it runs on torch tensors (PyTorch inference) and on numpy
    arrays (the ONNX Runtime loop, where a torch call per layer would cost more than the choice).
    `state` is a dict of per-example tensors over the whole batch (e.g. patience counters);
    `rows` indexes the examples still running, aligned with `logits` and `summary` (the pooled
    layer output the exit head read: [CLS] state or token mean, per the model's exit_head spec).
    """

    # True when `decide` depends on earlier layers' scores through `state` (a patience count): a
    # decision is then only as clear as the least clear score it has seen
    remembers: bool = False

    def __init__(self, num_layers: int, hidden_size: int):
        super().__init__()
        self.num_layers = num_layers

    def init_state(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {}

    def score(self, layer: int, logits: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def margin(self, layer: int, logits: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """How far each row's decision is from going the other way (>= 0), in the units of its score.

        Two runtimes that compute the same function up to rounding can decide a row differently only
        when this is within their rounding: that is how an export check tells a near-tie from a bug.
        """
        threshold = getattr(self, "threshold", None)
        if threshold is None:
            raise NotImplementedError(f"exit rule {type(self).__name__} must define margin()")
        return (score - threshold).abs()

    def decide(self, layer: int, score: torch.Tensor, rows: torch.Tensor,
               state: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def decision_margin(self, layer: int, logits: torch.Tensor, score: torch.Tensor, rows: torch.Tensor,
                        state: dict[str, torch.Tensor]) -> torch.Tensor:
        """`margin`, for rules whose decision also reads the state (called before `decide` updates it)."""
        return self.margin(layer, logits, score)

    def should_exit(self, layer: int, logits: torch.Tensor, summary: torch.Tensor,
                    rows: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.decide(layer, self.score(layer, logits, summary), rows, state)


EXIT_RULES: dict[str, type[ExitRule]] = {}
EXIT_RULE_ENTRY_POINTS = "compresskit.exit_rules"  # plugins: `name = "package.module:RuleClass"`
_plugins_loaded = False


def register_exit_rule(name: str) -> Callable[[type[ExitRule]], type[ExitRule]]:
    """Class decorator: the exit rule a saved config names `name` (a name taken twice is an error)."""
    def wrap(cls: type[ExitRule]) -> type[ExitRule]:
        existing = EXIT_RULES.get(name)
        if existing is not None and existing is not cls:
            raise ModelFormatError(f"exit rule {name!r} is registered twice: by {existing.__module__}."
                                   f"{existing.__qualname__} and by {cls.__module__}.{cls.__qualname__}")
        EXIT_RULES[name] = cls
        return cls
    return wrap


def _load_plugins() -> None:
    """Exit rules of other packages (the `compresskit.exit_rules` entry points), so that a model saved
    with a plugin's rule loads in a fresh process."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    for name, cls in load_entry_points(EXIT_RULE_ENTRY_POINTS, "exit rule", ModelFormatError):
        if EXIT_RULES.get(name) is not cls:
            register_exit_rule(name)(cls)
    _plugins_loaded = True


def build_exit_rule(spec: dict[str, Any], num_layers: int, hidden_size: int) -> ExitRule:
    params = dict(spec)
    name = params.pop("name")
    if name not in EXIT_RULES:
        _load_plugins()
    if name not in EXIT_RULES:
        raise ModelFormatError(
            f"exit_rule.name: unknown rule {name!r}; known: {', '.join(sorted(EXIT_RULES))} (a plugin's rule is "
            f"found through the {EXIT_RULE_ENTRY_POINTS!r} entry points of its package)"
        )
    try:
        return EXIT_RULES[name](num_layers=num_layers, hidden_size=hidden_size, **params)
    except TypeError as err:
        raise ModelFormatError(f"exit_rule: bad parameters for {name!r}: {err}") from None


def entropy(logits: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    logp = torch.log_softmax(logits, dim=-1)  # log_softmax: no log(0) on confident heads
    ent = -(logp.exp() * logp).sum(-1)
    if normalized:
        ent = ent / math.log(logits.shape[-1])
    return ent


@register_exit_rule("entropy")
class EntropyRule(ExitRule):
    """DeeBERT / COST-EFF: exit when the prediction entropy falls below a threshold."""

    def __init__(self, num_layers: int, hidden_size: int, threshold: float = 0.3):
        super().__init__(num_layers, hidden_size)
        self.threshold = threshold

    def score(self, layer, logits, summary):
        return entropy(logits)

    def decide(self, layer, score, rows, state):
        return score < self.threshold


@register_exit_rule("patience")
class PatienceRule(ExitRule):
    """PABEE: exit when the prediction has not changed for `patience` consecutive exit layers.

    A class prediction is unchanged when the argmax is; a regression's (one output) when it moved by
    less than `tolerance` since the layer before (PABEE's regression form, its paper's tau).
    """

    remembers = True

    def __init__(self, num_layers: int, hidden_size: int, patience: int = 2, tolerance: float = 0.0):
        super().__init__(num_layers, hidden_size)
        self.patience, self.tolerance = patience, tolerance

    def init_state(self, batch_size, device):
        return {"last": torch.full((batch_size,), math.nan, device=device),
                "count": torch.zeros(batch_size, dtype=torch.long, device=device)}

    def score(self, layer, logits, summary):
        if logits.shape[-1] == 1:
            return logits[..., 0]  # the regression's value
        return logits.argmax(-1).to(logits.dtype)  # the prediction, as a float to travel with the others

    def margin(self, layer, logits, score):
        if logits.shape[-1] < 2:
            # a regression's decision turns on how far the value moved, which needs the layer before
            # (`decision_margin`); without it, no tie can be told
            return torch.full_like(score, math.inf)
        top = logits.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]  # the argmax's lead: how far the prediction is from changing

    def decision_margin(self, layer, logits, score, rows, state):
        if logits.shape[-1] > 1:
            return self.margin(layer, logits, score)
        moved = (score - state["last"][rows]).abs()
        # the first exit has no layer before: its decision (count 0) is never close
        return torch.where(moved == moved, (moved - self.tolerance).abs(), math.inf)

    def decide(self, layer, score, rows, state):
        last = state["last"][rows]
        moved = score - last
        # unchanged: the same class, or a value within the tolerance (NaN at the first exit: changed)
        same = (moved <= self.tolerance) & (moved >= -self.tolerance) if self.tolerance > 0 else score == last
        count = (state["count"][rows] + 1) * same  # reset when the prediction changes
        state["count"][rows] = count
        state["last"][rows] = score
        return count >= self.patience


@register_exit_rule("patience_confidence")
class PatienceConfidenceRule(ExitRule):
    """PCEE-BERT: exit when normalised entropy < threshold for `patience` consecutive layers."""

    def __init__(self, num_layers: int, hidden_size: int, threshold: float = 0.3,
                 patience: int = 1):
        super().__init__(num_layers, hidden_size)
        self.threshold, self.patience = threshold, patience

    def init_state(self, batch_size, device):
        return {"count": torch.zeros(batch_size, dtype=torch.long, device=device)}

    def score(self, layer, logits, summary):
        return entropy(logits, normalized=True)

    remembers = True

    def decide(self, layer, score, rows, state):
        count = (state["count"][rows] + 1) * (score < self.threshold)  # reset when not confident
        state["count"][rows] = count
        return count >= self.patience


@register_exit_rule("max_probability")
class MaxProbabilityRule(ExitRule):
    """Schwartz et al. (2020): exit when the exit head's top class probability exceeds a threshold."""

    def __init__(self, num_layers: int, hidden_size: int, threshold: float = 0.9):
        super().__init__(num_layers, hidden_size)
        self.threshold = threshold

    def score(self, layer, logits, summary):
        return torch.softmax(logits, dim=-1).max(-1).values

    def decide(self, layer, score, rows, state):
        return score > self.threshold


@register_exit_rule("budget")
class BudgetRule(ExitRule):
    """Budgeted exit: every example leaves after the first `k` layers."""

    def __init__(self, num_layers: int, hidden_size: int, k: int = 1):
        super().__init__(num_layers, hidden_size)
        self.k = k

    def score(self, layer, logits, summary):
        return torch.zeros_like(logits[:, 0])  # the depth alone decides

    def margin(self, layer, logits, score):
        return torch.full_like(score, math.inf)  # no score involved: never a near-tie

    def decide(self, layer, score, rows, state):
        every = score == score  # all True (scores are zeros), as the caller's array type
        return every if layer + 1 >= self.k else ~every


@register_exit_rule("policy")
class PolicyRule(ExitRule):
    """ConsistentEE: a policy network per layer reads the layer's summary; exit when P(exit) > 0.5.

    Each policy is `Linear(h, policy_hidden) -> GELU -> Linear(policy_hidden, 1) -> sigmoid`; the
    last layer has none (every example still running predicts there). `threshold` (the paper's
    0.5) can be moved to trade accuracy for depth without retraining (benchmarks/exit_curve.py).
    """

    def __init__(self, num_layers: int, hidden_size: int, policy_hidden: int = 32, threshold: float = 0.5):
        super().__init__(num_layers, hidden_size)
        self.threshold = threshold
        self.policies = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_size, policy_hidden), nn.GELU(), nn.Linear(policy_hidden, 1))
            for _ in range(num_layers - 1)
        )

    def exit_probability(self, layer: int, summary: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.policies[layer](summary)).squeeze(-1)

    def score(self, layer, logits, summary):
        return self.exit_probability(layer, summary)

    def decide(self, layer, score, rows, state):
        return score > self.threshold


@register_exit_rule("learned")
class LearnedExitRule(ExitRule):
    """BERxiT: one learning-to-exit module shared by all layers, `sigmoid(Linear(h, 1))` on the
    layer's summary, estimates whether the layer's prediction is right; exit when it exceeds the
    threshold."""

    def __init__(self, num_layers: int, hidden_size: int, threshold: float = 0.5):
        super().__init__(num_layers, hidden_size)
        self.threshold = threshold
        self.lte = nn.Linear(hidden_size, 1)

    def certainty(self, summary: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.lte(summary)).squeeze(-1)

    def score(self, layer, logits, summary):
        return self.certainty(summary)

    def decide(self, layer, score, rows, state):
        return score > self.threshold

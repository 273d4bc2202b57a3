"""PyTorch inference that skips work: `routing.route` on the model's own modules.

A layer runs only on the rows its mask selects and an exit head only on the rows still running,
so a skipped layer or an exited example costs nothing, at any batch size. With a forced `Route`
(another runtime's), the model follows it instead of deciding, and notes how clear each decision
it would have taken differently was (`route_margin`): the export check's near-tie test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from compresskit.modeling.routing import Observer, Routed, Step, gate_margin, gate_opens, plan, route


@dataclass
class Route:
    """A route to follow instead of deciding: which layers run for each example, when it leaves."""

    layer_mask: torch.Tensor  # (batch, layers) bool
    exit_layer: torch.Tensor  # (batch,) 1-based; the number of layers for examples that never exit


class TorchOps:
    def __init__(self, batch: int, device: torch.device):
        self.batch, self.device = batch, device

    def all_rows(self):
        return torch.ones(self.batch, dtype=torch.bool, device=self.device)

    def logical_and(self, a, b):
        return a & b

    def logical_not(self, a):
        return ~a

    def where(self, condition, a, b):
        return torch.where(condition.view(-1, *([1] * (a.dim() - 1))), a, b)

    def depth(self, value):
        return torch.full((self.batch,), value, device=self.device)

    def stack(self, columns):
        return torch.stack(columns, 1)

    def any(self, mask):
        return bool(mask.any())


class TorchBackend:
    def __init__(self, model: Any, hidden: torch.Tensor, mask: torch.Tensor, additive: torch.Tensor,
                 bias: torch.Tensor | None, margins: bool = False):
        self.model, self.hidden, self.mask, self.additive, self.bias = model, hidden.clone(), mask, additive, bias
        self.ops = TorchOps(hidden.shape[0], hidden.device)
        self.margins = margins
        self.labels = max(model.config.num_labels, 1)

    @staticmethod
    def _rows(mask: torch.Tensor) -> torch.Tensor | slice:
        """The rows `mask` selects: every row as a plain slice (common, and always so at batch 1),
        which reads and writes the batch in place instead of gathering and scattering copies."""
        return slice(None) if bool(mask.all()) else mask.nonzero().squeeze(1)

    def _full(self, rows: torch.Tensor | slice, values: torch.Tensor, fill: Any = 0) -> torch.Tensor:
        if isinstance(rows, slice):
            return values
        out = torch.full((self.ops.batch, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
        out[rows] = values
        return out

    def gate(self, step: Step, running):
        rows = self._rows(running)
        logits = self.model.gates[str(step.layer)](self.hidden[rows], self.mask[rows])
        margin = self._full(rows, gate_margin(logits), math.inf) if self.margins else None
        return self._full(rows, gate_opens(logits), False), margin

    def run_layer(self, step: Step, runs):
        rows = self._rows(runs)
        if isinstance(rows, slice) or rows.numel():
            layer = self.model.layers[step.layer]
            self.hidden[rows], _ = self.model.adapter.run_layer(self.model.backbone, layer, self.hidden[rows],
                                                                self.additive[rows], self.bias, False)

    def exit(self, step: Step, running, state):
        rows = self._rows(running)
        rule = self.model.exit_rule
        summary = self.model.exit_summary(self.hidden[rows], self.mask[rows])
        logits = self.model.exit_heads[str(step.layer)](summary)
        score = rule.score(step.layer, logits, summary)
        margin = self._full(rows, rule.decision_margin(step.layer, logits, score, rows, state).to(self.hidden.dtype),
                            math.inf) if self.margins else None
        leave = rule.decide(step.layer, score, rows, state)
        return self._full(rows, leave, False), self._full(rows, logits), margin

    def head(self, running):
        rows = self._rows(running)
        return self._full(rows, self.model.adapter.head(self.model.backbone, self.hidden[rows], self.mask[rows]))

    def initial_logits(self):
        return torch.zeros(self.ops.batch, self.labels, device=self.hidden.device, dtype=self.hidden.dtype)

    def init_state(self):
        rule = self.model.exit_rule
        return rule.init_state(self.ops.batch, self.hidden.device) if rule is not None else {}


class FollowRoute(Observer):
    """Takes `route`'s decisions; per example, the margin of the first decision that differed (inf: none).

    A rule that `remembers` (a patience count) decides from every score so far: its decision is
    only as clear as the least clear of them."""

    def __init__(self, route: Route, remembers: bool, batch: int, device: torch.device):
        self.route, self.remembers = route, remembers
        self.first = torch.full((batch,), math.inf, device=device)
        self.seen = torch.full((batch,), math.inf, device=device)

    def _follow(self, running, own, forced, margin):
        new = running & (own != forced) & torch.isinf(self.first)
        self.first[new] = margin[new]
        return forced

    def gate(self, step, running, opens, margin):
        return self._follow(running, opens, self.route.layer_mask[:, step.layer], margin)

    def exit(self, step, running, leave, margin):
        if self.remembers:
            self.seen = torch.where(running, torch.minimum(self.seen, margin), self.seen)
            margin = self.seen
        return self._follow(running, leave, self.route.exit_layer == step.layer + 1, margin)


@torch.no_grad()
def routed_forward(model: Any, hidden: torch.Tensor, mask: torch.Tensor, additive: torch.Tensor,
                   bias: torch.Tensor | None, forced: Route | None = None) -> tuple[Routed, torch.Tensor | None]:
    """The model's routed inference: (what `route` returns, the forced route's margins or None)."""
    steps = plan(model.num_layers, {int(i) for i in model.gates},
                 {int(i) for i in model.exit_heads} if model.exit_rule is not None else set())
    backend = TorchBackend(model, hidden, mask, additive, bias, margins=forced is not None)
    observer = None
    if forced is not None:
        observer = FollowRoute(forced, getattr(model.exit_rule, "remembers", False), hidden.shape[0], hidden.device)
    routed = route(steps, backend, observer)
    return routed, observer.first if observer is not None else None

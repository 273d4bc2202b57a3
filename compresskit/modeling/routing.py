"""The control flow of a dynamic model, written once.

A dynamic model is a sequence of layers. Before a layer a gate may decide, per example, whether
the layer runs (`gate_opens`); after a layer an exit may decide, per example, whether the example
leaves with that exit's prediction (the model's `ExitRule.decide`); an example still running after
the last layer predicts with the model's head. `route` walks that sequence for a batch and keeps
the books: which examples are still running, which layers ran for each, where each left and with
which logits. *How* a layer, a gate or an exit is computed is a backend's business:

- the PyTorch modules on the rows that need them (modeling/model.py, inference);
- the exported per-layer ONNX graphs (export/runtime.py);
- exit logits computed once and replayed for every candidate threshold (training/calibration.py);
- ONNX nodes, for one example at a time: each decision an `If` (export/one_call.py).

The books are kept with the backend's array operations (`ops`: torch, NumPy, or ONNX nodes), all
over the whole batch: a backend runs a layer only on the rows its mask selects. Changing what
"skip" or "exit" means, or adding a gate kind or an exit rule, is done here and in the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

Array = Any  # a torch tensor, a NumPy array, or the name of an ONNX value


@dataclass(frozen=True)
class Step:
    layer: int
    gate: bool  # a gate decides, per example, whether the layer runs
    exit: bool  # after the layer, an exit may end inference for an example


def plan(num_layers: int, gates: set[int], exits: set[int]) -> list[Step]:
    """The steps of a model with gates before `gates` and exits after `exits` (never after the last
    layer: every example still running there predicts with the head)."""
    return [Step(i, i in gates, i in exits and i < num_layers - 1) for i in range(num_layers)]


def gate_opens(logits: Array) -> Array:
    """A gate's decision from its (skip, run) logits: run when run scores higher (a tie skips)."""
    return logits[..., 1] > logits[..., 0]


def gate_margin(logits: Array) -> Array:
    """How far a gate's decision is from going the other way."""
    return abs(logits[..., 1] - logits[..., 0])


class Ops(Protocol):
    """Elementwise operations on per-example arrays (bool masks, int depths, float logits)."""

    def all_rows(self) -> Array: ...
    def logical_and(self, a: Array, b: Array) -> Array: ...
    def logical_not(self, a: Array) -> Array: ...
    def where(self, condition: Array, a: Array, b: Array) -> Array: ...  # condition per example
    def depth(self, value: int) -> Array: ...  # (batch,) of `value`
    def stack(self, columns: list[Array]) -> Array: ...  # per-layer masks -> (batch, layers)
    def any(self, mask: Array) -> bool | None: ...  # None when it cannot be known (a graph)


class Backend(Protocol):
    """What `route` asks of a runtime; every array is over the whole batch (rows not concerned are
    never read)."""

    ops: Ops

    def gate(self, step: Step, running: Array) -> tuple[Array, Array | None]:
        """(opens, margin): the gate's decision (`gate_opens`) for the running rows, and with an
        observer its margin (`gate_margin`)."""
        ...

    def run_layer(self, step: Step, runs: Array) -> None:
        """Run the layer on the rows of `runs`; the others keep their states."""
        ...

    def exit(self, step: Step, running: Array, state: Any) -> tuple[Array, Array, Array | None]:
        """(leave, exit logits, margin) for the running rows: the exit head, the rule's score and its
        `decide` (updating `state`); `leave` is False for rows not running."""
        ...

    def head(self, running: Array) -> Array:
        """The model's head on the running rows' last states."""
        ...

    def initial_logits(self) -> Array: ...
    def init_state(self) -> Any: ...


class Observer:
    """Sees every decision and may replace it (the export check replays another runtime's route)."""

    def gate(self, step: Step, running: Array, opens: Array, margin: Array) -> Array:
        return opens

    def exit(self, step: Step, running: Array, leave: Array, margin: Array) -> Array:
        return leave


@dataclass
class Routed:
    logits: Array  # (batch, labels)
    layer_mask: Array  # (batch, layers) bool: which layers ran for each example
    exit_layer: Array  # (batch,) the 1-based layer each example left after (the depth: it never left)


def route(steps: list[Step], backend: Backend, observer: Observer | None = None) -> Routed:
    ops = backend.ops
    running = ops.all_rows()
    logits, exit_layer = backend.initial_logits(), ops.depth(len(steps))
    state, ran = backend.init_state(), []
    for step in steps:
        runs = running
        if step.gate:
            opens, margin = backend.gate(step, running)
            if observer is not None:
                opens = observer.gate(step, running, opens, margin)
            runs = ops.logical_and(running, opens)
        backend.run_layer(step, runs)
        ran.append(runs)
        if step.exit:
            leave, exit_logits, margin = backend.exit(step, running, state)
            if observer is not None:
                leave = ops.logical_and(running, observer.exit(step, running, leave, margin))
            logits = ops.where(leave, exit_logits, logits)
            exit_layer = ops.where(leave, ops.depth(step.layer + 1), exit_layer)
            running = ops.logical_and(running, ops.logical_not(leave))
            if ops.any(running) is False:  # everyone has left: nothing more runs
                ran += [running] * (len(steps) - step.layer - 1)
                return Routed(logits, ops.stack(ran), exit_layer)
    logits = ops.where(running, backend.head(running), logits)
    return Routed(logits, ops.stack(ran), exit_layer)

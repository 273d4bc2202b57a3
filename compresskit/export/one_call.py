"""The one-call graph: a whole dynamic model as one ONNX graph, for one example at a time.

At batch 1 the per-layer graphs pay a fixed price per ONNX Runtime call and per routing step in
Python, which weighs most on short inputs (docs/benchmarks.md, "Deploy"). Here each gated layer
is an ONNX `If` (run the layer, or pass the state through), and once an example has left at an
exit every later layer and exit is an `If` it passes by, so a lone example costs one call and a
skipped layer still costs nothing. The exit rule's decision (`ExitRule.decide`, its knob as saved) and its
per-example state (patience counters) are in the graph too. A batch of more than one keeps the
per-layer graphs: an `If` takes one branch for the whole batch.

The pieces (embeddings, each layer, gate, exit, decision, head) are exported from PyTorch one by
one and stitched together with the onnx API: their nodes are copied under a prefix, branch
bodies become `If` subgraphs, and every weight is an initializer of the outer graph (subgraphs
read the outer scope).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compresskit.export.onnx_config import ONNX_OPSET
from compresskit.export.pieces import Embeddings, ExitHead, GateLogits, Head, LayerStep

FILE = "one_call.onnx"
_TOKEN_AXES = ("input_ids", "attention_mask", "token_type_ids", "hidden")  # (batch, sequence, ...) inputs


class _Decide(nn.Module):
    """The rule's decision after layer `index` for one example: leave?, and its new state."""

    def __init__(self, rule, index, state_names):
        super().__init__()
        self.rule, self.index, self.state_names = rule, index, state_names

    def forward(self, score, *state):
        # clones: decide() updates the state in place, which must not write to a graph input
        values = {name: value.clone() for name, value in zip(self.state_names, state, strict=True)}
        leave = self.rule.decide(self.index, score, torch.zeros(1, dtype=torch.long), values)
        return (leave, *(values[name] for name in self.state_names))


def export_one_call(model, work: Path, input_names: list[str]) -> str:
    """Write the model's one-call graph into `work`; returns its file name."""
    with tempfile.TemporaryDirectory() as pieces:
        graph = _Stitcher(model, Path(pieces), input_names).build()
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(work / FILE))
    return FILE


def _typed(names: list[str], types: list[int]) -> list[onnx.ValueInfoProto]:
    """Branch outputs: their types (If requires them); their shapes are the branch's business."""
    return [helper.make_tensor_value_info(n, t, None) for n, t in zip(names, types, strict=True)]


def _renamed(sources: list[str], targets: list[str]) -> list[onnx.NodeProto]:
    return [helper.make_node("Identity", [src], [dst]) for src, dst in zip(sources, targets, strict=True)]


class _Stitcher:
    def __init__(self, model, pieces: Path, input_names: list[str]):
        self.model, self.pieces, self.input_names = model, pieces, input_names
        self.mpnet = model.config.backbone["model_type"] == "mpnet"
        self.initializers: list[onnx.TensorProto] = []
        self.constants: set[str] = set()
        self.rule = model.exit_rule if len(model.exit_heads) else None
        # example inputs to trace the pieces with (their axes stay dynamic)
        self.sample_hidden = torch.randn(1, 5, model.config.backbone["hidden_size"])
        self.sample_mask = torch.ones(1, 5, dtype=torch.long)

    # ---- pieces ------------------------------------------------------------------------------
    def piece(self, module: nn.Module, args: tuple, prefix: str, inputs: dict[str, str],
              outputs: dict[str, str]) -> list[onnx.NodeProto]:
        """Export `module`; its nodes with inputs/outputs renamed (`inputs`: piece input -> outer
        name, `outputs`: piece output -> name) and everything else under `prefix`. Its weights
        join the outer graph's initializers."""
        file = self.pieces / f"{prefix.strip('/')}.onnx"
        dynamic = {name: {0: "batch", 1: "sequence"} for name in inputs if name in _TOKEN_AXES}
        with torch.no_grad():
            torch.onnx.export(module.eval(), args, str(file), input_names=list(inputs), output_names=list(outputs),
                              dynamic_axes=dynamic, opset_version=ONNX_OPSET, dynamo=False)
        graph = onnx.load(str(file)).graph
        names = {i.name: inputs[i.name] for i in graph.input} | {o.name: outputs[o.name] for o in graph.output}

        def rename(name: str) -> str:
            return name if name == "" else names.get(name, prefix + name)

        nodes = []
        for node in graph.node:
            node = copy.deepcopy(node)
            node.name = prefix + node.name
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]
            nodes.append(node)
        for tensor in graph.initializer:
            tensor = copy.deepcopy(tensor)
            tensor.name = rename(tensor.name)
            self.initializers.append(tensor)
        return nodes

    def constant(self, name: str, value: np.ndarray) -> str:
        if name not in self.constants:
            self.constants.add(name)
            self.initializers.append(numpy_helper.from_array(value, name))
        return name

    # ---- the graph ---------------------------------------------------------------------------
    # Flat, one layer after the other: an example that has left at an exit still passes every
    # later If, through its empty branch. Nesting the rest of the model in each exit's else-branch
    # measured slower (PCEE, mean-pooled exits, batch 1: 0.78 of the ideal speed-up nested, 0.85
    # flat); our reading: an If hands its branches every outer value they read, so each exit
    # then paid for the weights of all the layers after it.
    def build(self) -> onnx.GraphProto:
        model = self.model
        ids = torch.randint(5, model.config.backbone["vocab_size"], (1, 5))
        args = (ids, self.sample_mask) + ((torch.zeros_like(ids),) if "token_type_ids" in self.input_names else ())
        embed_out = {"hidden": "embedded"} | ({"position_bias": "position_bias"} if self.mpnet else {})
        self.nodes = self.piece(Embeddings(model), args, "embed/", {n: n for n in self.input_names}, embed_out)
        state = {name: self.constant(f"state_init/{name}", value.numpy())
                 for name, value in self.rule.init_state(1, torch.device("cpu")).items()} if self.rule else {}
        hidden, executed = "embedded", self.constant("no_layers", np.zeros(1, dtype=np.float32))
        self.ran: list[str] = []  # per layer, (1,) float: 1 if the layer ran
        # `running`: (1,) bool, the example has not left yet; None until the first exit
        running: str | None = None
        logits, exit_layer = None, self.constant("depth", np.full(1, model.num_layers))
        for i in range(model.num_layers):
            hidden, executed = self.layer(i, hidden, executed, running)
            if i < model.num_layers - 1 and str(i) in model.exit_heads and self.rule is not None:
                leave, exit_logits, state = self.exit(i, hidden, state, running, logits)
                if logits is None:
                    logits = self.constant("logits_init", np.zeros((1, max(model.config.num_labels, 1)), np.float32))
                depth = self.constant(f"exit_{i}/depth", np.full(1, i + 1))
                self.add("Where", [leave, exit_logits, logits], f"exit_{i}/result")
                self.add("Where", [leave, depth, exit_layer], f"exit_{i}/exit_layer")
                stays = self.add("Not", [leave], f"exit_{i}/stays")
                running = stays if running is None else self.add("And", [running, stays], f"exit_{i}/running")
                logits, exit_layer = f"exit_{i}/result", f"exit_{i}/exit_layer"
        head = self.piece(Head(model), (self.sample_hidden,), "head/", {"hidden": hidden}, {"logits": "head/logits"})
        self.nodes += self.branch(running, "head", head, ["head/logits"], [logits])
        self.add("Concat", self.ran, "ran", axis=0)
        self.add("Unsqueeze", ["ran", self.constant("axis_0", np.zeros(1, dtype=np.int64))], "ran_row")
        self.nodes += [helper.make_node("Identity", ["head"], ["logits"]),
                       helper.make_node("Identity", [executed], ["layers_executed"]),
                       helper.make_node("Identity", [exit_layer], ["exit_layer"]),
                       helper.make_node("Cast", ["ran_row"], ["layer_mask"], to=TensorProto.BOOL)]
        graph_inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, [1, "sequence"])
                        for n in self.input_names]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "labels"]),
                   helper.make_tensor_value_info("layers_executed", TensorProto.FLOAT, [1]),
                   helper.make_tensor_value_info("exit_layer", TensorProto.INT64, [1]),
                   helper.make_tensor_value_info("layer_mask", TensorProto.BOOL, [1, model.num_layers])]
        return helper.make_graph(self.nodes, "one_call", graph_inputs, outputs, initializer=self.initializers)

    def add(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def branch(self, condition: str | None, name: str, body: list[onnx.NodeProto], body_outputs: list[str],
               otherwise: list[str], types: list[int] | None = None) -> list[onnx.NodeProto]:
        """`body` when `condition` ((1,) bool) holds, else `otherwise` passed through; the results are
        named `name`, `name`/1, ... . Without a condition the body runs as it is."""
        results = [name] + [f"{name}/{k}" for k in range(1, len(body_outputs))]
        if condition is None:
            return body + _renamed(body_outputs, results)
        types = types or [TensorProto.FLOAT] * len(results)
        kept = [f"{name}/kept{k}" for k in range(len(results))]
        run = helper.make_graph(body, f"{name}/run", [], _typed(body_outputs, types))
        skip = helper.make_graph(_renamed(otherwise, kept), f"{name}/skip", [], _typed(kept, types))
        scalar = f"{name}/condition"  # If wants a one-element condition
        return [helper.make_node("Squeeze", [condition], [scalar]),
                helper.make_node("If", [scalar], results, then_branch=run, else_branch=skip)]

    def layer(self, i: int, hidden: str, executed: str, running: str | None) -> tuple[str, str]:
        """Layer i when its gate opens (if it has one) and the example has not left; its output and
        the layers executed so far."""
        model = self.model
        feeds, args = {"hidden": hidden, "attention_mask": "attention_mask"}, (self.sample_hidden, self.sample_mask)
        if self.mpnet:
            feeds["position_bias"] = "position_bias"
            args += (model.adapter.position_bias(model.backbone, self.sample_hidden),)
        runs = running
        if str(i) in model.gates:
            opens = self.gate(i, hidden)
            runs = opens if running is None else self.add("And", [opens, running], f"gate_{i}/runs")
        step = self.piece(LayerStep(model, i), args, f"layer_{i}/", feeds, {"out": f"layer_{i}/out"})
        self.nodes += self.branch(runs, f"h{i}", step, [f"layer_{i}/out"], [hidden])
        if runs is None:
            count = self.constant("one", np.ones(1, dtype=np.float32))
        else:
            count = self.add("Cast", [runs], f"layer_{i}/ran", to=TensorProto.FLOAT)
        self.ran.append(count)
        return f"h{i}", self.add("Add", [executed, count], f"executed_{i}")

    def gate(self, i: int, hidden: str) -> str:
        """Whether gate i opens on `hidden`, a (1,) bool."""
        self.nodes += self.piece(GateLogits(self.model, i), (self.sample_hidden, self.sample_mask), f"gate_{i}/",
                                 {"hidden": hidden, "attention_mask": "attention_mask"},
                                 {"logits": f"gate_{i}/logits"})
        # 0-d indices: (1, 2) logits -> (1,) per choice
        run, skip = self.constant("index_1", np.array(1)), self.constant("index_0", np.array(0))
        self.add("Gather", [f"gate_{i}/logits", run], f"gate_{i}/run_logit", axis=1)
        self.add("Gather", [f"gate_{i}/logits", skip], f"gate_{i}/skip_logit", axis=1)
        return self.add("Greater", [f"gate_{i}/run_logit", f"gate_{i}/skip_logit"], f"gate_{i}/opens")

    def exit(self, i: int, hidden: str, state: dict[str, str], running: str | None, logits: str | None
             ) -> tuple[str, str, dict[str, str]]:
        """Exit head and decision after layer i (for an example still running): whether it leaves,
        the exit's logits and the rule's new state."""
        body = self.piece(ExitHead(self.model, i), (self.sample_hidden, self.sample_mask), f"exit_{i}/",
                          {"hidden": hidden, "attention_mask": "attention_mask"},
                          {"exit_logits": f"exit_{i}/logits", "exit_score": f"exit_{i}/score"})
        new_state = {name: f"exit_{i}/state/{name}" for name in state}
        state_args = tuple(self.rule.init_state(1, torch.device("cpu"))[n] for n in state)
        body += self.piece(_Decide(self.rule, i, list(state)), (torch.zeros(1), *state_args), f"decide_{i}/",
                           {"score": f"exit_{i}/score"} | {f"state/{n}": v for n, v in state.items()},
                           {"leave": f"exit_{i}/leaves"} | {f"new/{n}": v for n, v in new_state.items()})
        body.append(helper.make_node("Cast", [f"exit_{i}/leaves"], [f"exit_{i}/leave"], to=TensorProto.BOOL))
        outputs = [f"exit_{i}/leave", f"exit_{i}/logits", *new_state.values()]
        # an example that left earlier: does not leave again, keeps its logits and state
        stays = self.constant("false", np.zeros(1, dtype=bool))
        types = [TensorProto.BOOL, TensorProto.FLOAT] + [
            helper.np_dtype_to_tensor_dtype(v.numpy().dtype) for v in state_args]
        otherwise = [stays, logits, *state.values()] if running else []  # no `running`: every example is
        self.nodes += self.branch(running, f"exit_{i}/out", body, outputs, otherwise, types)
        results = [f"exit_{i}/out"] + [f"exit_{i}/out/{k}" for k in range(1, len(outputs))]
        return results[0], results[1], dict(zip(state, results[2:], strict=True))

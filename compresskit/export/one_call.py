"""The one-call graph: a whole dynamic model as one ONNX graph, for one example at a time.

At batch 1 the per-layer graphs pay a fixed price per ONNX Runtime call and per routing step in
Python, which weighs most on short inputs (docs/benchmarks.md, "Deploy"). Here each gated layer
is an ONNX `If` (run the layer, or pass the state through), and once an example has left at an
exit every later layer and exit is an `If` it passes by, so a lone example costs one call and a
skipped layer still costs nothing. The exit rule's decision (`ExitRule.decide`, its knob as saved) and its
per-example state (patience counters) are in the graph too. A batch of more than one keeps the
per-layer graphs: an `If` takes one branch for the whole batch.

The control flow is `routing.route`, the one every runtime follows, with ONNX nodes for its
arrays (`_GraphOps`) and the stitcher as its backend. The pieces (embeddings, each layer, the gate's
decision, exit, the rule's decision, head) are exported from PyTorch one by one and stitched
together with the onnx API: their nodes are copied under a prefix, branch
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
from compresskit.export.pieces import Embeddings, ExitHead, GateOpens, Head, LayerStep
from compresskit.modeling.routing import plan, route

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


def _inputs_of(nodes: list[onnx.NodeProto]) -> set[str]:
    """Every value name the nodes read, their If branches' nodes included."""
    names: set[str] = set()
    for node in nodes:
        names.update(node.input)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                names |= _inputs_of(list(attribute.g.node))
    return names


def _renamed(sources: list[str], targets: list[str]) -> list[onnx.NodeProto]:
    return [helper.make_node("Identity", [src], [dst]) for src, dst in zip(sources, targets, strict=True)]


class _Stitcher:
    def __init__(self, model, pieces: Path, input_names: list[str]):
        self.model, self.pieces, self.input_names = model, pieces, input_names
        self.shared_bias = model.adapter.bias_axes is not None  # a tensor all layers share (MPNet's position bias)
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
        if "position_bias" in inputs:  # the shared tensor's own sequence axes
            dynamic["position_bias"] = self.model.adapter.bias_axes
        with torch.no_grad():
            torch.onnx.export(module.eval(), args, str(file), input_names=list(inputs), output_names=list(outputs),
                              dynamic_axes=dynamic, opset_version=ONNX_OPSET, dynamo=False)
        graph = onnx.load(str(file)).graph
        names = {i.name: inputs[i.name] for i in graph.input} | {o.name: outputs[o.name] for o in graph.output}

        def rename(name: str) -> str:
            return name if name == "" else names.get(name, prefix + name)

        def rename_nodes(nodes) -> None:
            for node in nodes:
                node.name = prefix + node.name
                node.input[:] = [rename(n) for n in node.input]
                node.output[:] = [rename(n) for n in node.output]
                for attribute in node.attribute:  # a piece's own If/Loop branches (DeBERTa's scripted helpers)
                    if attribute.type == onnx.AttributeProto.GRAPH:
                        body = attribute.g
                        rename_nodes(body.node)
                        for value in [*body.input, *body.output, *body.initializer]:
                            value.name = rename(value.name)
                        for value in body.output:  # traced at one length: shapes must stay open
                            value.type.tensor_type.ClearField("shape")
                        del body.value_info[:]

        nodes = copy.deepcopy(list(graph.node))
        rename_nodes(nodes)
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

    # ---- the graph: `routing.route` with ONNX nodes as its arrays --------------------------------
    # Flat, one layer after the other: an example that has left at an exit still passes every
    # later If, through its empty branch. Nesting the rest of the model in each exit's else-branch
    # measured slower (PCEE, mean-pooled exits, batch 1: 0.78 of the ideal speed-up nested, 0.85
    # flat); our reading: an If hands its branches every outer value they read, so each exit
    # then paid for the weights of all the layers after it.
    def build(self) -> onnx.GraphProto:
        model = self.model
        ids = torch.randint(5, model.config.backbone["vocab_size"], (1, 5))
        args = (ids, self.sample_mask) + ((torch.zeros_like(ids),) if "token_type_ids" in self.input_names else ())
        embed_out = {"hidden": "embedded"} | ({"position_bias": "position_bias"} if self.shared_bias else {})
        self.nodes = self.piece(Embeddings(model), args, "embed/", {n: n for n in self.input_names}, embed_out)
        self.hidden, self.ops = "embedded", _GraphOps(self)
        exits = {int(i) for i in model.exit_heads} if self.rule is not None else set()
        routed = route(plan(model.num_layers, {int(i) for i in model.gates}, exits), self)
        self.add("Cast", [routed.layer_mask], "ran_float", to=TensorProto.FLOAT)
        self.add("ReduceSum", ["ran_float", self.constant("axis_1", np.ones(1, dtype=np.int64))], "ran_count",
                 keepdims=0)
        self.nodes += [helper.make_node("Identity", [routed.logits], ["logits"]),
                       helper.make_node("Identity", ["ran_count"], ["layers_executed"]),
                       helper.make_node("Identity", [routed.exit_layer], ["exit_layer"]),
                       helper.make_node("Identity", [routed.layer_mask], ["layer_mask"])]
        graph_inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, [1, "sequence"])
                        for n in self.input_names]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "labels"]),
                   helper.make_tensor_value_info("layers_executed", TensorProto.FLOAT, [1]),
                   helper.make_tensor_value_info("exit_layer", TensorProto.INT64, [1]),
                   helper.make_tensor_value_info("layer_mask", TensorProto.BOOL, [1, model.num_layers])]
        used = _inputs_of(self.nodes)  # constants the routing made but no node reads (e.g. no exit: no logits_init)
        initializers = [t for t in self.initializers if t.name in used]
        return helper.make_graph(self.nodes, "one_call", graph_inputs, outputs, initializer=initializers)

    def add(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def branch(self, condition: str, name: str, body: list[onnx.NodeProto], body_outputs: list[str],
               otherwise: list[str], types: list[int] | None = None) -> list[onnx.NodeProto]:
        """`body` when `condition` ((1,) bool) holds, else `otherwise` passed through; the results are
        named `name`, `name`/1, ... . A condition known to hold runs the body as it is."""
        results = [name] + [f"{name}/{k}" for k in range(1, len(body_outputs))]
        if condition == TRUE:
            return body + _renamed(body_outputs, results)
        types = types or [TensorProto.FLOAT] * len(results)
        kept = [f"{name}/kept{k}" for k in range(len(results))]
        run = helper.make_graph(body, f"{name}/run", [], _typed(body_outputs, types))
        skip = helper.make_graph(_renamed(otherwise, kept), f"{name}/skip", [], _typed(kept, types))
        scalar = f"{name}/condition"  # If wants a one-element condition
        return [helper.make_node("Squeeze", [condition], [scalar]),
                helper.make_node("If", [scalar], results, then_branch=run, else_branch=skip)]

    # ---- the routing backend: each piece of the model as nodes ------------------------------------
    def _layer_feeds(self, i: int) -> tuple[dict[str, str], tuple]:
        feeds = {"hidden": self.hidden, "attention_mask": "attention_mask"}
        args: tuple = (self.sample_hidden, self.sample_mask)
        if self.shared_bias:
            feeds["position_bias"] = "position_bias"
            args += (self.model.adapter.position_bias(self.model.backbone, self.sample_hidden),)
        return feeds, args

    def gate(self, step, running):
        """Whether gate `step.layer` opens on the current state: `routing.gate_opens`, traced."""
        i = step.layer
        self.nodes += self.piece(GateOpens(self.model, i), (self.sample_hidden, self.sample_mask), f"gate_{i}/",
                                 {"hidden": self.hidden, "attention_mask": "attention_mask"},
                                 {"opens": f"gate_{i}/opens"})
        return f"gate_{i}/opens", None

    def run_layer(self, step, runs):
        i = step.layer
        feeds, args = self._layer_feeds(i)
        body = self.piece(LayerStep(self.model, i), args, f"layer_{i}/", feeds, {"out": f"layer_{i}/out"})
        self.nodes += self.branch(runs, f"h{i}", body, [f"layer_{i}/out"], [self.hidden])
        self.hidden = f"h{i}"

    def exit(self, step, running, state):
        """The exit head and the rule's decision (`ExitRule.decide`, traced) for an example still
        running; one that left earlier does not leave again and keeps its state."""
        i = step.layer
        body = self.piece(ExitHead(self.model, i), (self.sample_hidden, self.sample_mask), f"exit_{i}/",
                          {"hidden": self.hidden, "attention_mask": "attention_mask"},
                          {"exit_logits": f"exit_{i}/logits", "exit_score": f"exit_{i}/score"})
        new_state = {name: f"exit_{i}/state/{name}" for name in state}
        state_args = tuple(self.rule.init_state(1, torch.device("cpu"))[n] for n in state)
        body += self.piece(_Decide(self.rule, i, list(state)), (torch.zeros(1), *state_args), f"decide_{i}/",
                           {"score": f"exit_{i}/score"} | {f"state/{n}": v for n, v in state.items()},
                           {"leave": f"exit_{i}/leaves"} | {f"new/{n}": v for n, v in new_state.items()})
        body.append(helper.make_node("Cast", [f"exit_{i}/leaves"], [f"exit_{i}/leave"], to=TensorProto.BOOL))
        outputs = [f"exit_{i}/leave", f"exit_{i}/logits", *new_state.values()]
        types = [TensorProto.BOOL, TensorProto.FLOAT] + [
            helper.np_dtype_to_tensor_dtype(v.numpy().dtype) for v in state_args]
        otherwise = [self.constant("false", np.zeros(1, dtype=bool)), self.initial_logits(), *state.values()]
        self.nodes += self.branch(running, f"exit_{i}/out", body, outputs, otherwise, types)
        results = [f"exit_{i}/out"] + [f"exit_{i}/out/{k}" for k in range(1, len(outputs))]
        state.update(zip(state, results[2:], strict=True))
        return results[0], results[1], None

    def head(self, running):
        body = self.piece(Head(self.model), (self.sample_hidden, self.sample_mask), "head/",
                          {"hidden": self.hidden, "attention_mask": "attention_mask"}, {"logits": "head/logits"})
        self.nodes += self.branch(running, "head", body, ["head/logits"], [self.initial_logits()])
        return "head"

    def initial_logits(self) -> str:
        return self.constant("logits_init", np.zeros((1, max(self.model.config.num_labels, 1)), np.float32))

    def init_state(self) -> dict[str, str]:
        if self.rule is None:
            return {}
        return {name: self.constant(f"state_init/{name}", value.numpy())
                for name, value in self.rule.init_state(1, torch.device("cpu")).items()}


TRUE = "const/true"  # the (1,) mask of an example known to be running: no If needed


class _GraphOps:
    """`routing.Ops` as ONNX nodes on (1, ...) values, for one example."""

    def __init__(self, stitcher: _Stitcher):
        self.s, self.count = stitcher, 0

    def _name(self, op: str) -> str:
        self.count += 1
        return f"route/{op}_{self.count}"

    def all_rows(self):
        return TRUE

    def logical_and(self, a, b):
        if a == TRUE or b == TRUE:
            return b if a == TRUE else a
        return self.s.add("And", [a, b], self._name("and"))

    def logical_not(self, a):
        return self.s.add("Not", [self._value(a)], self._name("not"))

    def where(self, condition, a, b):
        return a if condition == TRUE else self.s.add("Where", [condition, a, b], self._name("where"))

    def depth(self, value):
        return self.s.constant(f"depth_{value}", np.full(1, value, dtype=np.int64))

    def stack(self, columns):
        stacked = self.s.add("Concat", [self._value(c) for c in columns], self._name("ran"), axis=0)
        return self.s.add("Unsqueeze", [stacked, self.s.constant("axis_0", np.zeros(1, dtype=np.int64))],
                          self._name("ran_row"))

    def any(self, mask):
        return None  # a graph cannot know: every later layer is an If the example passes by

    def _value(self, name: str) -> str:
        return self.s.constant(TRUE, np.ones(1, dtype=bool)) if name == TRUE else name

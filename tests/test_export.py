"""ONNX export: agreement with PyTorch, a runtime that really skips, INT8, predict, atomic artifacts."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from compresskit.errors import CompressKitError
from compresskit.export import OnnxClassifier, export_model
from compresskit.export import onnx_export as onnx_export_module
from compresskit.export.agreement import agreement, agreement_one_at_a_time
from compresskit.modeling.routed import Route
from tests.conftest import make_tokenizer
from tests.test_modeling import compressed, diversify, inputs

SHAPES = [
    pytest.param("bert", dict(), id="bert-static"),
    pytest.param("mpnet", dict(), id="mpnet-static"),
    pytest.param("bert", dict(gates=True), id="bert-gated"),
    pytest.param("mpnet", dict(exits="entropy"), id="mpnet-exits"),
    pytest.param("roberta", dict(gates=True, exits="patience_confidence"), id="roberta-gated+exits"),
    pytest.param("bert", dict(exits="policy"), id="bert-policy"),
    pytest.param("bert", dict(exits="learned", exit_pooling="mean"), id="bert-learned-mean-pooled"),
    # every architecture added since: its static model and its model with gates and exits
    *(pytest.param(arch, shape, id=f"{arch}-{kind}") for arch in ("xlm-roberta", "electra", "distilbert",
                                                                   "deberta-v2", "modernbert")
      for kind, shape in (("static", {}), ("gated+exits", dict(gates=True, exits="patience_confidence")))),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def model_of(backbone: str, shape: dict):
    model = compressed(backbone, **shape)
    if model.is_dynamic:
        diversify(model)
    return model.eval()


def feeds(batch: dict[str, torch.Tensor], runtime: OnnxClassifier) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in batch.items() if k in runtime.inputs}


@pytest.mark.parametrize("backbone, shape", SHAPES)
def test_export_agrees_with_pytorch_and_skips_the_same_layers(backbone, shape, tokenizer, tmp_path):
    model = model_of(backbone, shape)
    manifest = export_model(model, tokenizer, tmp_path / "onnx")
    assert manifest["kind"] == ("dynamic" if model.is_dynamic else "static")
    assert manifest["max_abs_diff"] <= 1e-4
    runtime = OnnxClassifier.from_pretrained(tmp_path / "onnx")
    batch = {k: v for k, v in inputs(batch=12, seed=3).items() if k in runtime.inputs}
    # the export's logits on its own routes, PyTorch replaying them; a route PyTorch would have taken
    # otherwise must be a near-tie (a decision within 1e-4 of its threshold), never a clear one
    batched = agreement(model, runtime, batch, tie_tolerance=1e-4)
    assert batched.max_abs_diff <= 1e-4 and batched.mismatched == 0
    assert batched.flipped <= 1  # a near-tie is rare: more would mean the tolerance hides a bug
    if model.is_dynamic:
        got = runtime.forward(feeds(batch, runtime))
        assert len(set(got.layers_executed.tolist())) > 1  # examples really took different paths
        replay = model(**batch, route=Route(torch.from_numpy(got.layer_mask), torch.from_numpy(got.exit_layer)))
        np.testing.assert_array_equal(replay.layer_mask.numpy(), got.layer_mask)  # PyTorch ran the export's route
        np.testing.assert_array_equal(replay.exit_layer.numpy(), got.exit_layer)
        # one at a time: the one-call graph, the same logits on the same route
        alone = agreement_one_at_a_time(model, runtime, batch, tie_tolerance=1e-4)
        assert alone.examples == 12 and alone.max_abs_diff <= 1e-4 and alone.mismatched == 0
        assert alone.flipped <= 1


def _tie_a_gate(model, batch, layer: int, row: int) -> None:
    """Move gate `layer`'s threshold onto example `row`'s own gate value: its decision is a coin toss."""
    with torch.no_grad():
        logits = model(**batch, dynamic=False).gate_logits[layer]
        model.gates[str(layer)].net[2].bias[1] -= logits[row, 1] - logits[row, 0]


def test_a_near_tie_decided_the_other_way_is_counted_and_a_real_mismatch_fails(tokenizer, tmp_path):
    # another CPU's rounding, simulated: after the export, PyTorch's gate at a tied example moves by
    # 1e-5 (well inside the 1e-4 tolerance) to the other side of the export's decision
    model = model_of("bert", dict(gates=True))
    batch = {k: v for k, v in inputs(batch=12, seed=3).items() if k != "token_type_ids"}
    row, layer = 4, 1
    _tie_a_gate(model, batch, layer, row)
    export_model(model, tokenizer, tmp_path / "onnx")
    runtime = OnnxClassifier(tmp_path / "onnx")
    runs_there = bool(runtime.forward(feeds(batch, runtime)).layer_mask[row, layer])
    bias = model.gates[str(layer)].net[2].bias
    with torch.no_grad():
        bias[1] += -1e-5 if runs_there else 1e-5
        assert bool(model(**batch).layer_mask[row, layer]) != runs_there  # PyTorch now goes the other way
    result = agreement(model, runtime, batch, tie_tolerance=1e-4)
    assert result.flipped >= 1 and result.mismatched == 0 and result.max_abs_diff <= 1e-4
    result.check(1e-4)  # a near-tie is not a failure
    with torch.no_grad():  # a real change: the gate's decision moves by far more than rounding
        bias[1] += 3.0
    result = agreement(model, runtime, batch, tie_tolerance=1e-4)
    assert result.mismatched > 0
    with pytest.raises(CompressKitError, match="disagree"):
        result.check(1e-4)


def test_an_exit_near_tie_counts_as_a_flip_and_a_changed_threshold_as_a_mismatch(tokenizer, tmp_path):
    model = model_of("bert", dict(exits="entropy"))
    batch = {k: v for k, v in inputs(batch=12, seed=3).items() if k != "token_type_ids"}
    export_model(model, tokenizer, tmp_path / "onnx")
    runtime = OnnxClassifier(tmp_path / "onnx")
    got = runtime.forward(feeds(batch, runtime))
    row = int(np.argmin(got.exit_layer))  # an example that leaves early in the export
    exit_index = int(got.exit_layer[row]) - 1
    assert exit_index < model.num_layers - 1
    with torch.no_grad():
        exit_logits = model(**batch, dynamic=False).exit_logits[exit_index]
    tied = float(model.exit_rule.score(exit_index, exit_logits, None)[row])
    # both thresholds a hair from that example's entropy, on either side: only it (and any example
    # as close) is decided differently, well within the tolerance
    runtime.exit_rule.threshold, model.exit_rule.threshold = tied + 1e-6, tied - 1e-6
    result = agreement(model, runtime, batch, tie_tolerance=1e-4)
    assert result.flipped >= 1 and result.mismatched == 0
    model.exit_rule.threshold = 0.0  # nobody leaves in PyTorch: a real disagreement
    assert agreement(model, runtime, batch, tie_tolerance=1e-4).mismatched > 0


def test_the_runtime_runs_each_layer_only_on_the_rows_that_need_it(tokenizer, tmp_path, monkeypatch):
    model = model_of("bert", dict(gates=True))
    export_model(model, tokenizer, tmp_path / "onnx")
    runtime = OnnxClassifier(tmp_path / "onnx")
    rows_seen: dict[str, int] = {}
    run = runtime._run

    def counting(name, feeds_):
        rows_seen[name] = rows_seen.get(name, 0) + len(next(iter(feeds_.values())))
        return run(name, feeds_)

    monkeypatch.setattr(runtime, "_run", counting)
    batch = inputs(batch=12, seed=3)
    out = runtime.forward(feeds(batch, runtime))
    with torch.no_grad():
        mask = model(**batch).layer_mask
    for i in range(model.num_layers):
        assert rows_seen.get(f"layer_{i}", 0) == int(mask[:, i].sum())  # skipped rows cost nothing
    assert sum(rows_seen.get(f"layer_{i}", 0) for i in range(model.num_layers)) == out.layers_executed.sum()
    assert out.layers_executed.sum() < 12 * model.num_layers


ONE_CALL_SHAPES = [dict(gates=True), dict(exits="patience"), dict(gates=True, exits="patience_confidence")]


@pytest.mark.parametrize("shape", ONE_CALL_SHAPES, ids=["gated", "exits", "gated+exits"])
def test_one_example_is_one_call_that_runs_only_its_layers(shape, tokenizer, tmp_path, monkeypatch):
    # the one-call graph routes inside ONNX Runtime (If per gate and exit): ORT's profile of one
    # example lists kernels of exactly the layers PyTorch ran for it, the others cost nothing
    import onnxruntime as ort

    model = model_of("bert", shape)
    export_model(model, tokenizer, tmp_path / "onnx")
    runtime = OnnxClassifier(tmp_path / "onnx")
    calls: list[str] = []
    run = runtime._run
    monkeypatch.setattr(runtime, "_run", lambda name, feeds_: calls.append(name) or run(name, feeds_))
    batch = inputs(batch=6, seed=3)
    with torch.no_grad():
        expected = model(**batch)
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "profile")
    seen_skips = 0
    for row in range(6):
        alone = {k: v[row:row + 1].numpy() for k, v in batch.items() if k in runtime.inputs}
        calls.clear()
        assert runtime.forward(alone).layers_executed[0] == expected.layers_executed[row]
        assert calls == ["one_call"]
        session = ort.InferenceSession(str(tmp_path / "onnx" / "one_call.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        session.run(None, {"token_type_ids": np.zeros_like(alone["input_ids"]), **alone})
        events = json.loads(open(session.end_profiling()).read())
        kernels = [e["name"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        ran = {i for i in range(model.num_layers) if any(name.startswith(f"layer_{i}/") for name in kernels)}
        assert ran == {i for i in range(model.num_layers) if expected.layer_mask[row, i]}
        seen_skips += model.num_layers - len(ran)
    assert seen_skips > 0  # the test saw skipped layers


@pytest.mark.parametrize("shape", [dict(gates=True), dict(exits="policy"), dict(gates=True, exits="entropy")],
                         ids=["gated", "exits", "gated+exits"])
def test_per_layer_graphs_cost_one_call_per_executed_layer(shape, tokenizer, tmp_path, monkeypatch):
    # batches (and exports without the one-call graph) go through the per-layer graphs. The exit
    # head, the rule's score, the later gates and the classifier head ride in the layer's graph:
    # a lone example makes one call per layer it runs (+ the embeddings' when layer 0 has a gate); a
    # layer it skips costs nothing, unless an exit follows it (the exit score of its unchanged state)
    model = model_of("bert", shape)
    export_model(model, tokenizer, tmp_path / "onnx")
    runtime = OnnxClassifier(tmp_path / "onnx", one_call=False)
    calls: list[str] = []
    run = runtime._run
    monkeypatch.setattr(runtime, "_run", lambda name, feeds_: calls.append(name) or run(name, feeds_))
    batch = feeds(inputs(batch=6, seed=3), runtime)
    seen_skips = 0
    for row in range(6):
        calls.clear()
        out = runtime.forward({k: v[row:row + 1] for k, v in batch.items()})
        reached = int(out.exit_layer[0])  # layers the example went through, run or skipped
        executed = int(out.layers_executed[0])
        skipped_exits = sum(name.startswith("after_") for name in calls)
        # the embeddings share layer 0's call unless a gate may skip layer 0
        embed_calls = int("0" in model.gates)
        assert calls.count("embed") == embed_calls and len(calls) == embed_calls + executed + skipped_exits
        assert sum(name.startswith("layer_") for name in calls) == executed
        if "exits" not in shape:
            assert skipped_exits == 0
        seen_skips += reached - executed
    if "gates" in shape:
        assert seen_skips > 0  # the test saw skipped layers


def test_an_export_from_an_older_format_asks_to_export_again(tokenizer, tmp_path):
    export_model(model_of("bert", dict(gates=True)), tokenizer, tmp_path / "onnx")
    manifest = json.loads((tmp_path / "onnx" / "compresskit_export.json").read_text())
    (tmp_path / "onnx" / "compresskit_export.json").write_text(json.dumps({**manifest, "format": 3}))
    with pytest.raises(CompressKitError, match="export the model again"):
        OnnxClassifier(tmp_path / "onnx")


def test_an_export_without_the_one_call_graph_still_runs_one_example(tokenizer, tmp_path):
    model = model_of("bert", dict(gates=True))
    export_model(model, tokenizer, tmp_path / "onnx")
    manifest = json.loads((tmp_path / "onnx" / "compresskit_export.json").read_text())
    del manifest["one_call"]  # as format 4 wrote it
    (tmp_path / "onnx" / "compresskit_export.json").write_text(json.dumps({**manifest, "format": 4}))
    runtime = OnnxClassifier(tmp_path / "onnx")
    batch = inputs(batch=1, seed=3)
    with torch.no_grad():
        expected = model(**batch)
    got = runtime.forward(feeds(batch, runtime))
    np.testing.assert_allclose(got.logits, expected.logits.numpy(), atol=1e-4, rtol=0)


def test_a_threshold_changed_after_export_is_honoured_one_example_at_a_time(tokenizer, tmp_path, caplog):
    # the one-call graph holds the knob as exported; config.json's new one must win
    model = model_of("bert", dict(exits="entropy"))
    export_model(model, tokenizer, tmp_path / "onnx")
    exported = OnnxClassifier(tmp_path / "onnx")
    batch = feeds(inputs(batch=4, seed=3), exported)
    # with the knob as exported some example leaves early (else the check below could not fail)
    assert min(exported.forward({k: v[row:row + 1] for k, v in batch.items()}).exit_layer[0]
               for row in range(4)) < model.num_layers
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    config["exit_rule"]["threshold"] = 0.0  # no example is that sure: every one runs to the end
    (tmp_path / "onnx" / "config.json").write_text(json.dumps(config))
    runtime = OnnxClassifier(tmp_path / "onnx")
    assert "exit rule in config.json changed" in caplog.text
    for row in range(4):
        assert runtime.forward({k: v[row:row + 1] for k, v in batch.items()}).exit_layer[0] == model.num_layers


def test_a_batch_predicts_what_one_example_at_a_time_does(tokenizer, tmp_path):
    model = model_of("mpnet", dict(exits="entropy"))
    export_model(model, tokenizer, tmp_path / "onnx")
    runtime = OnnxClassifier(tmp_path / "onnx")
    batch = inputs(batch=8, seed=5)
    together = runtime.forward(feeds(batch, runtime))
    for row in range(8):
        length = int(batch["attention_mask"][row].sum())
        alone = runtime.forward({k: v[row:row + 1, :length] for k, v in feeds(batch, runtime).items()})
        np.testing.assert_allclose(alone.logits[0], together.logits[row], atol=1e-4)
        assert alone.exit_layer[0] == together.exit_layer[row]


def test_onnx_runtime_threads_sleep_between_calls_instead_of_spinning(tokenizer, tmp_path):
    """A dynamic export is several sessions taking turns: spinning idle threads of one session took the
    cores the next needed (measured 2x slower at batch 1 on 2 cores; docs/deploy.md)."""
    from compresskit.export.engines import OrtGraph

    export_model(model_of("bert", dict(gates=True)), tokenizer, tmp_path / "onnx")
    graph = OrtGraph(tmp_path / "onnx" / "layer_0.onnx", threads=2)
    options = graph._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


def test_int8_graphs_are_written_and_used(tokenizer, tmp_path):
    model = model_of("bert", dict(gates=True))
    manifest = export_model(model, tokenizer, tmp_path / "onnx", quantize="int8")
    assert manifest["quantized"]["suffix"] == "_quantized"
    layer = onnx.load(tmp_path / "onnx" / "layer_0_quantized.onnx")
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {node.op_type for node in layer.graph.node}
    for graph in manifest["graphs"]:
        assert (tmp_path / "onnx" / graph.replace(".onnx", "_quantized.onnx")).exists()


def test_int8_stays_close_to_fp32_on_a_trained_model(tiny_recipe, tmp_path):
    # a fine-tuned model (its logits mean something): INT8 may round, not change the answers
    from compresskit.pipeline import Pipeline
    from compresskit.recipe import load_recipe

    recipe = tiny_recipe([{"strategy": "finetune", "name": "teacher", "epochs": 6, "learning_rate": 2e-3,
                           "batch_size": 8}, {"strategy": "export", "name": "onnx", "quantize": "int8"}])
    report = Pipeline(load_recipe(recipe), tmp_path / "run").run()
    fp32, int8 = (report["stages"][1]["info"][key] for key in ("validation", "validation_int8"))
    assert fp32["pytorch_accuracy"] >= 0.9  # the model learned the task, so agreement is not a coin's
    assert int8["prediction_agreement"] >= 0.95 and abs(int8["onnx_accuracy"] - fp32["onnx_accuracy"]) <= 0.05
    assert int8["max_abs_diff"] <= 0.5  # logits of order 1-5 here


def test_static_int8_is_calibrated_qdq_and_stays_close_on_a_trained_model(tiny_recipe, tmp_path):
    from compresskit.pipeline import Pipeline
    from compresskit.recipe import load_recipe

    recipe = tiny_recipe([{"strategy": "finetune", "name": "teacher", "epochs": 6, "learning_rate": 2e-3,
                           "batch_size": 8},
                          {"strategy": "export", "name": "onnx", "quantize": "int8-static", "calibration_rows": 32}])
    report = Pipeline(load_recipe(recipe), tmp_path / "run").run()
    info = report["stages"][1]["info"]
    assert "static" in info["manifest"]["quantized"]["scheme"]
    graph = onnx.load(tmp_path / "run" / "stages" / "01-onnx" / "onnx" / "model_quantized.onnx")
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    fp32, int8 = info["validation"], info["validation_int8"]
    assert fp32["pytorch_accuracy"] >= 0.9
    assert int8["prediction_agreement"] >= 0.95 and abs(int8["onnx_accuracy"] - fp32["onnx_accuracy"]) <= 0.05


def test_static_int8_of_a_hadskip_model_is_calibrated_on_its_routes_and_stays_close(tiny_recipe, tmp_path):
    # a trained gated model: each layer graph gets QDQ ranges from the rows the routing sends it
    from compresskit.pipeline import Pipeline
    from compresskit.recipe import load_recipe

    recipe = tiny_recipe([{"strategy": "finetune", "name": "teacher", "epochs": 6, "learning_rate": 2e-3,
                           "batch_size": 8},
                          {"strategy": "hadskip", "name": "skip", "budget": 2},
                          {"strategy": "export", "name": "onnx", "quantize": "int8-static", "calibration_rows": 32,
                           "runtime": "openvino"}])
    report = Pipeline(load_recipe(recipe), tmp_path / "run").run()
    info = report["stages"][2]["info"]
    quantized = info["manifest"]["quantized"]
    assert "static" in quantized["scheme"] and quantized["one_call"] is False
    directory = tmp_path / "run" / "stages" / "02-onnx" / "onnx"
    for graph in info["manifest"]["graphs"]:
        if graph.startswith("layer_") and graph not in quantized["fp32_graphs"]:
            ops = {node.op_type for node in onnx.load(directory / graph.replace(".onnx", "_quantized.onnx")).graph.node}
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    assert not (directory / "one_call_quantized.onnx").exists()
    fp32, int8 = info["validation"], info["validation_int8"]
    assert fp32["pytorch_accuracy"] >= 0.8
    assert int8["prediction_agreement"] >= 0.9 and abs(int8["onnx_accuracy"] - fp32["onnx_accuracy"]) <= 0.1
    assert info["validation_openvino_int8"]["prediction_agreement"] >= 0.9  # OpenVINO reads the same QDQ pairs
    # lone examples take the INT8 per-layer graphs: the same answers as inside a batch
    runtime = OnnxClassifier(directory, quantized=True)
    batch = {k: v.numpy() for k, v in inputs(batch=8, seed=5).items()}
    together = runtime.forward(batch)
    assert len(set(together.layers_executed.tolist())) > 1  # the batch really split into depths
    for row in range(8):
        alone = runtime.forward({k: v[row:row + 1, :int(batch["attention_mask"][row].sum())] for k, v in batch.items()})
        np.testing.assert_array_equal(alone.layer_mask[0], together.layer_mask[row])
        np.testing.assert_allclose(alone.logits[0], together.logits[row], atol=1e-2)


def test_a_layer_no_calibration_row_reaches_stays_fp32_and_is_named(tokenizer, tmp_path, monkeypatch):
    from compresskit.export import quantize

    routed = quantize._routed_feeds

    def without_last_layer(*args):
        feeds = routed(*args)
        feeds.pop("layer_2.onnx", None)  # as if every calibration row had left before the last layer
        return feeds

    monkeypatch.setattr(quantize, "_routed_feeds", without_last_layer)
    words = "the a movie good bad plot actor great dull fun".split()
    rng = np.random.default_rng(0)
    rows = [[" ".join(rng.choice(words, rng.integers(2, 12)))] for _ in range(32)]
    manifest = export_model(model_of("bert", dict(gates=True)), tokenizer, tmp_path / "onnx",
                            quantize="int8-static", calibration=rows)
    assert manifest["quantized"]["fp32_graphs"] == ["layer_2.onnx"]
    last = onnx.load(tmp_path / "onnx" / "layer_2_quantized.onnx")
    assert "QuantizeLinear" not in {node.op_type for node in last.graph.node}
    first = onnx.load(tmp_path / "onnx" / "layer_1_quantized.onnx")
    assert "QuantizeLinear" in {node.op_type for node in first.graph.node}
    batch = {k: v.numpy() for k, v in inputs(batch=6, seed=3).items()}
    assert OnnxClassifier(tmp_path / "onnx", quantized=True).forward(batch).logits.shape == (6, 2)


def test_static_int8_needs_calibration_rows(tokenizer, tmp_path):
    with pytest.raises(CompressKitError, match="calibration rows"):
        export_model(model_of("bert", dict()), tokenizer, tmp_path / "onnx", quantize="int8-static")
    assert not (tmp_path / "onnx").exists()


def test_an_export_that_fails_validation_leaves_nothing(tokenizer, tmp_path, monkeypatch):
    def disagree(*args, **kwargs):
        raise CompressKitError("export: ONNX and PyTorch disagree")

    monkeypatch.setattr(onnx_export_module, "_validate", disagree)
    with pytest.raises(CompressKitError, match="disagree"):
        export_model(model_of("bert", dict(gates=True)), tokenizer, tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_export_is_not_overwritten_by_accident(tokenizer, tmp_path):
    (tmp_path / "onnx").mkdir()
    with pytest.raises(CompressKitError, match="exists"):
        export_model(model_of("bert", {}), tokenizer, tmp_path / "onnx")


def test_cli_export_then_predict_texts_files_and_bad_input(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "onnx"
    result = cli("export", str(tiny_model_dir), "--output", str(out))
    assert result.code == 0, result.output
    assert json.loads((out / "compresskit_export.json").read_text())["kind"] == "static"

    result = cli("predict", str(out), "--text", "a fine film", "--text", "", "--text", "word " * 500)
    assert result.code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3 and all({"label", "score", "layers"} <= set(x) for x in lines)  # empty, overlong: fine

    txt = tmp_path / "in.txt"
    txt.write_text("good\n\nbad\n")
    result = cli("predict", str(out), "--file", str(txt))
    assert result.code == 0 and len(result.stdout.splitlines()) == 3

    table = tmp_path / "in.csv"
    table.write_text("review,id\ngreat,1\n")
    for args, message in [
        (["--file", str(table)], "--column"),
        (["--file", str(table), "--column", "text"], "has no column(s) ['text']"),
        (["--file", str(tmp_path / "missing.txt")], "does not exist"),
        ([], "nothing to classify"),
    ]:
        result = cli("predict", str(out), *args)
        assert result.code == 2 and message in result.output, result.output
    result = cli("predict", str(out), "--file", str(table), "--column", "review")
    assert result.code == 0 and len(result.stdout.splitlines()) == 1

    result = cli("predict", str(tmp_path), "--text", "x")
    assert result.code == 2 and "not a compresskit export" in result.output

    # the same export on OpenVINO: the same answers; bf16 on ONNX Runtime is refused
    texts = ["--text", "a fine film", "--text", "dull and boring"]
    default, served = cli("predict", str(out), *texts), cli("predict", str(out), *texts, "--runtime", "openvino")
    assert served.code == 0, served.output
    assert [json.loads(x)["label"] for x in served.stdout.splitlines()] == \
        [json.loads(x)["label"] for x in default.stdout.splitlines()]
    result = cli("predict", str(out), *texts, "--precision", "bf16")
    assert result.code == 2 and "use --runtime openvino for bf16" in result.output, result.output


def test_benchmark_runs_models_and_exports_side_by_side(tiny_model_dir, tiny_task, tokenizer, tmp_path):
    from compresskit.benchmark import benchmark, markdown

    model = model_of("bert", dict(gates=True))
    model.save_pretrained(tmp_path / "gated")
    tokenizer.save_pretrained(tmp_path / "gated")
    export_model(model, tokenizer, tmp_path / "onnx", quantize="int8")
    paths = [str(tiny_model_dir), str(tmp_path / "gated"), str(tmp_path / "onnx"), f"{tmp_path / 'onnx'}:int8",
             f"{tmp_path / 'onnx'}:openvino", f"{tmp_path / 'onnx'}:openvino-bf16"]
    threads = torch.get_num_threads()
    result = benchmark(paths, task=tiny_task, split="test", examples=10, batch_sizes=(1, 4), repeats=1, warmup=1,
                       threads=threads + 1)
    assert torch.get_num_threads() == threads  # the caller's setting is restored (it leaked into later tests)
    assert result["threads"] == threads + 1
    rows = result["rows"]
    import openvino

    # a row names the precision OpenVINO really ran: a CPU without bf16 units keeps fp32
    native = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    bf16_row = "openvino-bf16" if native else "openvino-fp32 (bf16 asked; not native here)"
    assert [(r["runtime"], r["batch_size"]) for r in rows] == [
        (kind, b) for b in (1, 4) for kind in ("pytorch", "pytorch", "onnxruntime-fp32", "onnxruntime-fp32-int8",
                                               "openvino-fp32", bf16_row)]
    assert {r["isa"] for r in rows if r["runtime"] == "pytorch"} == {torch.backends.cpu.get_cpu_capability()}
    assert "| instructions |" in markdown(result)
    # FLOPs/s per row, against the machine's measured GEMM peak (graph_flops.py counts the exports)
    assert all(r["gflops_per_example"] > 0 and r["gflops_per_s"] > 0 for r in rows)
    assert result["peak_gflops_per_s"]["fp32"] > 0 and "% of peak" in markdown(result)
    assert all(r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["examples_per_s"] > 0 for r in rows)
    by_model = {(r["model"], r["batch_size"]): r for r in rows}
    assert by_model[(str(tiny_model_dir), 4)]["avg_layers"] == 4.0
    # both skip layers (that they agree route by route is the export tests' business)
    assert by_model[(str(tmp_path / "gated"), 4)]["avg_layers"] < model.num_layers
    assert by_model[(str(tmp_path / "onnx"), 4)]["avg_layers"] < model.num_layers
    assert "| model | runtime |" in markdown(result)


def test_cli_benchmark_rejects_what_it_cannot_run(cli, tmp_path):
    result = cli("benchmark", str(tmp_path / "nope"))
    assert result.code == 2 and "not a directory" in result.output
    result = cli("benchmark", str(tmp_path), "--batch-sizes", "one")
    assert result.code == 2 and "--batch-sizes" in result.output


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("backbone, shape", SHAPES)
def test_openvino_runs_every_export_on_the_same_routes(backbone, shape, precision, tokenizer, tmp_path):
    """OpenVINO on the export's own graphs: the logits within the precision's tolerance, every route
    identical or a near-tie within it, batched and one example at a time (the one-call graph).
    fp32: 1e-4. bf16 keeps 8 bits of mantissa (0.4% per rounding): 10% of the batch's largest logit
    on these tiny random models, whose diversified weights make every rounding count (measured up
    to 5.7%; the real models' agreement is measured on their test split, docs/benchmarks.md)."""
    model = model_of(backbone, shape)
    export_model(model, tokenizer, tmp_path / "onnx")
    if backbone == "deberta-v2":  # its relative-position graph has an If of dynamic rank
        with pytest.raises(CompressKitError, match="OpenVINO cannot compile"):
            OnnxClassifier(tmp_path / "onnx", runtime="openvino", precision=precision)
        return
    runtime = OnnxClassifier(tmp_path / "onnx", runtime="openvino", precision=precision)
    batch = {k: v for k, v in inputs(batch=12, seed=3).items() if k in runtime.inputs}
    with torch.no_grad():
        scale = float(model(**batch, dynamic=False).logits.abs().max())
    tolerance = 1e-4 if precision == "fp32" else 0.1 * max(1.0, scale)
    batched = agreement(model, runtime, batch, tie_tolerance=tolerance)
    assert batched.max_abs_diff <= tolerance and batched.mismatched == 0, (batched.max_abs_diff, batched.mismatched)
    assert batched.flipped <= (1 if precision == "fp32" else 3)
    if model.is_dynamic:
        alone = agreement_one_at_a_time(model, runtime, batch, tie_tolerance=tolerance)
        assert alone.examples == 12 and alone.max_abs_diff <= tolerance and alone.mismatched == 0


def test_a_bf16_runtime_is_held_to_its_predictions():
    from compresskit.strategies.export import check_served

    good = {"prediction_agreement": 0.996, "onnx_accuracy": 0.835, "pytorch_accuracy": 0.833}
    check_served(good, "bf16", "export")
    check_served({**good, "prediction_agreement": 0.5}, "fp32", "export")  # fp32 is held to atol instead
    with pytest.raises(CompressKitError, match="agree with PyTorch on 99.00%"):
        check_served({**good, "prediction_agreement": 0.99}, "bf16", "export")
    with pytest.raises(CompressKitError, match="move its accuracy by 0.0040"):
        check_served({**good, "onnx_accuracy": 0.837}, "bf16", "export")


def test_the_export_stage_checks_its_serving_runtime(tiny_recipe, tmp_path):
    from compresskit.pipeline import Pipeline
    from compresskit.recipe import load_recipe

    recipe = tiny_recipe([{"strategy": "finetune", "name": "teacher", "epochs": 1, "batch_size": 16},
                          {"strategy": "export", "name": "onnx", "runtime": "openvino"}])
    report = Pipeline(load_recipe(recipe), tmp_path / "run").run()
    served = report["stages"][1]["info"]["validation_openvino_fp32"]
    assert served["mismatched"] == 0 and served["max_abs_diff"] <= 1e-4 and served["examples"] == 48


@pytest.mark.parametrize("stage, message", [
    ({"runtime_precision": "bf16"}, "bf16 needs runtime: openvino"),
    ({"runtime": "openvino"}, "OpenVINO cannot compile DeBERTa"),
])
def test_validate_refuses_a_serving_runtime_that_cannot_serve(cli, tiny_recipe, tmp_path, stage, message):
    from tests.conftest import make_model_dir
    from tests.test_bad_input import expect_2

    model = make_model_dir(tmp_path / "deberta", backbone="deberta-v2")
    recipe = tiny_recipe([{"strategy": "export", "name": "onnx", **stage}], model=str(model))
    expect_2(cli("validate", recipe), message)


def test_openvino_runs_the_static_int8_graphs_as_onnx_runtime_does(tiny_recipe, tmp_path):
    """OpenVINO reads the QDQ pairs of a static INT8 export as its own INT8 (no second quantizer)."""
    from compresskit.pipeline import Pipeline
    from compresskit.recipe import load_recipe

    recipe = tiny_recipe([{"strategy": "finetune", "name": "teacher", "epochs": 6, "learning_rate": 2e-3,
                           "batch_size": 8},
                          {"strategy": "export", "name": "onnx", "quantize": "int8-static", "calibration_rows": 32,
                           "runtime": "openvino"}])
    report = Pipeline(load_recipe(recipe), tmp_path / "run").run()
    info = report["stages"][1]["info"]
    # the stage measured both runtimes on the INT8 graphs against PyTorch
    assert info["validation_openvino_int8"]["prediction_agreement"] >= 0.95
    directory = tmp_path / "run" / "stages" / "01-onnx" / "onnx"
    batch = {k: v.numpy() for k, v in inputs(batch=16, seed=4).items()}
    ort = OnnxClassifier(directory, quantized=True).forward(batch).logits
    ov = OnnxClassifier(directory, quantized=True, runtime="openvino").forward(batch).logits
    np.testing.assert_allclose(ov, ort, atol=1e-2)  # the same quantized arithmetic, up to rounding

"""Rebuild a PyTorch BERT checkpoint from a sentence-transformers ONNX export.

The export keeps the biases and LayerNorms under their PyTorch names but stores every Linear
weight as an anonymous, transposed MatMul initializer. Each MatMul feeds an Add with a named
bias, which tells which Linear it was. The result is checked against onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from safetensors.torch import save_file

from compresskit.errors import AssetError

PREFIX = "model.0.auto_model."


def _state_dict(model: onnx.ModelProto) -> dict[str, torch.Tensor]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # constants can also hide in Constant nodes; none carry weights in these exports
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {k[len(PREFIX):]: torch.from_numpy(np.array(v)) for k, v in inits.items() if k.startswith(PREFIX)}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].startswith(PREFIX):
            continue
        bias = next(
            (i for add in consumers.get(node.output[0], []) if add.op_type == "Add"
             for i in add.input if i.startswith(PREFIX) and i.endswith(".bias")),
            None,
        )
        if bias is None:
            raise AssetError(f"ONNX MatMul {node.name} has no named bias; cannot map it to a Linear")
        weight = np.array(inits[node.input[1]]).T.copy()
        state[bias[len(PREFIX):-len(".bias")] + ".weight"] = torch.from_numpy(weight)
    return state


def bert_from_onnx(onnx_bytes: bytes, target: Path, tolerance: float = 1e-4) -> None:
    """Write config.json + model.safetensors of the BERT encoder in `onnx_bytes` to `target`."""
    from transformers import BertConfig, BertModel

    model = onnx.load_from_string(onnx_bytes)
    state = _state_dict(model)
    n_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    hidden = state["embeddings.word_embeddings.weight"].shape[1]
    config = BertConfig(
        vocab_size=state["embeddings.word_embeddings.weight"].shape[0],
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=hidden // 32,  # MiniLM: head size 32
        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
        architectures=["BertModel"],
    )
    bert = BertModel(config, add_pooling_layer=False).eval()
    missing, unexpected = bert.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "embeddings.position_ids"]
    if missing or unexpected:
        raise AssetError(f"ONNX conversion: missing {missing}, unexpected {unexpected}")
    _check_against_onnxruntime(bert, onnx_bytes, tolerance)
    save_file({k: v.contiguous() for k, v in bert.state_dict().items()}, str(target / "model.safetensors"),
              metadata={"format": "pt"})
    (target / "config.json").write_text(json.dumps(config.to_dict(), indent=2))


def _check_against_onnxruntime(bert: torch.nn.Module, onnx_bytes: bytes, tolerance: float) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    vocab = bert.config.vocab_size
    ids = np.array([[101, 7592, 2088, 2003, 1037, 3231, 102, 0]], dtype=np.int64) % vocab
    mask = (ids != 0).astype(np.int64)
    feeds = {i.name: (ids if i.name == "input_ids" else mask) for i in session.get_inputs()}
    # the token embeddings (last hidden state) are the one rank-3 output
    expected = next(o for o in session.run(None, feeds) if o.ndim == 3)
    with torch.no_grad():
        got = bert(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    diff = float(np.abs(got.numpy() - expected)[mask.astype(bool)].max())
    if diff > tolerance:
        raise AssetError(f"ONNX conversion differs from onnxruntime by {diff:.2e} (> {tolerance})")

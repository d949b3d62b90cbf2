"""The BERT encoder as an ONNX graph, built from model.safetensors and cached beside it.

ONNX Runtime runs it (see engine.py); building it needs only the `onnx` package's
helpers and the weights, never PyTorch. The graph uses ONNX Runtime's fused CPU kernels
(com.microsoft Attention, SkipLayerNormalization, BiasGelu): one operator for the
whole multi-head attention with its padding mask, one for residual + bias + LayerNorm,
one for bias + exact erf GELU. The maths is sentence-transformers' in float32.

    inputs:  input_ids int64 (batch, seq), attention_mask int32 (batch, seq): 1 = real token
    output:  hidden float32 (batch, seq, hidden): the last layer, before pooling

Pooling and normalisation stay in numpy (engine.py), where the padding is known.

The file is model-<fingerprint>.onnx in the model folder, written once (to a temporary
name, then renamed: a reader never sees half a file). The fingerprint covers the weights'
header and size, config.json and GRAPH_VERSION, so a re-pulled model or a changed
builder gets a new file and old ones are removed. In a read-only folder the graph is
built in memory on every load (about 1 s) instead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .model_files import EmbeddingError, read_safetensors, safetensors_header

GRAPH_VERSION = 1  # bump when the graph built below changes
_OPSET = 17  # LayerNormalization is in the standard domain from 17
_PREFIX = "model-"


def graph_path(model_dir: Path) -> Path:
    """Where this folder's graph lives; its name changes whenever its inputs change."""
    size, header = safetensors_header(model_dir / "model.safetensors")
    digest = hashlib.sha256()
    for part in (f"v{GRAPH_VERSION} {size}".encode(), header, (model_dir / "config.json").read_bytes()):
        digest.update(len(part).to_bytes(8, "little") + part)
    return model_dir / f"{_PREFIX}{digest.hexdigest()[:16]}.onnx"


def ensure_graph(model_dir: Path, config: dict[str, Any]) -> Path | bytes:
    """The graph's file, built now if missing; or its bytes when the folder is read-only."""
    path = graph_path(model_dir)
    if path.is_file():
        return path
    data = build_graph(model_dir, config)
    try:
        fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".model-", suffix=".onnx.tmp")
    except OSError:
        return data  # read-only folder: documented above
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return data
    for old in model_dir.glob(f"{_PREFIX}*.onnx"):
        if old != path:
            old.unlink(missing_ok=True)  # an older builder's or older weights' graph
    return path


def build_graph(model_dir: Path, config: dict[str, Any]) -> bytes:
    """The serialised ONNX model of the encoder in `model_dir` (about 90 MB: the weights).

    Over 80 lines on purpose: it is the graph written out node after node, in the order the
    encoder computes; cut into pieces, each would pass the same dozen names along."""
    from onnx import TensorProto, helper, numpy_helper

    path = model_dir / "model.safetensors"
    tensors = read_safetensors(path)
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    inner, eps = config["intermediate_size"], float(config.get("layer_norm_eps", 1e-12))

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        array = tensors.get(prefix + name)
        if array is None or array.shape != shape:
            found = "missing" if array is None else f"shape {array.shape}"
            raise EmbeddingError(
                f"{path}: tensor {prefix + name} is {found}, expected shape {shape}. "
                "The file is not the model config.json describes; pull the model again."
            )
        return array

    initializers: list[Any] = []
    nodes: list[Any] = []

    def weight(name: str, array: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        domain = "com.microsoft" if op in ("Attention", "SkipLayerNormalization", "BiasGelu") else None
        nodes.append(helper.make_node(op, inputs, [output], domain=domain, **attrs))
        return output

    def linear(name: str, shape: tuple[int, int]) -> np.ndarray:
        return get(name, shape).T  # torch's Linear stores (out, in); MatMul wants (in, out)

    # Embeddings: word + position + token type 0 (always 0 here: no text pairs), LayerNorm.
    positions = config["max_position_embeddings"]
    weight("word_embeddings", get("embeddings.word_embeddings.weight", (config["vocab_size"], hidden)))
    weight("position_embeddings", get("embeddings.position_embeddings.weight", (positions, hidden))
           + get("embeddings.token_type_embeddings.weight", (config["type_vocab_size"], hidden))[0])
    initializers += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                     (("zero", 0), ("one", 1), ("axis1", [1]), ("axis1_end", [2]))]
    node("Shape", ["input_ids"], "ids_shape")
    node("Slice", ["ids_shape", "axis1", "axis1_end"], "seq_len_1d")
    node("Squeeze", ["seq_len_1d"], "seq_len")
    node("Range", ["zero", "seq_len", "one"], "position_ids")
    node("Gather", ["word_embeddings", "input_ids"], "word_vectors")
    node("Gather", ["position_embeddings", "position_ids"], "position_vectors")
    node("Add", ["word_vectors", "position_vectors"], "embedded")
    x = node("LayerNormalization", ["embedded", weight("emb_ln_w", get("embeddings.LayerNorm.weight", (hidden,))),
                                    weight("emb_ln_b", get("embeddings.LayerNorm.bias", (hidden,)))],
             "layer0_in", axis=-1, epsilon=eps)

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        att = p + "attention.self."
        qkv = np.concatenate([linear(att + f"{part}.weight", (hidden, hidden)) for part in ("query", "key", "value")],
                             axis=1)
        qkv_bias = np.concatenate([get(att + f"{part}.bias", (hidden,)) for part in ("query", "key", "value")])
        # Attention scales the scores by 1/sqrt(head size) itself and masks padded keys.
        context = node("Attention", [x, weight(f"l{i}_qkv", qkv), weight(f"l{i}_qkv_b", qkv_bias), "attention_mask"],
                       f"l{i}_context", num_heads=heads)
        projected = node("MatMul", [context, weight(f"l{i}_out", linear(p + "attention.output.dense.weight",
                                                                         (hidden, hidden)))], f"l{i}_projected")
        x1 = node("SkipLayerNormalization", [
            projected, x,
            weight(f"l{i}_ln1_w", get(p + "attention.output.LayerNorm.weight", (hidden,))),
            weight(f"l{i}_ln1_b", get(p + "attention.output.LayerNorm.bias", (hidden,))),
            weight(f"l{i}_out_b", get(p + "attention.output.dense.bias", (hidden,))),
        ], f"l{i}_mid", epsilon=eps)
        up = node("MatMul", [x1, weight(f"l{i}_up", linear(p + "intermediate.dense.weight", (inner, hidden)))],
                  f"l{i}_up_out")
        act = node("BiasGelu", [up, weight(f"l{i}_up_b", get(p + "intermediate.dense.bias", (inner,)))],
                   f"l{i}_gelu")
        down = node("MatMul", [act, weight(f"l{i}_down", linear(p + "output.dense.weight", (hidden, inner)))],
                    f"l{i}_down_out")
        x = node("SkipLayerNormalization", [
            down, x1,
            weight(f"l{i}_ln2_w", get(p + "output.LayerNorm.weight", (hidden,))),
            weight(f"l{i}_ln2_b", get(p + "output.LayerNorm.bias", (hidden,))),
            weight(f"l{i}_down_b", get(p + "output.dense.bias", (hidden,))),
        ], "hidden" if i == config["num_hidden_layers"] - 1 else f"layer{i + 1}_in", epsilon=eps)

    graph = helper.make_graph(
        nodes, "bert_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT32, ["batch", "seq"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", hidden])],
        initializers,
    )
    model = helper.make_model(graph, producer_name="nanochat-lite",
                              opset_imports=[helper.make_opsetid("", _OPSET), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8  # what ONNX Runtime 1.16+ reads; newer onnx packages default higher
    return bytes(model.SerializeToString())

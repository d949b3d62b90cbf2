"""The embedding model folder's files: config.json and model.safetensors, read and checked.

Knows nothing of ONNX or tokenizers; every problem is an `EmbeddingError` naming the
file and the fix (pull the model again), never a KeyError from deep inside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model, [CLS]/[SEP] included
REQUIRED_FILES = ("model.safetensors", "tokenizer.json", "config.json")
_MAX_SAFETENSORS_HEADER = 100 << 20  # bytes; the format's own limit
_CONFIG_KEYS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                "vocab_size", "max_position_embeddings", "type_vocab_size")


class EmbeddingError(Exception):
    """The model folder cannot be used. The message names the file and the fix."""


def read_config(path: Path) -> dict[str, Any]:
    config: Any
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EmbeddingError(f"{path}: cannot read the model config ({e}). Pull the model again.") from e
    if not isinstance(config, dict):
        raise EmbeddingError(f"{path}: not a model config (a JSON object). Pull the model again.")
    missing = [key for key in _CONFIG_KEYS if not isinstance(config.get(key), int)]
    if missing:
        raise EmbeddingError(f"{path}: not a BERT config, no whole-number {', '.join(missing)}.")
    if config.get("model_type") != "bert" or config.get("hidden_act", "gelu") != "gelu":
        raise EmbeddingError(
            f"{path}: expected a BERT model with GELU activations (model_type 'bert'), "
            f"got model_type={config.get('model_type')!r}, hidden_act={config.get('hidden_act')!r}."
        )
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise EmbeddingError(f"{path}: only absolute position embeddings are supported.")
    if min(config[key] for key in _CONFIG_KEYS) < 1:
        raise EmbeddingError(f"{path}: sizes in the config must be positive.")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise EmbeddingError(f"{path}: hidden_size is not a multiple of num_attention_heads.")
    if config["max_position_embeddings"] < MAX_TOKENS:
        raise EmbeddingError(f"{path}: the model has {config['max_position_embeddings']} positions, "
                             f"fewer than {MAX_TOKENS}.")
    return config


def safetensors_header(path: Path) -> tuple[int, bytes]:
    """(file size, raw JSON header bytes): what identifies the weights without reading them."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            if not 2 <= header_size <= min(size - 8, _MAX_SAFETENSORS_HEADER):
                raise ValueError(f"header size {header_size} does not fit a {size}-byte file")
            return size, f.read(header_size)
    except (OSError, ValueError) as e:
        raise EmbeddingError(
            f"{path}: not a readable safetensors file ({e}). Pull the model again."
        ) from e


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The float32 tensors of a .safetensors file, as read-only views of one memory map.

    The format: 8 bytes little-endian header size N, N bytes of JSON
    {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
    then the raw little-endian data, offsets counted from its start.
    """
    size, raw = safetensors_header(path)
    try:
        header = json.loads(raw)
        data = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
    except (OSError, ValueError) as e:
        raise EmbeddingError(
            f"{path}: not a readable safetensors file ({e}). Pull the model again."
        ) from e
    start = 8 + len(raw)
    tensors = {}
    for name, info in header.items() if isinstance(header, dict) else ():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            count = int(np.prod(shape, dtype=np.int64))
        except (TypeError, KeyError, ValueError) as e:
            raise EmbeddingError(f"{path}: tensor {name!r} has a malformed header entry ({e!r}). "
                                 "Pull the model again.") from e
        if dtype != "F32":
            continue  # e.g. position_ids (I64), which BERT does not need from the file
        if not (0 <= begin <= end <= size - start and end - begin == 4 * count):
            raise EmbeddingError(
                f"{path}: tensor {name} has offsets {begin}..{end} that do not match shape "
                f"{shape} or the file size. The file is damaged; pull the model again."
            )
        tensors[name] = data[start + begin : start + end].view("<f4").reshape(shape)
    return tensors

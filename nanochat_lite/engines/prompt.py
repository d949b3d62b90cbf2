"""Prompts: a conversation (or a raw text, or token ids) turned into the token ids the
engine evaluates, fitted to the context.

What it holds: the model's chat template (rendered in our Jinja sandbox, template.py;
None for a base model without one: conversations are then refused with
`NoChatTemplate`, raw prompts still work) and a tokenizer — the project's BPE tokenizer once it has loaded, llama.cpp's own
(through the engine's internal API) until then. Message text is tokenized apart from
template text, so a user who types `<|im_start|>` never produces a control token.
Context fitting drops the oldest turns, keeps the system prompt, and raises a clear
`ContextOverflow` when the newest message cannot fit.

Safe to call from any thread: it reads the template and the tokenizer, nothing else.
Not here: slots, sampling, generation (local.py, scheduler.py), HTTP.

    builder.prepare([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=64))
    -> Prepared(tokens=[1, 9690, ...], dropped=0, max_new=64)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..generation import (
    MIN_ANSWER_ROOM,
    ContextOverflow,
    EngineError,
    NoChatTemplate,
    Prepared,
    SamplingParams,
    TemplateRefused,
)
from .template import ChatTemplate, Part, TemplateError


class PromptBuilder:
    def __init__(self, *, name: str, template: ChatTemplate | None, n_ctx: int, n_vocab: int | None, add_bos: bool,
                 bos_text: str, bos_id: list[int], fallback_tokenize: Callable[[str, bool], Sequence[int]],
                 detokenize: Callable[[Sequence[int]], str]) -> None:
        self.name = name
        self.template = template  # None: the model has none (conversations are refused)
        self.n_ctx = n_ctx  # tokens one conversation's context holds
        self.n_vocab = n_vocab
        self.add_bos = add_bos
        self.bos_text = bos_text
        self.bos_id = bos_id  # [] or [id]
        self._fallback_tokenize = fallback_tokenize  # (text, special) -> ids: llama.cpp's
        self._detokenize = detokenize
        # The project's BPE tokenizer (same ids as llama.cpp's, much faster), handed
        # over once it has loaded in the background (use_tokenizer).
        self.tokenizer: Any = None
        # Characters one token stands for at most (its longest piece, in bytes: never
        # fewer than its characters), known once the tokenizer has loaded; None until
        # then. The server bounds text by context × this before tokenizing it.
        self.token_chars: int | None = None

    @property
    def has_chat_template(self) -> bool:
        """Whether conversations can be turned into prompts (False: raw prompts only)."""
        return self.template is not None

    def use_tokenizer(self, tokenizer: Any) -> None:
        """Build prompts with the project's tokenizer from now on (one attribute swap:
        a prompt being built meanwhile finishes with either tokenizer, same ids)."""
        # ~40 ms for SmolLM2's 49,152 pieces, off the loop (the tokenizer loads when idle).
        self.token_chars = max((len(tokenizer.piece(i)) for i in range(tokenizer.vocab_size)), default=None)
        self.tokenizer = tokenizer

    # -- tokens -------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of text; `special=True` lets control-token text become control tokens."""
        if not text:
            return []
        tok = self.tokenizer
        if tok is not None:
            ids: list[int] = tok.encode(text, allowed_special="all" if special else ())
            return ids
        return list(self._fallback_tokenize(text, special))


    def detokenize(self, ids: Sequence[int]) -> str:
        return self._detokenize(ids)

    def _tokens_of(self, parts: list[Part]) -> list[int]:
        ids: list[int] = []
        for p in parts:
            ids.extend(self.tokenize(p.text, special=not p.is_content))
        if self.add_bos and not (parts and not parts[0].is_content and parts[0].text.startswith(self.bos_text)):
            ids[:0] = self.bos_id
        return ids

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The prompt for a conversation. When the last message is the assistant's, its
        text is continued (prefill): no generation prompt, and nothing after its text."""
        if self.template is None:
            raise NoChatTemplate(
                f"the model {self.name} has no chat template (it is a base model: it continues text), so it "
                "cannot take a conversation. Send a raw prompt to /v1/completions instead, or start the server "
                "with --chat-template FILE|NAME: a Jinja chat template file, or a built-in one (chatml).")
        prefill = bool(messages) and messages[-1]["role"] == "assistant"
        try:
            parts = self.template.render_parts(messages, add_generation_prompt=not prefill, continue_final=prefill)
        except TemplateError as e:  # the conversation's fault (or the model's): a 4xx, never a 500
            raise TemplateRefused(str(e)) from None
        return self._tokens_of(parts)


    def shared_prefix(self) -> list[int]:
        """Tokens every default conversation starts with: the template's text before the
        first message content (e.g. SmolLM2's default system prompt); none without a template."""
        if self.template is None:
            return []
        prefix: list[Part] = []
        for p in self.template.render_parts([{"role": "user", "content": "x"}]):
            if p.is_content:
                break
            prefix.append(p)
        return self._tokens_of(prefix) if prefix else []

    # -- context fitting ----------------------------------------------------------
    def prepare(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> Prepared:
        """Tokenize the conversation, dropping the oldest turns until it fits.

        The system message (if first) and the last message are always kept. Raises
        ContextOverflow when even those do not fit with room for an answer. Safe to
        call from any thread.
        """
        if not messages:
            raise EngineError("a conversation needs at least one message")
        room = min(params.max_tokens, MIN_ANSWER_ROOM)
        limit = self.n_ctx - room
        head = [messages[0]] if messages[0]["role"] == "system" else []
        body = list(messages[len(head):])

        def attempt(drop: int) -> list[int]:
            return self.prompt_tokens(head + body[drop:])

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
                    "Send a shorter message, or start the server with a larger --ctx-size.",
                    n_prompt_tokens=need, n_ctx=self.n_ctx,
                )
            dropped, tokens = best
            # Do not open the kept history with an assistant turn.
            while dropped < len(body) - 1 and body[dropped]["role"] == "assistant":
                dropped += 1
                tokens = attempt(dropped)
        max_new = min(params.max_tokens, self.n_ctx - len(tokens))
        return Prepared(tokens, dropped, max_new)

    def prepare_text(self, text: str, params: SamplingParams) -> Prepared:
        """A raw prompt (legacy completions), tokenized as llama-server's `/completion`
        does: control-token text becomes control tokens, BOS added if the model wants it.
        The whole prompt is the caller's own text, so there is no one to inject into."""
        ids = self.tokenize(text, special=True)
        if self.add_bos:
            ids[:0] = self.bos_id
        return self.prepare_tokens(ids, params)

    def prepare_tokens(self, tokens: Sequence[int], params: SamplingParams) -> Prepared:
        """A prompt given as token ids; raises ContextOverflow when it leaves no room for
        an answer, EngineError for an id outside the vocabulary."""
        tokens = list(tokens)
        if not tokens:
            raise EngineError("the prompt is empty")
        if self.n_vocab is not None:
            bad = next((t for t in tokens if not 0 <= t < self.n_vocab), None)
            if bad is not None:
                raise EngineError(f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})")
        room = min(params.max_tokens, MIN_ANSWER_ROOM)
        if len(tokens) > self.n_ctx - room:
            raise ContextOverflow(
                f"the prompt has {len(tokens)} tokens, but the context window holds {self.n_ctx} tokens and "
                f"{room} must stay free for the answer. Send a shorter prompt, or start the server with a "
                "larger --ctx-size.", n_prompt_tokens=len(tokens), n_ctx=self.n_ctx)
        return Prepared(tokens, 0, min(params.max_tokens, self.n_ctx - len(tokens)))

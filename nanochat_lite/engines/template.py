"""Chat templates: the Jinja template stored in a GGUF file, rendered in a sandbox.

A GGUF file is untrusted input: its `tokenizer.chat_template` renders in Jinja's
ImmutableSandboxedEnvironment, so a template that reaches for `__globals__`,
`__subclasses__` or `os` fails instead of running code (CVE-2024-34359 was the
unsandboxed variant of this in llama-cpp-python).

Rendering also keeps message text apart from template text: `render_parts` returns
the prompt as (text, is_content) pieces, so the engine can tokenize what the user
wrote without ever turning `<|im_start|>` in it into a control token. That holds
whatever the template does to the text (`|trim`, `|upper`, copying it twice): when
the content cannot be cut out of the render, every control-token text in it is
swapped for a private-use character before rendering and swapped back afterwards as
content (`_render_protected`).
"""

from __future__ import annotations

import datetime
import re
import secrets
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

# ChatML: what SmolLM2, Qwen and many small models use. A model whose GGUF has no
# template gets it only when asked for (--chat-template chatml): a base model does
# not know these markers, and chatting with it through them is the user's choice.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Templates --chat-template may name instead of giving a file.
BUILTIN = {"chatml": CHATML}
MAX_TEMPLATE_BYTES = 256 * 1024  # a chat template file (real ones are 1-20 KB)


# Private-use planes 15 and 16: the stand-ins for control-token text in messages
# while a template that changes text renders them (`|trim`, `|upper` leave them be).
_PUA_FIRST, _PUA_LAST = 0xF0000, 0x10FFFD


class TemplateError(ValueError):
    """The chat template could not be compiled or rendered (message says why)."""


@dataclass(frozen=True)
class Part:
    text: str
    is_content: bool  # True: came from a message (tokenize as plain text)


def template_source(spec: str) -> str:
    """The Jinja source --chat-template names: a built-in name (`chatml`) or a file.
    Raises TemplateError saying what is wrong with the file, or what to pass instead.
    (Whether it compiles is ChatTemplate's check.)"""
    if spec.lower() in BUILTIN:
        return BUILTIN[spec.lower()]
    names = ", ".join(sorted(BUILTIN))
    try:
        with open(spec, "rb") as f:
            data = f.read(MAX_TEMPLATE_BYTES + 1)
    except FileNotFoundError:
        raise TemplateError(f"--chat-template {spec!r} is neither a built-in template ({names}) nor an existing "
                            "file. Pass the path of a Jinja chat template file, or a built-in name.") from None
    except OSError as e:
        raise TemplateError(f"--chat-template {spec}: cannot be read ({e.strerror}).") from None
    if len(data) > MAX_TEMPLATE_BYTES:
        raise TemplateError(f"--chat-template {spec}: over {MAX_TEMPLATE_BYTES // 1024} KiB; a chat template is "
                            "a short Jinja text (a few KB). Is this the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TemplateError(f"--chat-template {spec}: not UTF-8 text (byte {e.start}); a chat template is a "
                            "Jinja text file.") from None
    if not text.strip():
        raise TemplateError(f"--chat-template {spec}: the file is empty.")
    return text


def _raise(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


def load_jinja() -> None:
    """Import what `ChatTemplate` needs (~20-40 ms), ahead of the first template: serve's
    start-up does it on its main thread while the model loads on another."""
    import jinja2.sandbox  # noqa: F401


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "",
                 control_tokens: Callable[[], Collection[str] | None] | None = None) -> None:
        """`control_tokens` gives the texts of the vocabulary's control tokens (called
        once, only for a template that changes message text; None: unknown)."""
        # Imported here: jinja2 costs ~40 ms of start-up and only chat needs it.
        from jinja2 import TemplateError as JinjaError
        from jinja2.exceptions import SecurityError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class _Sandbox(ImmutableSandboxedEnvironment):
            # Jinja's sandbox quietly renders an unsafe attribute (`__globals__`) as
            # undefined; a template that reaches for one is hostile, so fail loudly.
            def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
                raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} is not allowed")

        self.source = source or CHATML
        env = _Sandbox(trim_blocks=True, lstrip_blocks=True, autoescape=False)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(self.source)
        except JinjaError as e:
            raise TemplateError(f"the chat template does not compile: {e}") from None
        self._vars = {"bos_token": bos_token, "eos_token": eos_token}
        self._control_tokens = control_tokens
        self._control_pattern: re.Pattern[str] | None = None

    def render(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=list(messages), add_generation_prompt=add_generation_prompt, **self._vars
            )
        except TemplateError:
            raise
        except Exception as e:  # SecurityError, UndefinedError, TypeError from the template
            raise TemplateError(f"the chat template failed to render: {type(e).__name__}: {e}") from None

    def render_parts(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True,
                     continue_final: bool = False) -> list[Part]:
        """Render with each message's content marked, so callers can tokenize it apart.

        Each content is replaced by a random marker, the template is rendered, and the
        result is split at the markers. A template that changes content (trims it, say)
        changes the marker instead, which we detect; the real render then keeps the
        control-token text of messages as content (`_render_protected`).

        `continue_final=True` (prefill) ends the prompt right after the last message's
        content, leaving its turn open for the model to continue: the template's
        end-of-turn text after it is cut off. Raises TemplateError when the template does
        not copy that content verbatim (we could not tell where it ends).
        """
        nonce = secrets.token_hex(8)
        marked: list[dict[str, Any]] = []
        for i, m in enumerate(messages):
            marked.append({**m, "content": f"\x00{nonce}:{i}\x00"})
        rendered = self.render(marked, add_generation_prompt=add_generation_prompt)
        parts: list[Part] = []
        rest = rendered
        for i, m in enumerate(messages):
            marker = f"\x00{nonce}:{i}\x00"
            before, sep, after = rest.partition(marker)
            if not sep or (continue_final and i == len(messages) - 1 and marker in after):
                if continue_final:
                    raise TemplateError("the chat template does not copy the last message verbatim, so its "
                                        "text cannot be continued; end the conversation with a user message")
                # The template did not copy this content verbatim; render for real.
                return self._render_protected(messages, rendered, add_generation_prompt=add_generation_prompt)
            if before:
                parts.append(Part(before, False))
            if m["content"]:
                parts.append(Part(m["content"], True))
            rest = after
        if continue_final:
            return parts  # the final turn stays open: drop the template's text after it
        if nonce in rest:
            return self._render_protected(messages, rendered, add_generation_prompt=add_generation_prompt)
        if rest:
            parts.append(Part(rest, False))
        return parts

    def _render_protected(self, messages: Sequence[dict[str, str]], skeleton: str, *,
                          add_generation_prompt: bool) -> list[Part]:
        """Render the real messages, with control-token text in them kept as content.

        Each control-token text in a message is replaced by a private-use character
        before rendering, and the character by the text (as content) after it:
        `[{"content": " <|im_start|>system"}]` under `{{ m.content | trim }}` ->
        [Part("<|im_start|>", True), Part("system", False)] (and the template's text). The rest of the message
        (trimmed, upper-cased... as the template wants) is then template text with no
        control-token text left in it, unless the template assembled one out of
        message text (`|replace`, joining two halves): that is refused, as is a
        vocabulary whose control tokens are unknown. `skeleton` is the render with
        every message replaced by a marker: the control tokens the template writes.
        """
        pattern = self._control_texts()
        contents = [m["content"] for m in messages if isinstance(m.get("content"), str)]
        taken = {c for text in contents for c in text if ord(c) >= _PUA_FIRST}
        stand_in: dict[str, str] = {}  # control-token text -> its private-use character
        free = (chr(cp) for cp in range(_PUA_FIRST, _PUA_LAST + 1) if chr(cp) not in taken)

        def swap(match: re.Match[str]) -> str:
            text = match.group()
            if text not in stand_in:
                stand_in[text] = next(free)  # at most one per control token of the vocabulary
            return stand_in[text]

        protected = [{**m, "content": pattern.sub(swap, m["content"])} if isinstance(m.get("content"), str) else m
                     for m in messages]
        rendered = self.render(protected, add_generation_prompt=add_generation_prompt)
        back = {c: text for text, c in stand_in.items()}
        parts: list[Part] = []
        pos = 0
        if back:
            for hit in re.finditer("[" + "".join(back) + "]", rendered):
                if hit.start() > pos:
                    parts.append(Part(rendered[pos:hit.start()], False))
                parts.append(Part(back[hit.group()], True))
                pos = hit.end()
        if pos < len(rendered):
            parts.append(Part(rendered[pos:], False))
        # The real render may have fewer control tokens than the skeleton (a template
        # that skips empty turns), never more.
        own = Counter(pattern.findall(skeleton))
        found = Counter(t for p in parts if not p.is_content for t in pattern.findall(p.text))
        if found - own:
            raise TemplateError("the model's chat template turns message text into control tokens "
                                f"({', '.join(sorted(found - own))}); rephrase the message")
        return parts

    def _control_texts(self) -> re.Pattern[str]:
        """A pattern matching any control-token text, longest first (as tokenizers match)."""
        if self._control_pattern is None:
            texts = self._control_tokens() if self._control_tokens is not None else None
            if texts is None:
                raise TemplateError("the model's chat template changes message text, and this vocabulary's "
                                    "control tokens are unknown, so message text cannot be kept apart from them")
            ordered = sorted({t for t in texts if t}, key=len, reverse=True)
            # A vocabulary without control tokens: a pattern that never matches.
            self._control_pattern = re.compile("|".join(map(re.escape, ordered)) or r"(?!)")
        return self._control_pattern

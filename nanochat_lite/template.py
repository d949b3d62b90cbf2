"""Chat templates: the Jinja template stored in a GGUF file, rendered in a sandbox.

A GGUF file is untrusted input: its `tokenizer.chat_template` renders in Jinja's
ImmutableSandboxedEnvironment, so a template that reaches for `__globals__`,
`__subclasses__` or `os` fails instead of running code (CVE-2024-34359 was the
unsandboxed variant of this in llama-cpp-python).

Rendering also keeps message text apart from template text: `render_parts` returns
the prompt as (text, is_content) pieces, so the engine can tokenize what the user
wrote without ever turning `<|im_start|>` in it into a control token.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# ChatML: what SmolLM2, Qwen and many small models use; the fallback when a GGUF
# has no template.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(ValueError):
    """The chat template could not be compiled or rendered (message says why)."""


@dataclass(frozen=True)
class Part:
    text: str
    is_content: bool  # True: came from a message (tokenize as plain text)


def _raise(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        # Imported here: jinja2 costs ~40 ms of start-up and only chat needs it.
        from jinja2 import TemplateError as JinjaError
        from jinja2.exceptions import SecurityError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class _Sandbox(ImmutableSandboxedEnvironment):
            # Jinja's sandbox quietly renders an unsafe attribute (`__globals__`) as
            # undefined; a template that reaches for one is hostile, so fail loudly.
            def unsafe_undefined(self, obj, attribute):  # type: ignore[override]
                raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} is not allowed")

        self.source = source or CHATML
        self.is_fallback = source is None
        env = _Sandbox(trim_blocks=True, lstrip_blocks=True, autoescape=False)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        self._jinja_error = JinjaError
        try:
            self._template = env.from_string(self.source)
        except JinjaError as e:
            raise TemplateError(f"the model's chat template does not compile: {e}") from None
        self._vars = {"bos_token": bos_token, "eos_token": eos_token}

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
        changes the marker instead, which we detect and then fall back to one piece.

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
                return [Part(self.render(messages, add_generation_prompt=add_generation_prompt), False)]
            if before:
                parts.append(Part(before, False))
            if m["content"]:
                parts.append(Part(m["content"], True))
            rest = after
        if continue_final:
            return parts  # the final turn stays open: drop the template's text after it
        if nonce in rest:
            return [Part(self.render(messages, add_generation_prompt=add_generation_prompt), False)]
        if rest:
            parts.append(Part(rest, False))
        return parts

"""The prompt layer without a chat template (a base model): conversations are refused
with the typed `NoChatTemplate` (which the server answers with 400 no_chat_template),
raw text and token prompts still work, and there is no shared system prefix."""

from __future__ import annotations

import pytest

from nanochat_lite.engines.prompt import PromptBuilder
from nanochat_lite.engines.template import ChatTemplate
from nanochat_lite.generation import EngineError, NoChatTemplate, SamplingParams


def chars(text: str, special: bool) -> list[int]:
    return [ord(c) for c in text]


def builder(template: ChatTemplate | None) -> PromptBuilder:
    return PromptBuilder(name="base-model", template=template, n_ctx=256, n_vocab=None, add_bos=True,
                         bos_text="<s>", bos_id=[1], fallback_tokenize=chars,
                         detokenize=lambda ids: "".join(map(chr, ids)))


def test_conversations_are_refused_with_a_typed_error():
    b = builder(None)
    assert b.has_chat_template is False
    with pytest.raises(NoChatTemplate) as e:
        b.prepare([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=8))
    assert isinstance(e.value, EngineError) and e.value.code == "no_chat_template"
    assert str(e.value).startswith("the model base-model has no chat template")
    assert "--chat-template FILE|NAME" in str(e.value) and "/v1/completions" in str(e.value)
    with pytest.raises(NoChatTemplate):  # prefill too: it is a conversation
        b.prompt_tokens([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}])


def test_raw_prompts_still_work():
    b = builder(None)
    prep = b.prepare_text("Once", SamplingParams(max_tokens=8))
    assert prep.tokens == [1, ord("O"), ord("n"), ord("c"), ord("e")] and prep.max_new == 8
    assert b.prepare_tokens([5, 6], SamplingParams(max_tokens=8)).tokens == [5, 6]
    assert b.shared_prefix() == []


def test_a_given_template_makes_conversations_work():
    b = builder(ChatTemplate(None))  # ChatTemplate(None) is ChatML
    assert b.has_chat_template is True
    text = "".join(map(chr, b.prepare([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=8)).tokens[1:]))
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"

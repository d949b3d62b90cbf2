"""Chat templates render sandboxed and keep message text apart from template text."""

from __future__ import annotations

import pytest

from nanochat_lite.template import CHATML, ChatTemplate, TemplateError

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|im_end|> there"}]


def test_chatml_render():
    out = ChatTemplate(None).render(MSGS)
    assert out == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi <|im_end|> there<|im_end|>\n"
                   "<|im_start|>assistant\n")


def test_parts_mark_content_exactly():
    parts = ChatTemplate(CHATML).render_parts(MSGS)
    assert "".join(p.text for p in parts) == ChatTemplate(CHATML).render(MSGS)
    assert [p.text for p in parts if p.is_content] == ["Be brief.", "Hi <|im_end|> there"]
    assert all("Hi" not in p.text for p in parts if not p.is_content)


def test_template_that_alters_content_falls_back_to_one_piece():
    t = ChatTemplate("{% for m in messages %}[{{ m['content'] | upper }}]{% endfor %}")
    parts = t.render_parts([{"role": "user", "content": "abc"}])
    assert [(p.text, p.is_content) for p in parts] == [("[ABC]", False)]


@pytest.mark.parametrize("evil", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ self.__init__.__globals__.__builtins__ }}",
    "{{ raise_exception.__globals__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ messages.append({'role': 'x'}) }}",
])
def test_sandbox_blocks_escapes(evil):
    t = ChatTemplate(evil)
    with pytest.raises(TemplateError):
        t.render(MSGS)


def test_raise_exception_becomes_template_error():
    t = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError, match="roles must alternate"):
        t.render(MSGS)


def test_broken_template_is_a_clear_error():
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% for %}")

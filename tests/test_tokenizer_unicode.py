"""Our character classes are llama.cpp's, for every code point.

llama.cpp's library exports ``unicode_cpt_flags_from_cpt`` (C++ linkage; its result
is a 16-bit flag word returned in a register), so we ask the installed libllama itself.
"""

from __future__ import annotations

import ctypes
import os

import pytest

from nanochat_lite.tokenizer import _unicode as U

_NUMBER, _LETTER, _WHITESPACE = 0x0002, 0x0004, 0x0100  # unicode.h, struct unicode_cpt_flags


def _llama_flags():
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libllama.so"))
    try:
        fn = lib._Z26unicode_cpt_flags_from_cptj  # unicode_cpt_flags_from_cpt(uint32_t)
    except AttributeError:
        pytest.skip("this libllama does not export unicode_cpt_flags_from_cpt")
    fn.restype = ctypes.c_uint16
    fn.argtypes = [ctypes.c_uint32]
    return fn


def test_classes_equal_llama_cpp_for_every_code_point() -> None:
    flags = _llama_flags()
    wrong = []
    for cp in range(0x110000):
        f = flags(cp)
        ours = (cp in U.LETTERS, cp in U.NUMBERS, cp in U.SPACES)
        theirs = (bool(f & _LETTER), bool(f & _NUMBER), bool(f & _WHITESPACE))
        if ours != theirs:
            wrong.append(hex(cp))
    assert not wrong, f"{len(wrong)} code points classified differently, e.g. {wrong[:10]}"


def test_regex_class_syntax() -> None:
    assert U.regex_class(((0x41, 0x5A), (0xAA, 0xAA), (0x09, 0x0D))) == "A-Zª\\x09-\\x0D"
    regex = pytest.importorskip("regex")
    letters = regex.compile(f"[{U.regex_class(U.LETTER)}]")
    assert letters.fullmatch("é") and letters.fullmatch("ж") and not letters.fullmatch("1")

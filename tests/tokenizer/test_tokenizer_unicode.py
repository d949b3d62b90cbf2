"""Our character classes are llama.cpp's, for every code point.

llama.cpp exports ``unicode_cpt_flags_from_cpt`` (C++ linkage; its result is a 16-bit
flag word returned in a register). xllamacpp links libllama into its extension
module and exports it there, so we ask that library itself through ctypes.
"""

from __future__ import annotations

import ctypes

import pytest

from nanochat_lite.tokenizer import _unicode as U

_NUMBER, _LETTER, _WHITESPACE = 0x0002, 0x0004, 0x0100  # unicode.h, struct unicode_cpt_flags
_SYMBOL = "_Z26unicode_cpt_flags_from_cptj"  # unicode_cpt_flags_from_cpt(uint32_t)


def _llama_flags():
    import xllamacpp.xllamacpp as ext  # the extension module; libllama is linked into it

    lib = ctypes.CDLL(ext.__file__)  # already loaded by the import: same handle, no second copy
    try:
        fn = getattr(lib, _SYMBOL)
    except AttributeError:
        pytest.fail(f"{ext.__file__} does not export {_SYMBOL}; check `nm -D --defined-only` "
                    "for the new name of llama.cpp's unicode_cpt_flags_from_cpt")
    fn.restype = ctypes.c_uint16
    fn.argtypes = [ctypes.c_uint32]
    # Known answers first: if the flag layout moved, say so instead of listing 1.1M code points.
    got = {c: fn(ord(c)) & (_NUMBER | _LETTER | _WHITESPACE) for c in "A1 "}
    assert got == {"A": _LETTER, "1": _NUMBER, " ": _WHITESPACE}, f"unexpected flag layout: {got}"
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
    import regex  # a dependency (pyproject.toml): never skipped
    letters = regex.compile(f"[{U.regex_class(U.LETTER)}]")
    assert letters.fullmatch("é") and letters.fullmatch("ж") and not letters.fullmatch("1")

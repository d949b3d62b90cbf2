"""A deterministic, many-script text corpus for tokenizer tests, built from small seeds.

``generate(n_bytes, seed)`` returns the same text for the same arguments: lines of
prose in a dozen scripts, source code, emoji and ZWJ sequences, numbers of every
length and kind, runs of white space, punctuation clusters, special-token look-alikes
and odd code points (unassigned, private use, new in Unicode 16, control bytes), mixed
by a seeded random generator. The seeds below are written for this file.

It lives in the package (not only in tests/) because ``nanochat-lite bench`` measures
the tokenizer on the same text the parity tests check.
"""

from __future__ import annotations

import random

PROSE = {
    "en": (
        "It's a truth universally acknowledged that we'll never agree on tabs. "
        "They'd said the build was green; I'm not sure it was. You're right, we've "
        "tried that before -- twice. SHE'S LEAVING AT 5 O'CLOCK! Don't, won't, can't; "
        "the dogs' bowls and the cat's toy. \"Quoted,\" he said, (parenthetically) [sic]."
    ),
    "fr": (
        "Le cœur a ses raisons que la raison ne connaît point. À l'été, où êtes-vous ? "
        "Ça déménage ! Noël, naïf, Zoë et l'œuvre de Molière : « très bien », dit-il."
    ),
    "de": (
        "Größenwahn und Fußgängerübergänge: Die Straße ist über 12 km lang. "
        "Äpfel, Öl, Übermut — „Anführungszeichen“ und ß in GROSSBUCHSTABEN: ẞ."
    ),
    "vi": (
        "Tiếng Việt có rất nhiều dấu: người, đường, thuở, khuỷu tay, nghiêng ngả. "
        "Hà Nội mùa thu, cây cơm nguội vàng, cây bàng lá đỏ."
    ),
    "pl_cs_tr_is": (
        "Zażółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy. "
        "Iğdır'da şoför ılık çay içti. Þórður og Ævar borðuðu skyr á Íslandi."
    ),
    "ru": (
        "Съешь же ещё этих мягких французских булок, да выпей чаю. "
        "В 2024 году цены выросли на 7,5 %. «Ёлки-палки», — сказал он. Україна, їжак, ґанок."
    ),
    "el": (
        "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Η Αθήνα είναι η πρωτεύουσα της Ελλάδας· "
        "ΤΙ ΚΑΝΕΙΣ; Ϊ, ΰ, ΐ και άλλα τονισμένα γράμματα."
    ),
    "ar": (
        "مرحبًا بالعالم! اللُّغَةُ العَرَبِيَّةُ جميلة. عدد السكان ١٢٣٤٥٦٧ نسمة في عام ٢٠٢٤، "
        "وقال: «السَّلامُ عَلَيْكُمْ»؟ ۱۲۳ أرقام فارسية."
    ),
    "he": (
        "שָׁלוֹם עוֹלָם! עברית נכתבת מימין לשמאל. בשנת 2024 היו 9,500,000 תושבים. "
        "״מרכאות״ ו־מקף עברי."
    ),
    "hi": (
        "नमस्ते दुनिया! हिन्दी देवनागरी लिपि में लिखी जाती है। २०२४ में ५० लाख लोग आए। "
        "क्षत्रिय, ज्ञान, श्रृंगार, ऑफ़िस।"
    ),
    "zh": (
        "你好，世界！我们今天学习中文分词。北京是中国的首都，人口约2100万。"
        "“引号”和《书名号》、顿号……还有全角数字１２３。"
    ),
    "ja": (
        "こんにちは、世界。カタカナとひらがな、そして漢字を混ぜて書きます。"
        "東京都は日本の首都です。ｶﾀｶﾅ（半角）もあります。"
    ),
    "ko": "안녕하세요, 세계! 한국어는 띄어쓰기를 합니다. 서울의 인구는 약 950만 명입니다.",
    "th": (
        "สวัสดีชาวโลก ภาษาไทยไม่เว้นวรรคระหว่างคำ กรุงเทพมหานครมีประชากร ๑๐ ล้านคน "
        "น้ำใจไมตรี"
    ),
}

CODE = r'''def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    a, b = 0, 1
    out = []
    for _ in range(n):
        out.append(a)
        a, b = b, a + b
    return out
	if (x->next != NULL && *p++ == '\0') { return -1; }
#include <stdio.h>
int main(int argc, char **argv) { printf("%d\n", argc); return 0; }
const add = (a, b) => a + b; // arrow fn
let v: Vec<u32> = (0..10).map(|x| x * x).collect::<Vec<_>>();
fn main() -> Result<(), Box<dyn std::error::Error>> { Ok(()) }
SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;
<div class="chat"><span id='msg-42'>Hello &amp; welcome</span></div>
{"model": "smollm2", "temperature": 0.7, "max_tokens": 256, "stop": ["<|im_end|>"]}
for i in $(seq 1 10); do echo "$i" | sed -e 's/^/  /'; done 2>&1 >/dev/null
x = [[1, 2], [3, 4]]; y = {k: v**2 for k, v in zip("abc", range(3))}
    return self._cache.get(key) or self._load(key)  # type: ignore[no-any-return]
		case '\t': ws++; break;
a<<=2; b>>>=1; c ??= d; e ||= f; g &&= h; i !== j; k **= 3;
'''

EMOJI = [
    "😀", "🎉", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵🇺🇸", "1️⃣", "#️⃣", "❤️", "☺︎",
    "🏴󠁧󠁢󠁥󠁮󠁧󠁿", "🧑🏿‍🤝‍🧑🏻", "🫠", "🐈‍⬛", "👁️‍🗨️", "🤷‍♀️",
]

PUNCT = [
    "!!!", "?!", "...", "…", "—", "–", "«»", "“”", "‘’", "->", "=>", "::", "&&", "||", "/*", "*/",
    "<=", "!==", "@#$%^&*", "()", "[]{}", "¿¡", "、。", "「」", "（）", "§¶", "©®™", "°±", "€£¥₹",
    "'s", "'S", "’s", "''", "'''", "'re", "'ll", "'ve", "'d", "'m", "'t", "'x",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<|im_start", "|>",
]

SPACES = [" ", "  ", "   ", "    ", "\t", "\t\t", " \t", "\r\n", "\r", "\n", "\n\n", " \n ",
          "\u00a0", "\u2003", "\u3000", "\u2028", "\u0085", "\x0b", "\x0c", "\u200b", "\u202f"]

# Code points whose class differs between Unicode versions or that are unusual:
# U+1C89/U+1C8A and Garay (U+10D40..) are new in Unicode 16 (llama.cpp's tables are
# older), U+0378 is unassigned, U+E000 and planes 15/16 are private use, U+E0041 is a
# tag character, U+FFFD the replacement character, plus C0 controls and NUL.
ODD = ["\u1c89", "\u1c8a", "\U00010d40", "\U00010d49", "\U00010d4a", "\u0378", "\ue000",
       "\U000f0000", "\U0010fffd", "\U000e0041", "\ufffd", "\x00", "\x04", "\x06", "\x1b", "\x7f",
       "\u0301", "e\u0301", "\u200d", "\ufe0f", "\U0001f3fb", "\u2060", "\U00031350", "\u0bf0"]

DIGITS = ["0123456789", "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९", "๐๑๒๓๔๕๖๗๘๙", "０１２３４５６７８９",
          "²³¹", "½¼¾", "ⅠⅡⅢⅣⅫ", "①②③", "𝟎𝟏𝟐"]

# A pool of characters from many classes for "noise" lines.
_POOL = "".join(PROSE.values()) + CODE + "".join(EMOJI) + "".join(PUNCT) + "".join(ODD) + "".join(DIGITS)


def _number(rng: random.Random) -> str:
    kind = rng.randrange(8)
    n = rng.randint(1, 40)
    digits = "".join(rng.choice("0123456789") for _ in range(n))
    if kind == 0:
        return digits
    if kind == 1:
        return f"{int(digits):,}"
    if kind == 2:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 9)}f}"
    if kind == 3:
        return f"{rng.uniform(-1, 1):e}"
    if kind == 4:
        return hex(rng.getrandbits(rng.randint(1, 64)))
    if kind == 5:
        alphabet = rng.choice(DIGITS)
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
    if kind == 6:
        return f"v{rng.randint(0, 99)}.{rng.randint(0, 99)}.{rng.randint(0, 999)}"
    return f"{rng.randint(1, 31):02d}/{rng.randint(1, 12):02d}/{rng.randint(1900, 2100)} {rng.randint(0, 23)}:{rng.randint(0, 59):02d}"


def _space(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return rng.choice(" \t") * rng.randint(2, 24)
    return rng.choice(SPACES) if rng.random() < 0.3 else " "


def _words(rng: random.Random, text: str, k: int) -> list[str]:
    words = text.split()
    start = rng.randrange(len(words))
    return [words[(start + i) % len(words)] for i in range(k)]


def _prose_line(rng: random.Random) -> str:
    lang = rng.choice(list(PROSE))
    parts = []
    for w in _words(rng, PROSE[lang], rng.randint(3, 30)):
        r = rng.random()
        if r < 0.05:
            w = _number(rng)
        elif r < 0.08:
            w = w + rng.choice(PUNCT)
        elif r < 0.10:
            w = w + rng.choice(EMOJI)
        elif r < 0.12:
            w = w.upper() if rng.random() < 0.5 else w.capitalize()
        parts.append(w)
        parts.append(_space(rng) if rng.random() < 0.15 else " ")
    return "".join(parts).rstrip(" ")


def _code_line(rng: random.Random) -> str:
    line = rng.choice(CODE.splitlines())
    indent = rng.choice(["", "", "    ", "        ", "\t", "\t\t", "  "])
    if rng.random() < 0.2:
        line = line.replace("1", _number(rng), 1)
    return indent + line.lstrip() + (rng.choice(["", " ", "  ", "\t", " \\"]) if rng.random() < 0.2 else "")


def _noise_line(rng: random.Random) -> str:
    return "".join(rng.choice(_POOL) for _ in range(rng.randint(1, 80)))


def _numbers_line(rng: random.Random) -> str:
    return _space(rng).join(_number(rng) for _ in range(rng.randint(1, 12)))


def _mixed_line(rng: random.Random) -> str:
    makers = [_number, _space, lambda r: r.choice(EMOJI), lambda r: r.choice(PUNCT), lambda r: r.choice(ODD),
              lambda r: _words(r, r.choice(list(PROSE.values())), 1)[0]]
    return "".join(rng.choice(makers)(rng) for _ in range(rng.randint(2, 40)))


def _emoji_line(rng: random.Random) -> str:
    return "".join(rng.choice(EMOJI) + (_space(rng) if rng.random() < 0.5 else "") for _ in range(rng.randint(1, 20)))


_MAKERS = [(_prose_line, 30), (_code_line, 20), (_mixed_line, 15), (_numbers_line, 10), (_noise_line, 10),
           (_emoji_line, 5), (lambda r: _space(r) * r.randint(1, 4), 5), (lambda r: "", 5)]


def lines(n_bytes: int, seed: int = 0) -> list[str]:
    """Lines (each ending in ``"\\n"``) adding up to at least ``n_bytes`` of UTF-8."""
    rng = random.Random(seed)
    makers = [m for m, _ in _MAKERS]
    weights = [w for _, w in _MAKERS]
    out: list[str] = []
    total = 0
    while total < n_bytes:
        line = rng.choices(makers, weights)[0](rng).replace("\n", " ") + "\n"
        out.append(line)
        total += len(line.encode("utf-8"))
    return out


def generate(n_bytes: int, seed: int = 0) -> str:
    """The corpus as one text: ``"".join(lines(n_bytes, seed))``."""
    return "".join(lines(n_bytes, seed))

"""The inputs the embedding reference vectors are made from (tests/data/embedding_refs.npz).

`reference_inputs()` is deterministic: scripts/make_embedding_refs.py (run under
sentence-transformers) and tests/test_embeddings.py (run under our engine) build the same
list, and the test checks it against the copy stored in the .npz so that an edit here
without regenerating the references fails loudly rather than comparing the wrong rows.

The list covers: short and long prose, texts just below, at and past the 256-piece limit,
words longer than WordPiece's 100-character cap, unicode in several scripts, combining
marks, emoji (with ZWJ sequences and flags), code, numbers, control characters, the empty
string and whitespace-only strings.

Not covered (sentence-transformers cannot encode them): lone surrogates.
"""

from __future__ import annotations

import random

# One-piece words for the length-boundary cases: each is a single WordPiece in the
# uncased BERT vocabulary, so k of them make exactly k + 2 pieces with [CLS] and [SEP].
_ONE_PIECE_WORDS = (
    "the cat sat on a mat and the dog ran to the house with a red ball "
    "while my friend read one good book about old ships in the blue sea"
).split()

_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "How do I reset my password?",
    "I forgot my login credentials and cannot sign in.",
    "What is the capital of France?",
    "Paris is the capital and largest city of France.",
    "The stock market fell sharply on Monday.",
    "Photosynthesis converts light energy into chemical energy.",
    "The quick brown fox jumps over the lazy dog.",
    "It's raining cats and dogs!",
    "Can you recommend a good Italian restaurant nearby?",
    "The meeting has been moved to 3 pm on Thursday.",
    "Please don't forget to water the plants.",
    "The Eiffel Tower was completed in 1889.",
    "Machine learning models need lots of data.",
    "She sells seashells by the seashore.",
    "To be, or not to be, that is the question.",
    "All happy families are alike; each unhappy family is unhappy in its own way.",
    "The mitochondria is the powerhouse of the cell.",
    "Error: connection refused (ECONNREFUSED) at 127.0.0.1:8080",
    "I love this product, it works perfectly!",
    "This is the worst purchase I have ever made.",
    "Quantum entanglement links the states of two particles.",
    "Bake at 180°C for 25–30 minutes until golden.",
    "The train leaves at 06:45 from platform 9¾.",
    "Ceci n'est pas une pipe.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El veloz murciélago hindú comía feliz cardillo y kiwi.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "我能吞下玻璃而不伤身体。",
    "私はガラスを食べられます。それは私を傷つけません。",
    "나는 유리를 먹을 수 있어요. 그래도 아프지 않아요.",
    "أنا قادر على أكل الزجاج و هذا لا يؤلمني.",
    "אני יכול לאכול זכוכית וזה לא מזיק לי.",
    "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती.",
    "Μπορώ να φάω σπασμένα γυαλιά χωρίς να πάθω τίποτα.",
    "ฉันกินกระจกได้ แต่มันไม่ทำให้ฉันเจ็บ",
    "Tôi có thể ăn thủy tinh mà không hại gì.",
    "Zażółć gęślą jaźń.",
    "naïve café résumé coöperate façade",
    "e\u0301te\u0301 (combining acute accents)",
    "ｆｕｌｌｗｉｄｔｈ ｌｅｔｔｅｒｓ and ＡＢＣ１２３",
    "ﬁ ﬂ ligatures and Ⅻ roman numerals",
    "I ❤️ pizza 🍕🍕🍕",
    "👨‍👩‍👧‍👦 family emoji with zero-width joiners",
    "Flags: 🇫🇷 🇯🇵 🇺🇸 🏳️‍🌈",
    "😀😃😄😁😆😅😂🤣",
    "Thumbs up 👍🏽 with a skin tone modifier",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)",
    "<div class=\"container\"><p>Hello, world!</p></div>",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "git commit -m 'fix: handle empty input' && git push origin main",
    "https://example.com/path?query=value&other=42#fragment",
    "user.name+tag@example.org",
    "3.14159265358979323846264338327950288419716939937510",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "$1,234.56 + €78,90 = ¥?",
    "E = mc² and ∑ᵢ xᵢ² ≥ 0, ∀x ∈ ℝ",
    "ALL CAPS SENTENCE SHOUTING LOUDLY",
    "MiXeD cAsE iS hArD tO rEaD",
    "!!!???...,,,;;;:::",
    "a",
    "I",
    "?",
    "ok",
    "hello",
    "Hello, world!",
    "tab\tseparated\tvalues",
    "line one\nline two\r\nline three",
    "null byte \x00 inside",
    "bell \x07 and escape \x1b[31m codes",
    "zero\u200bwidth\u200bspaces",
    "soft\u00adhyphen and non\u00a0breaking space",
    "right-to-left mark \u200f here",
    "replacement character \ufffd here",
    "private use \ue000 area",
    "supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "antidisestablishmentarianism is a long word",
]

_WHITESPACE_AND_EMPTY = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    " \t\n ",
    "\u3000",  # ideographic space
    "\u00a0",  # no-break space
    "\u200b",  # zero-width space (a format character, not whitespace)
    "\x00",
    "\x1f",
]

_PARAGRAPH = (
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg combined movable metal type, oil-based ink and a wooden press adapted from "
    "those used for wine. Within a few decades presses were running in more than two "
    "hundred cities across Europe, and the cost of books fell so far that reading spread "
    "from monasteries and courts to merchants, artisans and students. "
)


def _long_texts() -> list[str]:
    texts: list[str] = []
    # Exact piece counts around the limit: k words -> k + 2 pieces.
    for k in (1, 2, 50, 126, 127, 128, 200, 252, 253, 254, 255, 256, 300, 511, 600):
        words = [_ONE_PIECE_WORDS[i % len(_ONE_PIECE_WORDS)] for i in range(k)]
        texts.append(" ".join(words))
    # Prose of growing length, well past truncation at the top end.
    for n in (1, 2, 3, 4, 6, 10, 25):
        texts.append(_PARAGRAPH * n)
    # Distinct content after the cut must not matter: same prefix, different tails.
    texts.append(_PARAGRAPH * 4 + "The end is about cooking pasta.")
    texts.append(_PARAGRAPH * 4 + "The end is about quantum physics.")
    # Words longer than WordPiece's 100-character cap become [UNK].
    texts.append("a" * 99)
    texts.append("a" * 100)
    texts.append("a" * 101)
    texts.append("a" * 10_000)
    texts.append("word " * 2_000)
    texts.append("🙂" * 300)
    texts.append("中文" * 200)
    texts.append(("def f(x):\n    return x * 2\n\n") * 40)
    return texts


def _generated(count: int, seed: int) -> list[str]:
    """Random short texts mixing the sentence list's vocabulary with symbols and case."""
    rng = random.Random(seed)
    vocab = " ".join(_SENTENCES[:30]).split()
    extras = ["🙂", "ß", "ü", "ø", "€", "—", "…", "123", "x86_64", "#", "@", "\t", "\n"]
    out = []
    for _ in range(count):
        n = rng.randint(1, 40)
        words = [rng.choice(vocab) for _ in range(n)]
        for _ in range(rng.randint(0, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(extras))
        text = " ".join(words)
        mode = rng.random()
        if mode < 0.15:
            text = text.upper()
        elif mode < 0.25:
            text = "  " + text + "  "
        out.append(text)
    return out


def reference_inputs() -> list[str]:
    """The full list (a little over 200 texts), always in the same order."""
    texts = _SENTENCES + _WHITESPACE_AND_EMPTY + _long_texts()
    texts += _generated(count=240 - len(texts), seed=20240605)
    return texts

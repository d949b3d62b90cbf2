"""The documents search route's cache of query embeddings (service.QueryVectors): the
last few queries by text, the least recently used one dropped first."""

from __future__ import annotations

import threading

import numpy as np

from nanochat_lite.documents.service import QueryVectors


def test_keeps_the_last_used_and_drops_the_oldest() -> None:
    kept = QueryVectors(size=2)
    a, b, c = (np.full(3, i, np.float32) for i in range(3))
    kept.put("a", a)
    kept.put("b", b)
    assert kept.get("a") is a  # "a" is now the most recently used
    kept.put("c", c)  # over the size: "b", the least recently used, goes
    assert kept.get("b") is None and kept.get("a") is a and kept.get("c") is c
    assert kept.get("A") is None  # the text exactly, not a folded form: it is what was embedded


def test_many_threads_never_push_it_past_its_size() -> None:
    kept = QueryVectors(size=8)

    def fill(start: int) -> None:
        for i in range(start, start + 500):
            kept.put(str(i), np.zeros(2, np.float32))
            kept.get(str(i - 3))

    threads = [threading.Thread(target=fill, args=(n * 1000,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(kept._kept) == 8

"""Semantic search over the stored messages: ranked by cosine similarity to the query,
with the embeddings engine (all-MiniLM-L6-v2).

Vectors are computed lazily and kept in the conversation store: each query first embeds
(a bounded number of) the owner's messages that have none yet, so later queries only
embed the query itself. A query ranks its owner's messages only (None: every owner's,
an admin's view). Not here: the route and its parameters (routes/conversations.py), full-text
search (the stores).
"""

from __future__ import annotations

import asyncio
from typing import Any

from .runtime import Runtime

EMBED_BATCH = 128
MAX_EMBEDDED_PER_QUERY = 4096  # bounds one query's catch-up work; the rest waits for the next
SNIPPET_CHARS = 200


async def search(rt: Runtime, q: str, limit: int, *, owner: str | None) -> list[dict[str, Any]]:
    """`owner`'s messages ranked by cosine similarity to the query, with the embeddings engine.

    Vectors are computed lazily: each query first embeds (a bounded number of) the
    messages that have none yet and stores them, so later queries only embed the query.
    """
    import numpy as np

    embedder = await rt.embedder()
    model = embedder.model_name
    for _ in range(MAX_EMBEDDED_PER_QUERY // EMBED_BATCH):
        rows = await asyncio.to_thread(rt.store.unembedded, model, limit=EMBED_BATCH, owner=owner)
        if not rows:
            break
        async with rt.embed_lock:
            result = await asyncio.to_thread(embedder.embed, [content for _, content in rows])
        blobs = [(mid, vec.astype("<f4").tobytes()) for (mid, _), vec in zip(rows, result.vectors)]
        await asyncio.to_thread(rt.store.put_vectors, model, blobs)
    async with rt.embed_lock:
        query = (await asyncio.to_thread(embedder.embed, [q])).vectors[0]
    items = await asyncio.to_thread(rt.store.vectors, model, owner=owner)
    if not items:
        return []
    matrix = np.frombuffer(b"".join(blob for _, blob in items), dtype="<f4").reshape(len(items), -1)
    scores = matrix @ query  # (n,): cosine, both sides are unit vectors
    hits = []
    for i in np.argsort(-scores)[:limit]:
        hit = dict(items[i][0])
        hit["snippet"] = hit["snippet"][:SNIPPET_CHARS]
        hit["score"] = round(float(scores[i]), 4)
        hits.append(hit)
    return hits

"""A document's indexing as events: `progress` frames, then `ready` or `error`.

One generator for both doors that show it, the SSE stream (`GET /api/documents/{id}/events`)
and the WebSocket's `watch_document`, so the two cannot drift apart:

    async for frame in document_frames(svc, doc, owner, every_s=0.5):
        ...  # {"type": "progress", "done": 3, "total": 9} ... {"type": "ready", "chunks": 9}
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .store import Document, final_event

if TYPE_CHECKING:
    from .service import DocumentService


async def document_frames(svc: DocumentService, doc: Document, owner: str, *,
                          every_s: float) -> AsyncIterator[dict[str, Any]]:
    """Progress frames every `every_s` seconds until the final event. A document this
    process is not indexing (another replica's, or one whose progress was forgotten) is
    followed through the store instead."""
    final = final_event(doc)
    progress = svc.indexer.progress(doc.id)
    while final is None:
        if progress is not None:
            frame = progress.snapshot()
            if frame["type"] != "progress":
                final = frame
                break
            yield frame
        else:
            current = await asyncio.to_thread(svc.library.store.get, doc.id, owner=owner)
            if current is None:
                final = {"type": "error", "code": "not_found", "message": "the document was deleted"}
                break
            final = final_event(current)
            if final is not None:
                break
            yield {"type": "progress", "done": 0, "total": 0}
        await asyncio.sleep(every_s)
    yield final

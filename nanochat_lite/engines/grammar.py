"""JSON Schema -> llama.cpp grammar: asked of llama.cpp's own converter before a request
is accepted, so a schema the engine cannot enforce is refused instead of ignored.

The only reason the server talks to this module rather than to the engine: a schema is
checked while the request is validated, before any engine (local or remote) is chosen.
"""

from __future__ import annotations

import json
from typing import Any


class GrammarError(ValueError):
    """llama.cpp's converter refused the schema; the message is its reason."""


def schema_to_grammar(schema: Any) -> str | None:
    """The GBNF grammar llama.cpp builds for `schema`, or None where llama.cpp is not
    installed (a server whose only engine is remote). Blocks: call it off the event loop.

    Raises GrammarError with llama.cpp's reason when it cannot convert the schema.
    """
    try:
        import xllamacpp
    except ImportError:
        return None
    try:
        return str(xllamacpp.json_schema_to_grammar(json.dumps(schema)))
    except (ValueError, RuntimeError) as e:
        raise GrammarError(str(e)) from None

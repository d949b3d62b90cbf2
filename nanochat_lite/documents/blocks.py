"""What a parsed document is made of, and the reasons one is refused.

A document parses into `Block`s: runs of text in reading order, each with the page it
sits on (PDFs only) and the nearest heading above it. Every refusal is a
`DocumentError` subclass whose `code` is stable (for an API's error body or an `error`
event) and whose message names the reason and what to do about it.
"""

from __future__ import annotations

from typing import NamedTuple


class Block(NamedTuple):
    text: str  # never empty or whitespace-only; may hold newlines (code, table rows)
    page: int | None  # 1-based physical page of a PDF; None for formats without pages
    heading: str | None  # the nearest heading above this text, None before the first one


class DocumentError(ValueError):
    """A document that cannot be read. `code` names the reason in a word."""

    code = "unreadable"


class EmptyDocument(DocumentError):
    code = "empty"


class TooLarge(DocumentError):
    code = "too_large"


class BinaryContent(DocumentError):
    code = "binary"


class UnsupportedFormat(DocumentError):
    code = "unsupported_format"


class EncryptedPdf(DocumentError):
    code = "encrypted_pdf"


class CorruptPdf(DocumentError):
    code = "corrupt_pdf"


class CorruptDocx(DocumentError):
    code = "corrupt_docx"


class ZipBomb(DocumentError):
    code = "zip_bomb"


class NoText(DocumentError):
    """A well-formed document without any text to index (a scanned PDF, a docx of images)."""

    code = "no_text"

"""Document bytes and a file name -> `Block`s of text with their page and heading.

    parse(data, "report.pdf", max_bytes=50 << 20) -> [Block(text, page, heading), ...]

The format comes from the content, never from the name: a PDF by its `%PDF-` header, a
.docx as a zip holding `word/document.xml`, HTML by its opening tag (the WHATWG
sniffing rules), anything else must decode as text (UTF-8, UTF-16/32 with a byte-order
mark, or Windows-1252) without control characters. The name only picks the dialect of
text: `.md`/`.markdown` reads `#` lines as headings; in any text, a line underlined
with `===`, `---`, `***`... (Markdown setext, reStructuredText) is a heading.

Refusals are `DocumentError`s (blocks.py): empty, too large, binary, an unsupported
archive, an encrypted or corrupt PDF, a corrupt .docx, a zip bomb, no text at all.

Not handled: other formats (.odt, .rtf, .epub, images), Markdown's inline syntax
(emphasis, links stay as written), encodings other than the ones above.
"""

from __future__ import annotations

import codecs
import io
import re
import zipfile

from . import formats
from .blocks import (
    BinaryContent,
    Block,
    CorruptDocx,
    DocumentError,
    EmptyDocument,
    NoText,
    TooLarge,
    UnsupportedFormat,
)

DEFAULT_MAX_BYTES = 50 << 20  # the server's --max-document-mb default
MAX_CONTROL_FRACTION = 0.01  # text with more control characters than this is binary
KINDS = ("pdf", "docx", "html", "markdown", "text")

_MARKDOWN_NAMES = (".md", ".markdown", ".mdown", ".mkd")
# A NUL, or a C0 control other than tab, newlines, vertical tab and form feed; or DEL.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f]")
_HTML_LEADS = ("<!doctype html", "<html", "<head", "<script", "<iframe", "<h1", "<div", "<font", "<table",
               "<a", "<style", "<title", "<b", "<body", "<br", "<p", "<!--")
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"\x7fELF", "a Linux executable"), (b"MZ", "a Windows executable"), (b"\x1f\x8b", "a gzip archive"),
          (b"BZh", "a bzip2 archive"), (b"\xfd7zXZ", "an xz archive"), (b"7z\xbc\xaf", "a 7-Zip archive"),
          (b"Rar!", "a RAR archive"), (b"\xd0\xcf\x11\xe0", "an old Office file (.doc/.xls)"),
          (b"SQLite format 3\x00", "a SQLite database"), (b"OggS", "an Ogg file"), (b"RIFF", "a RIFF (WAV/AVI/WebP) file"))
_ZIP_KINDS = (("xl/workbook.xml", "an Excel workbook (.xlsx)"), ("ppt/presentation.xml", "a PowerPoint deck (.pptx)"),
              ("mimetype", "an OpenDocument file (.odt/.ods)"), ("META-INF/container.xml", "an EPUB book"))


def parse(data: bytes, name: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Block]:
    """The text of one document as blocks in reading order; raises DocumentError."""
    if len(data) > max_bytes:
        raise TooLarge(f"{name!r} is {len(data):,} bytes, over the limit of {max_bytes:,} bytes. "
                       "Split it, or raise the limit.")
    kind, text = _sniffed(data, name)
    if kind == "pdf":
        return formats.pdf_blocks(data)
    if kind == "docx":
        return formats.docx_blocks(data)
    assert text is not None  # _sniffed decodes every text kind
    if kind == "html":
        blocks = formats.html_blocks(text)
        if not blocks:
            raise NoText(f"{name!r} is an HTML page without visible text (only scripts, styles or markup).")
        return blocks
    return text_blocks(text, markdown=kind == "markdown")


def sniff(data: bytes, name: str) -> str:
    """Which reader `parse` would use: one of KINDS. Raises DocumentError like `parse`
    for content no reader takes (empty, binary, other archives, a zip bomb), without
    parsing further."""
    return _sniffed(data, name)[0]


def _sniffed(data: bytes, name: str) -> tuple[str, str | None]:
    """(kind, the decoded text for the text kinds, else None)."""
    if not data:
        raise EmptyDocument(f"{name!r} is empty (0 bytes). Nothing to index.")
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n\x0c")
    if head.startswith(b"%PDF-"):
        return "pdf", None
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        _check_docx(data, name)
        return "docx", None
    text = decode_text(data, name)
    if not text.strip():
        raise EmptyDocument(f"{name!r} holds only whitespace. Nothing to index.")
    if looks_like_html(text):
        return "html", text
    return ("markdown" if name.lower().endswith(_MARKDOWN_NAMES) else "text"), text


def _check_docx(data: bytes, name: str) -> None:
    """Refuse a zip that is not a .docx, or is one past the zip limits."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            formats.check_zip(archive)
            names = set(archive.namelist())
    except DocumentError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise CorruptDocx(f"{name!r} starts like a zip archive (a .docx is one) but cannot be read "
                          f"as one ({e}). Check that the upload is complete.") from e
    if "word/document.xml" not in names:
        kind = next((what for member, what in _ZIP_KINDS if member in names), "a zip archive")
        raise UnsupportedFormat(f"{name!r} is {kind}, not a Word document (no word/document.xml). "
                                "Supported: .txt, .md, .html, .pdf, .docx.")


def decode_text(data: bytes, name: str) -> str:
    """Bytes -> str for text files; BinaryContent when they are not text.

    A file opening with the signature of a binary format (one holding bytes no text
    starts with, like PNG's 0x89) is binary whatever follows. Otherwise UTF-8 first (with or without BOM), UTF-16/32 only with their BOM, then Windows-1252
    (older Windows editors). Decoded text with a NUL, or more than 1% other control
    characters, is binary whatever it decoded as.
    """
    for magic, what in _MAGIC:
        if data.startswith(magic) and any(b < 0x09 or b > 0x7E for b in magic):
            raise BinaryContent(_binary_message(data, name, "its first bytes are that format's signature"))
    try:
        if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
            text = data.decode("utf-32")
        elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")
        else:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                text = data.decode("cp1252")
    except UnicodeDecodeError as e:
        raise BinaryContent(_binary_message(data, name, f"not text in UTF-8 or Windows-1252 ({e.reason} "
                                                        f"at byte {e.start})")) from e
    controls = _CONTROL.findall(text[:1 << 20])  # the first million characters tell
    if "\x00" in controls or len(controls) > MAX_CONTROL_FRACTION * min(len(text), 1 << 20):
        raise BinaryContent(_binary_message(data, name, f"{len(controls):,} control characters"))
    return text


def _binary_message(data: bytes, name: str, why: str) -> str:
    kind = next((what for magic, what in _MAGIC if data.startswith(magic)), "binary data")
    return (f"{name!r} looks like {kind}, not a document ({why}). "
            "Supported: .txt, .md, .html, .pdf, .docx.")


def looks_like_html(text: str) -> bool:
    """The WHATWG MIME sniffing rule for HTML: after leading whitespace, one of its tags
    ("<!DOCTYPE HTML", "<html", "<p", "<!--", ...) followed by a space or '>'.
    XHTML (an XML declaration first) counts when an <html tag follows within 1 kB."""
    start = text.lstrip("\ufeff \t\n\r\x0c")[:1024]
    lower = start.lower()
    if lower.startswith("<?xml"):
        return "<html" in lower
    for lead in _HTML_LEADS:
        if lower.startswith(lead) and lower[len(lead) : len(lead) + 1] in (" ", ">", "\t", "\n", "\r"):
            return True
    return False


# -- plain text and Markdown ------------------------------------------------------------
_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
# Underlines: the characters Markdown and reStructuredText documents use in practice
# ("..." and quotes under a line are more often prose than a heading).
_UNDERLINE = re.compile(r"([=\-~^*+#])\1{2,}[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def text_blocks(text: str, *, markdown: bool) -> list[Block]:
    """Paragraphs (split at blank lines) under the headings found in the text.

    Headings: a short line followed by a line of one repeated punctuation character
    (setext/reStructuredText underline, an overline above is skipped); with
    `markdown`, also `# Title` lines, and fenced code stays one block, headings in it
    not read. 'Intro\\n=====\\n\\nHello.\\n' -> [Block('Hello.', None, 'Intro')]
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[Block] = []
    heading: str | None = None
    para: list[str] = []

    def flush() -> None:
        body = "\n".join(para).strip("\n")
        para.clear()
        if body.strip():
            blocks.append(Block(body, None, heading))

    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line) if markdown else None
        if fence:  # fenced code: one block up to the closing fence (or the end)
            flush()
            end = i + 1
            while end < len(lines) and not lines[end].lstrip().startswith(fence.group(1)):
                end += 1
            para.extend(lines[i : end + 1])
            flush()
            i = end + 1
            continue
        atx = _ATX.match(line) if markdown else None
        if atx:
            flush()
            heading = formats.clean_heading(atx.group(2) or "") or heading
            i += 1
            continue
        underlined = (i + 1 < len(lines) and not para and line.strip() and not line[0].isspace()
                      and not _UNDERLINE.match(line) and _UNDERLINE.match(lines[i + 1]) is not None)
        if underlined and formats.clean_heading(line) is not None:
            heading = formats.clean_heading(line)
            i += 2
            continue
        if _UNDERLINE.match(line) and not para:
            i += 1  # an overline, or a rule between paragraphs: no text
            continue
        if line.strip():
            para.append(line)
        else:
            flush()
        i += 1
    flush()
    if not blocks:
        raise NoText("the text holds headings or rules but no paragraphs. Nothing to index.")
    return blocks

"""A long PDF of real prose for the ingest benchmark, made here byte for byte.

    data, chapters = book_pdf(300)   # 300 pages, ~3 kB of text each, bookmarks per chapter

The text is Python's own documentation as this interpreter ships it: first the topic
texts of `pydoc_data.topics` (the reference manual's pages that `help()` shows, about
220 pages here), then the docstrings of the standard library's top-level modules, read
with `ast` from their source files (never imported). Each topic or module is a chapter:
it follows the last one on the same page and gets a bookmark, which the PDF reader turns into the chunks'
headings. Lines are wrapped at `WIDTH` characters, `LINES` to a page, in Helvetica, the
way `tests/documents/docmake.py` writes its PDFs (uncompressed content streams, so the
text layer is exactly the text). Characters outside printable ASCII become '?': the
standard Type 1 fonts carry no others without an embedded font.

Deterministic for one Python version: the same pages come out on every run.
Not handled: more pages than the documentation holds (a ValueError says how many).
"""

from __future__ import annotations

import ast
import io
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

WIDTH = 90  # characters a line: a printed page of 10-point type
LINES = 54  # lines a page (13-point leading on a US Letter page)
_PRINTABLE = {chr(c) for c in range(32, 127)}


def _ascii(text: str) -> str:
    return "".join(ch if ch in _PRINTABLE else "?" for ch in text.replace("\t", "    "))


def _topics() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for label in sorted(topics):
        yield label, topics[label]


def _module_docs() -> Iterator[tuple[str, str]]:
    """(module name, its docstrings: module, classes, functions) for the standard
    library's top-level modules, in name order; modules without any are skipped."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):  # a file this parser cannot read is left out
            continue
        parts = []
        for node in ast.walk(tree):  # the module first, then its classes and functions
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    parts.append(doc if isinstance(node, ast.Module) else f"{node.name}\n\n{doc}")
        if parts:
            yield path.stem, "\n\n".join(parts)


def _wrapped(title: str, text: str) -> list[str]:
    """A chapter's lines: its title, a blank line, then each paragraph wrapped to WIDTH."""
    lines = [_ascii(title), ""]
    for paragraph in text.split("\n"):
        lines += textwrap.wrap(_ascii(paragraph), WIDTH) or [""]
    return lines


def book_pages(pages: int) -> tuple[list[list[str]], list[tuple[str, int]]]:
    """(the lines of each of `pages` pages, [(chapter title, 0-based page it starts on)]).

    Chapters follow each other as in a printed manual, a blank line between them; the
    last one is cut where the pages run out."""
    wanted = pages * LINES
    lines: list[str] = []
    chapters: list[tuple[str, int]] = []
    for source in (_topics(), _module_docs()):
        for title, text in source:
            if len(lines) >= wanted:
                break
            chapters.append((title, len(lines) // LINES))
            lines += [*_wrapped(title, text), ""]
    if len(lines) < wanted:
        raise ValueError(f"the documentation shipped with this Python fills {len(lines) // LINES} pages; "
                         "ask for fewer")
    return [lines[start : start + LINES] for start in range(0, wanted, LINES)], chapters


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def plain_pdf(pages: list[list[str]], *, size: int = 10, left: int = 50, top: int = 750, leading: int = 13) -> bytes:
    """A PDF written by hand (so its text layer is known exactly) whose page i shows the
    lines pages[i] in Helvetica `size` pt, from (left, top), `leading` pt apart (an empty
    list: a blank page). tests/documents/docmake.py builds its PDFs on it."""
    objects: list[str] = []  # object i+1
    page_ids = [3 + 2 * i for i in range(len(pages))]
    font_id = 3 + 2 * len(pages)
    objects.append("<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {len(pages)} >>")
    for i, lines in enumerate(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       f"/Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {page_ids[i] + 1} 0 R >>")
        body = (f"BT /F1 {size} Tf {left} {top} Td {leading} TL "
                + " ".join(f"{_pdf_string(line)} Tj T*" for line in lines) + " ET")
        objects.append(f"<< /Length {len(body.encode('latin-1'))} >>\nstream\n{body}\nendstream")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1"))
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def pdf(pages: list[list[str]], outline: list[tuple[str, int]]) -> bytes:
    """plain_pdf (Helvetica 10 pt) with one bookmark per (title, 0-based page) of `outline`."""
    data = plain_pdf(pages)
    if not outline:
        return data
    from pypdf import PdfReader, PdfWriter  # the documents room's PDF reader; bookmarks are its to write

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    for title, page in outline:
        writer.add_outline_item(title=title, page_number=page)
    result = io.BytesIO()
    writer.write(result)
    return result.getvalue()


def book_pdf(pages: int) -> tuple[bytes, int]:
    """(a PDF of `pages` pages of the documentation, how many chapters it has)."""
    lines, chapters = book_pages(pages)
    return pdf(lines, chapters), len(chapters)

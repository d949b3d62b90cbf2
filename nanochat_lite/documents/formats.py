"""Readers for the structured formats: HTML, PDF (pypdf) and .docx (python-docx).

Each takes what `parse.py` sniffed and gives `Block`s or raises a `DocumentError`. The
zip limits for .docx are checked here, on the archive's directory, before python-docx
reads a single member.

Not handled:
- HTML: text hidden by CSS or the `hidden` attribute is kept; frames are not followed;
  headings nested inside skipped elements are dropped with them.
- PDF: no OCR (a scanned PDF is refused as `NoText`); physical page numbers, not the
  printed labels ("iv"); AES-encrypted files open only when the `cryptography` package
  is installed (pypdf's own code does RC4); reading order is pypdf's.
- .docx: headers, footers, footnotes, comments and text boxes; nested tables;
  headings are paragraphs whose style is "Title" or "Heading N" (Word maps localised
  built-in style names to these).
"""

from __future__ import annotations

import html.parser
import io
import re
import zipfile
from typing import Any

from .blocks import (
    Block,
    CorruptDocx,
    CorruptPdf,
    DocumentError,
    EncryptedPdf,
    NoText,
    ZipBomb,
)

MAX_HEADING_CHARS = 200  # a longer "heading" is body text someone styled big
ZIP_MAX_MEMBERS = 10_000
ZIP_MAX_UNPACKED = 256 << 20  # bytes, all members together: python-docx holds every part in memory
ZIP_MAX_RATIO = 100  # unpacked/packed per member; Word's XML packs 5-20x, a bomb 1000x
ZIP_RATIO_FLOOR = 1 << 20  # members smaller than this unpacked may have any ratio

_SPACES = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
_LINE_EDGES = re.compile(r" *\n *")


def clean_heading(text: str) -> str | None:
    """One line of at most MAX_HEADING_CHARS characters, or None when there is none."""
    text = _SPACES.sub(" ", text).strip()
    return text if 0 < len(text) <= MAX_HEADING_CHARS else None


# -- HTML -------------------------------------------------------------------------------
# Not "head": HTML lets a page omit </head>, and html.parser would not close it for us.
_SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "math", "iframe", "object"})
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_BREAKS = frozenset({
    "address", "article", "aside", "blockquote", "dd", "details", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "nav",
    "ol", "p", "pre", "section", "summary", "table", "tbody", "td", "th", "thead", "tr", "ul",
})


class _HtmlText(html.parser.HTMLParser):
    """Collects paragraphs of visible text; h1-h6 become headings; <title> is the first.

    Whitespace collapses as a browser collapses it, except inside <pre>.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._skip = 0  # depth inside elements whose text is not shown
        self._pre = 0
        self._in_heading = False
        self._in_title = False
        self._title: list[str] = []
        self._parts: list[str] = []
        self._heading: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in _SKIPPED:
            self._skip += 1
        elif tag in _HEADINGS:
            self._end_heading()  # an unclosed one ends where the next begins
            self._flush()
            self._in_heading = True
        elif tag in _BREAKS:
            self._flush()
            self._pre += tag == "pre"
        elif tag == "br" and not self._skip:
            self._parts.append("\n")  # a line break inside the paragraph, not a new one

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br" and not self._skip:
            self._parts.append("\n")
        elif tag in _BREAKS and not self._in_heading:
            self._flush()  # <hr/>

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._in_title:
            self._in_title = False
            if self._heading is None:
                self._heading = clean_heading("".join(self._title))
        if tag in _SKIPPED:
            self._skip = max(0, self._skip - 1)
        elif tag in _HEADINGS:
            self._end_heading()
        elif tag in _BREAKS and not self._in_heading:
            self._flush()
            if tag == "pre":
                self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title.append(data)  # <title> sits in <head>, which is skipped
        elif not self._skip:
            self._parts.append(data if self._pre else _SPACES.sub(" ", data))

    def close(self) -> None:
        super().close()
        if self._in_heading:  # never closed: what it held was text, not a heading
            self._in_heading = False
        self._flush()

    def _end_heading(self) -> None:
        if not self._in_heading:
            return
        self._in_heading = False
        text = "".join(self._parts)
        heading = clean_heading(text)
        if heading is not None:
            self._parts = []
            self._heading = heading
        else:
            self._flush()  # too long to be a heading: keep it as text

    def _flush(self) -> None:
        if self._in_heading:
            self._parts.append(" ")  # a block element inside a heading: the heading goes on
            return
        text = "".join(self._parts)
        self._parts = []
        text = text.strip("\n") if self._pre else _LINE_EDGES.sub("\n", text).strip()
        if text.strip():
            self.blocks.append(Block(text, None, self._heading))


def html_blocks(text: str) -> list[Block]:
    """Visible text of an HTML page: scripts, styles and the head dropped, headings kept.

    '<h1>Intro</h1><p>Hello <b>you</b></p><script>x()</script>' -> [Block('Hello you', None, 'Intro')]
    """
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    return parser.blocks


# -- PDF --------------------------------------------------------------------------------
def pdf_blocks(data: bytes) -> list[Block]:
    """One block per page with text, numbered from 1; headings from the outline (bookmarks)."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # owner-password-only files open with an empty user password
            except DependencyError as e:
                raise EncryptedPdf(
                    "the PDF is encrypted with AES, which needs the 'cryptography' package to open "
                    "even without a password. Save an unencrypted copy (Print to PDF) and upload that."
                ) from e
            if not opened:
                raise EncryptedPdf("the PDF is protected by a password. Remove the password "
                                   "(save an unprotected copy) and upload that.")
        pages = reader.pages
        count = len(pages)
        headings = _outline_headings(reader, count)
        blocks = []
        for number, page in enumerate(pages, start=1):
            try:
                text = page.extract_text()
            except DocumentError:
                raise
            except MemoryError:
                raise
            except Exception as e:  # pypdf raises many types on damaged content streams
                raise CorruptPdf(f"page {number} of the PDF cannot be read ({e}). "
                                 "Re-save the file (Print to PDF) and upload it again.") from e
            text = _BLANK_LINES.sub("\n\n", "\n".join(line.rstrip() for line in text.splitlines())).strip()
            if text:
                blocks.append(Block(text, number, headings[number - 1]))
    except DocumentError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # pypdf on a damaged file: PdfReadError, but also KeyError, ValueError...
        raise CorruptPdf(f"the PDF cannot be read ({type(e).__name__}: {e}). Check that the upload "
                         "is complete; re-save the file (Print to PDF) and upload it again.") from e
    if count == 0:
        raise CorruptPdf("the PDF has no pages. Check that the upload is complete.")
    if not blocks:
        raise NoText(f"none of the PDF's {count} page(s) has a text layer (a scanned document?). "
                     "Run it through OCR first, then upload the result.")
    return blocks


def _outline_headings(reader: Any, pages: int) -> list[str | None]:
    """For each page (0-based), the title of the last bookmark starting on or before it.

    A damaged outline only loses the headings, never the document: any error -> all None.
    """
    starts: list[tuple[int, int, str]] = []  # (page index, order in the outline, title)

    def walk(items: list[Any]) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
                continue
            title = clean_heading(str(getattr(item, "title", "") or ""))
            page = reader.get_destination_page_number(item)
            if title is not None and page is not None and 0 <= page < pages:
                starts.append((page, len(starts), title))

    try:
        walk(reader.outline)
    except MemoryError:
        raise
    except Exception:
        return [None] * pages
    headings: list[str | None] = [None] * pages
    current: str | None = None
    by_page: dict[int, str] = {}
    for page, _, title in sorted(starts):
        by_page[page] = title  # several bookmarks on one page: the last one in the outline
    for i in range(pages):
        current = by_page.get(i, current)
        headings[i] = current
    return headings


# -- DOCX -------------------------------------------------------------------------------
def check_zip(archive: zipfile.ZipFile) -> None:
    """Refuse an archive that would unpack too large, before anything is unpacked.

    The sizes are the ones the archive declares; CPython's zipfile never returns more
    than a member's declared size and checks its CRC at the end, so a member that lies
    about its size fails as a damaged file instead of unpacking further.
    """
    members = archive.infolist()
    if len(members) > ZIP_MAX_MEMBERS:
        raise ZipBomb(f"the .docx archive holds {len(members):,} files, more than the "
                      f"{ZIP_MAX_MEMBERS:,} a Word document could need. Refused unopened.")
    total = 0
    for info in members:
        total += info.file_size
        if info.file_size > ZIP_RATIO_FLOOR and info.file_size > ZIP_MAX_RATIO * max(1, info.compress_size):
            raise ZipBomb(
                f"the .docx archive's member {info.filename!r} would unpack from {info.compress_size:,} "
                f"to {info.file_size:,} bytes ({info.file_size // max(1, info.compress_size):,}x, over "
                f"{ZIP_MAX_RATIO}x): a zip bomb, not a Word document. Refused unopened."
            )
    if total > ZIP_MAX_UNPACKED:
        raise ZipBomb(f"the .docx archive would unpack to {total:,} bytes, over the "
                      f"{ZIP_MAX_UNPACKED:,}-byte limit. Refused unopened.")


def docx_blocks(data: bytes) -> list[Block]:
    """Paragraphs and table rows in body order; Title / Heading N paragraphs set the heading.

    The caller has checked the zip (`check_zip`).
    """
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
        blocks: list[Block] = []
        heading: str | None = None
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                text = _table_text(item)
                if text:
                    blocks.append(Block(text, None, heading))
                continue
            text = item.text.strip()
            style = item.style.name if item.style is not None else ""
            if text and (style == "Title" or (style or "").startswith("Heading")):
                as_heading = clean_heading(text)
                if as_heading is not None:
                    heading = as_heading
                    continue
            if text:
                blocks.append(Block(text, None, heading))
    except MemoryError:
        raise
    except Exception as e:  # python-docx and lxml on a damaged package raise many types
        raise CorruptDocx(f"the .docx cannot be read ({type(e).__name__}: {e}). Open it in Word or "
                          "LibreOffice, save it again as .docx and upload that.") from e
    if not blocks:
        raise NoText("the .docx has no text in its body (only images, or empty). Nothing to index.")
    return blocks


def _table_text(table: Any) -> str:
    """One line per row, cells joined by ' | '; a merged cell (repeated by python-docx) once."""
    lines = []
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            text = _SPACES.sub(" ", cell.text).strip()
            if not cells or text != cells[-1]:
                cells.append(text)
        line = " | ".join(c for c in cells if c)
        if line:
            lines.append(line)
    return "\n".join(lines)

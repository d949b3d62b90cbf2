"""Documents made in the test, byte for byte: PDFs written by hand (so the text layer is
known exactly), .docx files through python-docx, and zips that are not what they say."""

from __future__ import annotations

import io
import zipfile

from nanochat_lite.bench.bookmake import plain_pdf


def pdf(pages: list[list[str]], *, outline: list[tuple[str, int]] = (), user_password: str | None = None,
        owner_password: str | None = None) -> bytes:
    """A PDF whose page i shows the lines pages[i] in Helvetica (an empty list: a blank
    page). `outline` adds bookmarks (title, 0-based page); a password encrypts it (RC4,
    which pypdf opens without extra packages)."""
    data = plain_pdf(pages, size=12, left=72, top=720, leading=14)
    if not outline and user_password is None and owner_password is None:
        return data
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    for title, page in outline:
        writer.add_outline_item(title=title, page_number=page)
    if user_password is not None or owner_password is not None:
        writer.encrypt(user_password=user_password or "", owner_password=owner_password, algorithm="RC4-128")
    result = io.BytesIO()
    writer.write(result)
    return result.getvalue()


def docx(items: list[tuple[str, str]]) -> bytes:
    """A .docx from (kind, text) pairs: kind "h1".."h3", "title", "p", or "table" (rows
    split by '\\n', cells by '|')."""
    import docx as python_docx

    document = python_docx.Document()
    for kind, text in items:
        if kind == "title":
            document.add_heading(text, level=0)
        elif kind.startswith("h"):
            document.add_heading(text, level=int(kind[1:]))
        elif kind == "table":
            rows = [r.split("|") for r in text.split("\n")]
            table = document.add_table(rows=len(rows), cols=max(len(r) for r in rows))
            for r, cells in enumerate(rows):
                for c, cell in enumerate(cells):
                    table.cell(r, c).text = cell
        else:
            document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def zip_bomb(unpacked: int) -> bytes:
    """A zip that looks like a .docx (it has word/document.xml) whose document member is
    `unpacked` zero bytes: deflate packs them about 1000 to 1."""
    return zip_of({"[Content_Types].xml": b"<Types/>", "word/document.xml": bytes(unpacked)})

"""documents/parse.py: every format to known blocks, sniffed by content; every refusal by reason."""

from __future__ import annotations

import codecs
import io
import random
import zipfile

import docmake
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat_lite.documents import formats
from nanochat_lite.documents.blocks import (
    BinaryContent,
    Block,
    CorruptDocx,
    CorruptPdf,
    DocumentError,
    EmptyDocument,
    EncryptedPdf,
    NoText,
    TooLarge,
    UnsupportedFormat,
    ZipBomb,
)
from nanochat_lite.documents.parse import parse, sniff


# -- text and Markdown ------------------------------------------------------------------
def test_text_paragraphs_and_underlined_headings() -> None:
    text = ('The "assert" statement\n**********************\n\nAssert statements are\na convenient way.\n\n'
            "   assert_stmt ::= expr\n\nDetails\n=======\nMore text.\n")
    assert parse(text.encode(), "notes.txt") == [
        Block("Assert statements are\na convenient way.", None, 'The "assert" statement'),
        Block("   assert_stmt ::= expr", None, 'The "assert" statement'),
        Block("More text.", None, "Details"),
    ]


def test_text_keeps_hash_lines_as_text_markdown_reads_them_as_headings() -> None:
    source = b"# Setup\n\nRun it.\n\n```\n# not a heading\n```\n\n## Usage ##\nCall it.\n"
    assert parse(source, "a.txt") == [Block("# Setup", None, None), Block("Run it.", None, None),
                                      Block("```\n# not a heading\n```", None, None),
                                      Block("## Usage ##\nCall it.", None, None)]
    assert parse(source, "a.md") == [Block("Run it.", None, "Setup"), Block("```\n# not a heading\n```", None, "Setup"),
                                     Block("Call it.", None, "Usage")]


def test_an_underline_after_a_paragraph_line_is_not_a_heading() -> None:
    assert parse(b"one line\nTitle\n-----\nrest\n", "a.md") == [Block("one line\nTitle\n-----\nrest", None, None)]


def test_text_encodings() -> None:
    assert parse("café ☕".encode("utf-8-sig"), "a.txt") == [Block("café ☕", None, None)]
    assert parse(codecs.BOM_UTF16_LE + "naïve".encode("utf-16-le"), "a.txt") == [Block("naïve", None, None)]
    assert parse("Größe – 5 €".encode("cp1252"), "a.txt") == [Block("Größe – 5 €", None, None)]


# -- HTML -------------------------------------------------------------------------------
PAGE = b"""<!DOCTYPE html><html><head><title>The Page</title>
<style>body { color: red }</style><script>alert("x")</script></head>
<body><p>Intro &amp; more   text</p>
<h2>Section <em>two</em></h2><div>Inside<br>the div</div><noscript>enable js</noscript>
<pre>  keep
    spaces</pre><script type="module">import x from "y"</script></body></html>"""


def test_html_drops_scripts_and_styles_and_keeps_headings() -> None:
    assert parse(PAGE, "page.html") == [
        Block("Intro & more text", None, "The Page"),
        Block("Inside\nthe div", None, "Section two"),
        Block("  keep\n    spaces", None, "Section two"),
    ]


def test_html_is_sniffed_by_its_tags_whatever_the_name() -> None:
    assert sniff(PAGE, "notes.txt") == "html"
    assert parse(PAGE, "notes.txt") == parse(PAGE, "page.html")
    assert sniff(b"<p>hi</p>", "a.md") == "html"
    assert sniff(b"a <p> in the middle", "a.html") == "text"  # the tag must open the file
    assert sniff(b"<?xml version='1.0'?>\n<html><body>x</body></html>", "a") == "html"


def test_html_without_closing_head_or_heading_loses_nothing() -> None:
    assert parse(b"<html><head><title>T</title><body><p>Body text", "a.html") == [Block("Body text", None, "T")]
    assert parse(b"<h1>Never closed<p>and text", "a.html") == [Block("Never closed and text", None, None)]


def test_html_of_only_scripts_has_no_text() -> None:
    with pytest.raises(NoText):
        parse(b"<html><script>while(1){}</script><style>p{}</style></html>", "evil.html")


# -- PDF --------------------------------------------------------------------------------
def test_pdf_text_layer_with_page_numbers_and_outline_headings() -> None:
    data = docmake.pdf([["Hello (world)", "second line"], [], ["Third page text"]],
                       outline=[("Intro", 0), ("End", 2)])
    assert sniff(data, "scan.txt") == "pdf"
    assert parse(data, "scan.txt") == [Block("Hello (world)\nsecond line", 1, "Intro"),
                                       Block("Third page text", 3, "End")]


def test_pdf_with_only_an_owner_password_opens() -> None:
    assert parse(docmake.pdf([["open to read"]], owner_password="pw"), "a.pdf") == [Block("open to read", 1, None)]


def test_pdf_with_a_user_password_is_refused() -> None:
    with pytest.raises(EncryptedPdf, match="password"):
        parse(docmake.pdf([["secret"]], user_password="pw"), "a.pdf")


@pytest.mark.parametrize("cut", ["garbage", "truncated", "bytes"])
def test_corrupt_pdf(cut: str) -> None:
    good = docmake.pdf([["some text"]] * 3)
    data = {"garbage": b"%PDF-1.4\nthis is not a pdf", "truncated": good[: len(good) // 2],
            "bytes": b"%PDF-1.7\n" + bytes(range(256)) * 20}[cut]
    with pytest.raises(CorruptPdf) as caught:
        parse(data, "a.pdf")
    assert caught.value.code == "corrupt_pdf"


def test_pdf_without_text_layer() -> None:
    with pytest.raises(NoText, match="OCR"):
        parse(docmake.pdf([[], []]), "scan.pdf")


# -- DOCX -------------------------------------------------------------------------------
def test_docx_headings_from_styles_paragraphs_and_tables() -> None:
    data = docmake.docx([("title", "My Doc"), ("p", "Intro para."), ("h1", "Chapter 1"), ("p", "Body one."),
                         ("table", "a|b\nc|d"), ("h2", "Sub"), ("p", "Deep.")])
    assert sniff(data, "report.pdf") == "docx"  # the content wins over the name
    assert parse(data, "report.pdf") == [Block("Intro para.", None, "My Doc"), Block("Body one.", None, "Chapter 1"),
                                         Block("a | b\nc | d", None, "Chapter 1"), Block("Deep.", None, "Sub")]


def test_docx_zip_bomb_is_refused_before_unpacking() -> None:
    bomb = docmake.zip_bomb(64 << 20)
    assert len(bomb) < 200_000  # 64 MiB of zeros in well under 200 kB
    with pytest.raises(ZipBomb, match="word/document.xml"):
        parse(bomb, "cute.docx")


def test_docx_over_the_unpacked_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    data = docmake.docx([("p", "x" * 5000)])
    total = sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(data)).infolist())
    monkeypatch.setattr(formats, "ZIP_MAX_UNPACKED", total - 1)
    with pytest.raises(ZipBomb, match="limit"):
        parse(data, "a.docx")
    monkeypatch.setattr(formats, "ZIP_MAX_UNPACKED", total)
    assert parse(data, "a.docx") == [Block("x" * 5000, None, None)]


def test_docx_with_too_many_members() -> None:
    members = {f"word/media/{i}.bin": b"" for i in range(formats.ZIP_MAX_MEMBERS + 1)}
    with pytest.raises(ZipBomb, match="files"):
        parse(docmake.zip_of({"word/document.xml": b"<x/>", **members}), "a.docx")


def test_a_member_lying_about_its_size_cannot_unpack_further() -> None:
    """The premise of check_zip: CPython's zipfile stops at the declared size and then
    fails the CRC, so declared sizes bound what python-docx can unpack."""
    data = bytearray(docmake.zip_of({"word/document.xml": b"A" * 100_000}))
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = (1000).to_bytes(4, "little")  # claims 1,000 bytes unpacked
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        with pytest.raises(zipfile.BadZipFile, match="CRC"):
            archive.read("word/document.xml")
    with pytest.raises(CorruptDocx):
        parse(bytes(data), "a.docx")


def test_other_zips_are_named_and_refused() -> None:
    with pytest.raises(UnsupportedFormat, match="Excel"):
        parse(docmake.zip_of({"xl/workbook.xml": b"<w/>"}), "sheet.docx")
    with pytest.raises(UnsupportedFormat, match="zip archive"):
        parse(docmake.zip_of({"readme.txt": b"hi"}), "a.docx")
    with pytest.raises(CorruptDocx):
        parse(b"PK\x03\x04" + b"\x00" * 100, "a.docx")
    with pytest.raises(CorruptDocx):  # a zip with word/document.xml that is not a Word package
        parse(docmake.zip_of({"word/document.xml": b"<not-word/>"}), "a.docx")


# -- refusals ---------------------------------------------------------------------------
def test_binary_with_a_txt_name() -> None:
    with pytest.raises(BinaryContent, match="PNG image"):
        parse(b"\x89PNG\r\n\x1a\n" + b"IHDR text-like rest", "notes.txt")  # the signature decides
    rng = random.Random(1)
    noise = bytes(rng.randrange(256) for _ in range(4000))
    with pytest.raises(BinaryContent, match="binary data"):
        parse(noise, "notes.txt")
    with pytest.raises(BinaryContent, match="gzip"):
        parse(b"\x1f\x8b" + noise, "notes.md")
    with pytest.raises(BinaryContent):
        parse(b"plain text\x00with a NUL", "notes.txt")
    with pytest.raises(BinaryContent, match="control characters"):
        parse(("text " + "\x01\x02" * 50).encode(), "notes.txt")


def test_empty_and_whitespace() -> None:
    with pytest.raises(EmptyDocument, match="0 bytes"):
        parse(b"", "a.txt")
    with pytest.raises(EmptyDocument, match="whitespace"):
        parse(b" \n\t\r\n", "a.txt")
    with pytest.raises(EmptyDocument):
        sniff(b"", "a.pdf")


def test_too_large_is_checked_before_anything_else() -> None:
    with pytest.raises(TooLarge, match="11 bytes, over the limit of 10"):
        parse(b"%PDF-broken", "a.pdf", max_bytes=10)
    assert parse(b"0123456789", "a.txt", max_bytes=10) == [Block("0123456789", None, None)]


def test_error_codes_are_distinct_and_all_value_errors() -> None:
    kinds = [EmptyDocument, TooLarge, BinaryContent, UnsupportedFormat, EncryptedPdf, CorruptPdf, CorruptDocx,
             ZipBomb, NoText]
    assert len({k.code for k in kinds}) == len(kinds)
    assert all(issubclass(k, DocumentError) and issubclass(k, ValueError) for k in kinds)


@settings(max_examples=150, deadline=None)
@given(data=st.one_of(st.binary(max_size=3000), st.binary(max_size=500).map(lambda b: b"%PDF-1.4\n" + b),
                      st.binary(max_size=500).map(lambda b: b"PK\x03\x04" + b),
                      st.text(max_size=500).map(str.encode)),
       name=st.sampled_from(["a.txt", "a.md", "a.html", "a.pdf", "a.docx"]))
def test_any_bytes_give_blocks_or_a_document_error(data: bytes, name: str) -> None:
    try:
        blocks = parse(data, name)
    except DocumentError as e:
        assert str(e)
        return
    assert blocks and all(b.text.strip() for b in blocks)

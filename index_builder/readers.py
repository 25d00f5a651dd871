"""Reading one source file: plain text as it is, HTML's visible text, a PDF page by page.

A file is screened before it is read: a text file must be UTF-8 without NUL bytes (an ELF
binary named ``ls.txt`` or random bytes in ``blob.md`` are not text), a PDF must start like one.
A reader stops at the first limit it meets (``InvalidRequest`` with a reason that names it):
a PDF of more pages than ``Limits.pdf_pages`` is refused before any page is read, one whose
pages' content streams decompress to more than ``Limits.file_bytes``, or one of whose pages to
more than ``Limits.page_content_bytes``, before any is parsed (the parsing, not the size on
disk, is what takes the time), and text extraction stops as soon as
the file has given more than ``Limits.file_chars`` characters.

PDFs are read with pypdf as LlamaIndex's ``PDFReader`` reads them (a part per page, labelled
``page_label``), without its three retries of a file that failed; HTML is read by
``html_text``, not by ``HTMLTagReader``, which indexes scripts and hidden elements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from functions.errors import InvalidRequest

from .html_text import visible_text
from .limits import Limits

__all__ = ["SUPPORTED_EXTENSIONS", "Part", "read_file", "screen"]

SUPPORTED_EXTENSIONS = (".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".pdf")
_TEXT_EXTENSIONS = frozenset({".txt", ".md", ".markdown", ".rst", ".html", ".htm"})
_PDF_MAGIC = b"%PDF-"

Part = tuple[str, dict[str, str]]  # text, and what the reader adds to the file's metadata


def screen(path: Path) -> str | None:
    """Why ``path`` cannot be a document of its kind, or None when it looks like one."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        with path.open("rb") as handle:
            head = handle.read(1024)
        return None if _PDF_MAGIC in head else "not a PDF (no %PDF- header)"
    if suffix in _TEXT_EXTENSIONS:
        data = path.read_bytes()
        if b"\0" in data:
            return "binary content (NUL bytes), not text"
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"not UTF-8 text (invalid byte at offset {exc.start})"
    return None


def read_file(path: Path, limits: Limits) -> list[Part]:
    """The text of a screened file, in parts (a PDF's pages); ``InvalidRequest`` past a limit."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _pdf_pages(path, limits)
    text = path.read_bytes().decode("utf-8")
    if suffix in (".html", ".htm"):
        text = visible_text(text, limits.file_chars, limits.too_much_text())
    if len(text) > limits.file_chars:
        raise InvalidRequest(limits.too_much_text())
    return [(text, {})]


def _pdf_pages(path: Path, limits: Limits) -> list[Part]:
    from pypdf import PdfReader

    pdf = PdfReader(path)
    if reason := limits.too_many_pages(len(pdf.pages)):
        raise InvalidRequest(reason)
    content = 0
    for number, page in enumerate(pdf.pages, start=1):
        stream = page.get_contents()
        size = len(stream.get_data()) if stream is not None else 0
        if size > limits.page_content_bytes:
            raise InvalidRequest(limits.page_too_large(number))
        content += size
        if content > limits.file_bytes:
            raise InvalidRequest(limits.content_too_large())
    labels = pdf.page_labels
    parts: list[Part] = []
    chars = extracted = 0  # the file's so far, and the page's so far

    def count(text: str, *_: Any) -> None:
        # Called for each piece of text as it is extracted: a page that repeats a line a
        # million times is stopped here, not after its text has been built.
        nonlocal extracted
        extracted += len(text)
        if chars + extracted > limits.file_chars:
            raise InvalidRequest(limits.too_much_text())

    for number, page in enumerate(pdf.pages):
        extracted = 0
        text = page.extract_text(visitor_text=count)
        chars += len(text)
        if chars > limits.file_chars:
            raise InvalidRequest(limits.too_much_text())
        parts.append((text, {"page_label": labels[number]}))
    return parts

"""How much a build may read: bytes, PDF pages and characters of text per file, chunks per build.

Documents come from uploaders the builder cannot trust, and a small file can expand a long way:
a 17 KB PDF whose content stream repeats a line makes 40 MB of text. A file over a per-file
limit is unreadable (skipped with its reason, or failing the build under ``--on-unreadable
fail``); a build over the chunk limit fails before anything is embedded. Each reason names the
limit and the variable that sets it.

The defaults are generous for real documents: a text PDF measured here holds about 7.3 KB and
1,960 characters a page, so 2,000 pages are about 15 MB and 4 M characters.
"""

from __future__ import annotations

from dataclasses import dataclass

from .progress import human_bytes

__all__ = ["MIB", "Limits"]

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """The builder's limits; the defaults are those of ``Settings`` (``RAG_MAX_FILE_MB``...)."""

    file_bytes: int = 50 * MIB
    pdf_pages: int = 2_000
    file_chars: int = 5_000_000
    chunks: int = 1_000_000
    # pypdf parses a page's whole content stream before it gives any text, in a time that grows
    # faster than its size (measured here with one line drawn over and over: 0.55 MB 0.65 s,
    # 1.1 MB 1.45 s, 2.2 MB 3.6 s, 11 MB 111 s). A page of text holds about 7 KB.
    page_content_bytes: int = 2 * MIB

    def file_too_large(self, size: int) -> str | None:
        """Why a file of ``size`` bytes is not read, or None."""
        if size <= self.file_bytes:
            return None
        return (
            f"{human_bytes(size)}, over the limit of {human_bytes(self.file_bytes)} per file "
            "(--max-file-mb, RAG_MAX_FILE_MB)"
        )

    def content_too_large(self) -> str:
        """Why a PDF whose pages decompress to more than the per-file limit is not read."""
        return (
            f"its pages decompress to more than {human_bytes(self.file_bytes)}, the limit per "
            "file (--max-file-mb, RAG_MAX_FILE_MB)"
        )

    def page_too_large(self, page: int) -> str:
        """Why a PDF with a page whose content decompresses to too much is not read."""
        return (
            f"page {page}'s content decompresses to more than "
            f"{human_bytes(self.page_content_bytes)}, the limit per page (its text would take "
            "too long to extract)"
        )

    def too_many_pages(self, pages: int) -> str | None:
        """Why a PDF of ``pages`` pages is not read, or None."""
        if pages <= self.pdf_pages:
            return None
        return (
            f"{pages:,} pages, over the limit of {self.pdf_pages:,} per PDF "
            "(--max-pdf-pages, RAG_MAX_PDF_PAGES)"
        )

    def too_much_text(self) -> str:
        """Why a file with more text than the limit is not indexed."""
        return (
            f"more than {self.file_chars:,} characters of text, the limit per file "
            "(--max-file-chars, RAG_MAX_FILE_CHARS)"
        )

    def too_many_chunks(self, chunks: int, documents: int, of: int) -> str:
        """Why a build of more chunks than the limit stops before embedding anything."""
        return (
            f"the documents make more than {self.chunks:,} chunks, the limit per build "
            f"(--max-chunks, RAG_MAX_CHUNKS): {chunks:,} from the first {documents:,} of "
            f"{of:,} documents; nothing was embedded"
        )

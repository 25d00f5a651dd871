"""Reading source documents from a folder or an S3 prefix with LlamaIndex's readers.

Plain text, Markdown and reStructuredText are read as text, HTML through ``HTMLTagReader`` (the
``<body>``), PDF through ``PDFReader`` (a document per page); none of them touches the network.
Every document carries a ``source`` (its path relative to the folder, or its ``s3://`` URI) and
an id derived from it, so ids are stable from one build to the next.

Files are screened before a reader sees them: a text file must be UTF-8 without NUL bytes (an
ELF binary named ``ls.txt`` or random bytes in ``blob.md`` are not text), a PDF must start like
one. A file that fails the screen or its reader is unreadable: with ``on_unreadable="skip"``
(the default) it is left out with a warning that names it, and counted in the progress report
(``Progress.skipped``, hence the summary table and the ``index.published`` event); with
``"fail"`` the build stops there, naming the file and the reader's reason.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from llama_index.core import Document, SimpleDirectoryReader

from functions.errors import ConfigurationError, InvalidRequest
from functions.storage import open_store

from .progress import Progress

__all__ = ["SUPPORTED_EXTENSIONS", "OnUnreadable", "load_documents", "screen"]

logger = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".pdf")
_TEXT_EXTENSIONS = frozenset({".txt", ".md", ".markdown", ".rst", ".html", ".htm"})
_PDF_MAGIC = b"%PDF-"

OnUnreadable = Literal["skip", "fail"]


def load_documents(
    source: str, progress: Progress | None = None, *, on_unreadable: OnUnreadable = "skip"
) -> list[Document]:
    """Every readable document under a folder or an ``s3://bucket/prefix``."""
    progress = progress or Progress(bars=False)
    if source.startswith("s3://"):
        store = open_store(source)
        with tempfile.TemporaryDirectory(prefix="rag-source-") as tmp:
            root = Path(tmp)
            wanted = [
                item
                for item in store.list_objects("")
                if item.key.lower().endswith(SUPPORTED_EXTENSIONS)
            ]
            with progress.phase("download", sum(i.size for i in wanted), "B") as phase:
                for item in wanted:
                    store.fetch(item.key, root / item.key, size=item.size, block_size=1 << 30)
                    phase.update(item.size)
            return _read(root, f"{source.rstrip('/')}/", progress, on_unreadable)
    root = Path(source)
    if not root.is_dir():
        raise ConfigurationError(f"source {source!r} is not a folder or an s3:// prefix")
    return _read(root, "", progress, on_unreadable)


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


def _read(
    root: Path, label_prefix: str, progress: Progress, on_unreadable: OnUnreadable
) -> list[Document]:
    from llama_index.readers.file import HTMLTagReader

    root = root.resolve()
    # Hidden files and folders below the source are skipped; the source itself may live under a
    # hidden folder (LlamaIndex's own check would skip every file of ~/.cache/docs).
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and path.suffix.lower() in SUPPORTED_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    if not files:
        raise ConfigurationError(f"no {', '.join(SUPPORTED_EXTENSIONS)} files under the source")

    def label(path: Path) -> str:
        return label_prefix + path.resolve().relative_to(root).as_posix()

    def metadata(path: str) -> dict[str, Any]:
        file = Path(path)
        return {
            "source": label(file),
            "file_name": file.name,
            "file_type": file.suffix.lower().lstrip("."),
        }

    html = HTMLTagReader(tag="body")
    extractors: dict[str, Any] = {".html": html, ".htm": html}
    documents: list[Document] = []
    with progress.phase("reading", len(files), "files") as phase:
        for path in files:
            reason = screen(path)
            if reason is None:
                try:
                    documents.extend(
                        SimpleDirectoryReader.load_file(
                            input_file=path,
                            file_metadata=metadata,
                            file_extractor=extractors,
                            raise_on_error=True,
                        )
                    )
                except Exception as exc:  # the reader's own error: name it, no traceback
                    reason = _reason(exc)
            if reason is not None:
                if on_unreadable == "fail":
                    raise InvalidRequest(f"could not read {label(path)}: {reason}")
                logger.warning("skipped %s: %s", label(path), reason)
                progress.skipped.append((label(path), reason))
            phase.update(1)
        phase.notes.append(f"{len(documents)} documents")
        if progress.skipped:
            phase.notes.append(f"{len(progress.skipped)} skipped")
    seen: Counter[str] = Counter()
    for document in documents:
        source = document.metadata["source"]
        document.id_ = source if seen[source] == 0 else f"{source}#{seen[source]}"
        seen[source] += 1
        # Keep the embedded text to the document's own words: ids and file types are for filters.
        document.excluded_embed_metadata_keys = list(document.metadata)
        document.excluded_llm_metadata_keys = ["file_type"]
    return documents


def _reason(exc: BaseException) -> str:
    """The reader's own error behind LlamaIndex's "Error loading file" (and tenacity's retries:
    PDFReader tries three times)."""
    cause = exc.__cause__ or exc
    last = getattr(cause, "last_attempt", None)
    if last is not None and last.exception() is not None:
        cause = last.exception()
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__

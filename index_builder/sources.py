"""Reading source documents from a folder or an S3 prefix with LlamaIndex's readers.

Plain text, Markdown and reStructuredText are read as text, HTML through ``HTMLTagReader`` (the
``<body>``), PDF through ``PDFReader`` (a document per page); none of them touches the network.
Every document carries a ``source`` (its path relative to the folder, or its ``s3://`` URI) and
an id derived from it, so ids are stable from one build to the next.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from llama_index.core import Document, SimpleDirectoryReader

from functions.errors import ConfigurationError, InvalidRequest
from functions.storage import open_store

from .progress import Progress

__all__ = ["SUPPORTED_EXTENSIONS", "load_documents"]

SUPPORTED_EXTENSIONS = (".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".pdf")


def load_documents(source: str, progress: Progress | None = None) -> list[Document]:
    """Every supported document under a folder or an ``s3://bucket/prefix``."""
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
            return _read(root, f"{source.rstrip('/')}/", progress)
    root = Path(source)
    if not root.is_dir():
        raise ConfigurationError(f"source {source!r} is not a folder or an s3:// prefix")
    return _read(root, "", progress)


def _read(root: Path, label_prefix: str, progress: Progress) -> list[Document]:
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

    def metadata(path: str) -> dict[str, Any]:
        file = Path(path)
        return {
            "source": label_prefix + file.resolve().relative_to(root).as_posix(),
            "file_name": file.name,
            "file_type": file.suffix.lower().lstrip("."),
        }

    html = HTMLTagReader(tag="body")
    reader = SimpleDirectoryReader(
        input_files=[str(path) for path in files],
        exclude_hidden=False,
        file_extractor={".html": html, ".htm": html},
        file_metadata=metadata,
        raise_on_error=True,
    )
    documents: list[Document] = []
    with progress.phase("reading", len(files), "files") as phase:
        try:
            for batch in reader.iter_data():  # one file at a time (empty ones yield nothing)
                documents.extend(batch)
                phase.update(1)
            phase.update(len(files) - phase.done)
        except Exception as exc:  # a reader failed on one file: name it, without a traceback
            raise InvalidRequest(
                f"could not read the source documents: {type(exc).__name__}: {exc}"
            ) from exc
        phase.notes.append(f"{len(documents)} documents")
    seen: Counter[str] = Counter()
    for document in documents:
        source = document.metadata["source"]
        document.id_ = source if seen[source] == 0 else f"{source}#{seen[source]}"
        seen[source] += 1
        # Keep the embedded text to the document's own words: ids and file types are for filters.
        document.excluded_embed_metadata_keys = list(document.metadata)
        document.excluded_llm_metadata_keys = ["file_type"]
    return documents

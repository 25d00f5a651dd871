"""The documents of a build: the files of a folder or of an S3 prefix, read into LlamaIndex.

Plain text, Markdown, reStructuredText, HTML and PDF are read (``readers``); none of that
touches the network. Every document carries a ``source`` (its path relative to the folder, or
its ``s3://`` URI) and an id derived from it, so ids are stable from one build to the next. Its
metadata is ``source``, ``file_name`` and ``file_type``, and a PDF page's ``page_label``: no
local path (an S3 source is read from a temporary folder) and nothing else a reader adds.

The uploaders of a source are not trusted, so a file is left out, with a warning that names it
and a reason, when

- its name is no sensible ``source``: an S3 key that is absolute or has an empty, ``.`` or
  ``..`` segment, a name with a backslash or a control character (a newline would write lines
  of its own into what the LLM is shown, and into logs); the name is shown escaped. Objects are
  downloaded to generated names (``0.pdf``, ``1.md``...), never to a path made from their key;
- it is a symbolic link (a file or a folder) in a source folder: its target is not read, not
  followed and not named. The source folder itself may be a link;
- it is over a limit (``Limits``): larger than the limit per file (an S3 object by its listed
  size, before it is downloaded), a PDF of too many pages, or more text than the limit;
- it fails its screen or its reader (binary, not UTF-8, a corrupt PDF), with the reader's reason.

With ``on_unreadable="skip"`` (the default) such a file is counted in the progress report
(``Progress.skipped``, hence the summary table and the ``index.published`` event); with
``"fail"`` the build stops at the first, naming it and the reason. Hidden files and folders
(a name starting with ``.``) are not documents and are passed over silently.
"""

from __future__ import annotations

import logging
import os
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from llama_index.core import Document

from functions.errors import ConfigurationError, InvalidRequest
from functions.storage import Store, open_store

from .limits import Limits
from .progress import Progress
from .readers import SUPPORTED_EXTENSIONS, read_file, screen

__all__ = ["SUPPORTED_EXTENSIONS", "OnUnreadable", "load_documents"]

logger = logging.getLogger(__name__)

OnUnreadable = Literal["skip", "fail"]
_Skip = Callable[[str, str], None]
# Explicit bidirectional embeddings, overrides and isolates: they reorder how a name reads.
_BIDI_CONTROLS = frozenset({"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"})


@dataclass(frozen=True)
class _File:
    path: Path  # where it is read from
    source: str  # what it is called: its path in the folder, or its s3:// URI
    name: str  # the last part of that


def load_documents(
    source: str,
    progress: Progress | None = None,
    *,
    on_unreadable: OnUnreadable = "skip",
    limits: Limits | None = None,
) -> list[Document]:
    """Every readable document under a folder or an ``s3://bucket/prefix``."""
    progress = progress or Progress(bars=False)
    limits = limits or Limits()
    skipped_before = len(progress.skipped)

    def skip(source: str, reason: str) -> None:
        if on_unreadable == "fail":
            raise InvalidRequest(f"could not read {source}: {reason}")
        logger.warning("skipped %s: %s", source, reason)
        progress.skipped.append((source, reason))

    if source.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="rag-source-") as tmp:
            files = _download(
                open_store(source), f"{source.rstrip('/')}/", Path(tmp), progress, limits, skip
            )
            return _read(files, progress, limits, skip, len(progress.skipped) > skipped_before)
    root = Path(source)
    if not root.is_dir():
        raise ConfigurationError(f"source {source!r} is not a folder or an s3:// prefix")
    files = _walk(root, skip)
    return _read(files, progress, limits, skip, len(progress.skipped) > skipped_before)


def _download(
    store: Store, prefix: str, root: Path, progress: Progress, limits: Limits, skip: _Skip
) -> list[_File]:
    """Download the documents under the store's prefix to generated names under ``root``."""
    wanted = []
    for item in sorted(store.list_objects(""), key=lambda item: item.key.split("/")):
        extension = next((e for e in SUPPORTED_EXTENSIONS if item.key.lower().endswith(e)), None)
        if extension is None:
            continue
        if problem := _key_problem(item.key):
            skip(prefix + _shown(item.key), problem)
        elif not any(part.startswith(".") for part in item.key.split("/")):
            if reason := limits.file_too_large(item.size):
                skip(prefix + item.key, reason)
            else:
                wanted.append((item, extension))
    files = []
    with progress.phase("download", sum(item.size for item, _ in wanted), "B") as phase:
        for n, (item, extension) in enumerate(wanted):
            path = root / f"{n}{extension}"
            store.fetch(item.key, path, size=item.size, block_size=1 << 30)
            files.append(_File(path, prefix + item.key, item.key.rsplit("/", 1)[-1]))
            phase.update(item.size)
    return files


def _walk(root: Path, skip: _Skip) -> list[_File]:
    """The document files under ``root``; symbolic links below it are reported, not followed."""
    files = []
    folders = [(root, "")]
    while folders:
        folder, prefix = folders.pop(0)
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            if not prefix:
                raise ConfigurationError(f"source {str(root)!r} cannot be listed") from exc
            skip(_shown(prefix.rstrip("/")), f"a folder that cannot be listed ({exc.strerror})")
            continue
        for entry in entries:
            relative = prefix + entry.name
            document = entry.name.lower().endswith(SUPPORTED_EXTENSIONS)
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                if document or entry.is_dir():  # the target's type, without reading it
                    skip(_shown(relative), "a symbolic link")
            elif entry.is_dir(follow_symlinks=False):
                if problem := _name_problem(entry.name):
                    skip(_shown(relative), problem)
                else:
                    folders.append((Path(entry.path), relative + "/"))
            elif document and entry.is_file(follow_symlinks=False):
                if problem := _name_problem(entry.name):
                    skip(_shown(relative), problem)
                else:
                    files.append(_File(Path(entry.path), relative, entry.name))
    return sorted(files, key=lambda file: file.source.split("/"))


def _read(
    files: list[_File], progress: Progress, limits: Limits, skip: _Skip, skipped: bool
) -> list[Document]:
    if not files and not skipped:
        raise ConfigurationError(f"no {', '.join(SUPPORTED_EXTENSIONS)} files under the source")
    documents: list[Document] = []
    with progress.phase("reading", len(files), "files") as phase:
        for file in files:
            try:
                reason = limits.file_too_large(file.path.lstat().st_size) or screen(file.path)
                parts = read_file(file.path, limits) if reason is None else []
            except InvalidRequest as exc:  # over a limit
                reason = exc.message
            except Exception as exc:  # the reader's own error: name it, no traceback
                reason = _reason(exc)
            if reason is not None:
                skip(file.source, reason)
                phase.update(1)
                continue
            file_type = PurePosixPath(file.name).suffix.lower().lstrip(".")
            for text, extra in parts:
                metadata = {"source": file.source, "file_name": file.name, "file_type": file_type}
                documents.append(Document(text=text, metadata={**metadata, **extra}))
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


def _key_problem(key: str) -> str | None:
    """Why an S3 key (relative to the source prefix) cannot name a document, or None."""
    if key.startswith("/"):
        return "an absolute key (it starts with /)"
    parts = key.split("/")
    if "" in parts:
        return "an empty path segment (//)"
    if dots := next((part for part in parts if part in (".", "..")), None):
        return f"a {dots!r} path segment"
    return _name_problem(key)


def _name_problem(name: str) -> str | None:
    """Why a name cannot be a ``source`` label, or None."""
    if "\\" in name:
        return "a backslash in the name"
    for char in name:
        if (
            unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp")
            or unicodedata.bidirectional(char) in _BIDI_CONTROLS
        ):
            return f"control character U+{ord(char):04X} in the name"
    return None


def _shown(name: str) -> str:
    """``name`` with what is not printable escaped, fit for one log line."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in name)


def _reason(exc: BaseException) -> str:
    """A reader's error in one line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__

"""knative-rag index builder: documents → chunks → embeddings → a versioned artifact in a store."""

from __future__ import annotations

from .build import BuildReport, build_artifact, chunk_documents
from .job import run_build
from .publish import catalog, collect_garbage, load, promote, publish
from .sources import load_documents

__all__ = [
    "BuildReport",
    "build_artifact",
    "catalog",
    "chunk_documents",
    "collect_garbage",
    "load",
    "load_documents",
    "promote",
    "publish",
    "run_build",
]

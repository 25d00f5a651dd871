"""Retrieval quality with the real all-MiniLM-L6-v2 model over the bundled docs/ corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from functions.catalog import fetch_artifact, read_manifest
from functions.loader import check_model
from functions.search import SearchIndex
from functions.storage import open_store
from index_builder.job import run_build

pytestmark = pytest.mark.semantic

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = json.loads((ROOT / "tests" / "data" / "questions.json").read_text())["questions"]


@pytest.fixture(scope="module")
def local_index(tmp_path_factory: pytest.TempPathFactory):
    from functions.embeddings import LocalEmbedder

    embedder = LocalEmbedder()
    store = open_store(str(tmp_path_factory.mktemp("store")))
    run_build(store, str(ROOT / "docs"), embedder, channel="stable", create_channel=True)
    manifest = read_manifest(store, "stable")
    artifact = fetch_artifact(store, manifest, tmp_path_factory.mktemp("cache"))
    return SearchIndex(artifact), embedder


def test_question_set_covers_every_document() -> None:
    assert len(QUESTIONS) >= 20
    assert {source for q in QUESTIONS for source in q["sources"]} == {
        p.name for p in (ROOT / "docs").glob("*.md")
    }


def test_hit_at_3_over_the_bundled_docs(local_index) -> None:
    index, embedder = local_index
    misses = []
    for item in QUESTIONS:
        hits = index.search(embedder.embed_query(item["question"]), 3)
        if not set(item["sources"]) & {hit.record.metadata["source"] for hit in hits}:
            misses.append((item["question"], [hit.record.metadata["source"] for hit in hits]))
    hit_rate = 1 - len(misses) / len(QUESTIONS)
    assert hit_rate >= 0.9, misses


def test_the_local_model_passes_its_own_probe_check(local_index) -> None:
    index, embedder = local_index
    manifest = index.artifact.manifest
    assert (manifest.embedding.provider, manifest.embedding.model, manifest.embedding.dim) == (
        "local",
        "all-MiniLM-L6-v2",
        384,
    )
    assert check_model(manifest, embedder, 0.99) > 0.999

"""An index built into a store and loaded into Elasticsearch, for the tests of the function's
Elasticsearch backend (``loaded``); each test's indexes have a prefix of their own and are deleted
at its end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from functions.settings import Settings
from index_builder.__main__ import main

from .conftest import Ollama, settings_for, write_corpus


@dataclass
class Loaded:
    """An index built into a store and loaded into Elasticsearch under a prefix of its own,
    channel ``stable`` and its alias naming it."""

    url: str
    prefix: str
    store: str
    index_id: str
    ollama: Ollama
    tmp_path: Path
    capsys: pytest.CaptureFixture[str]

    def settings(self, backend: str = "elasticsearch", **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "backend": backend,
            "elasticsearch_url": self.url,
            "elasticsearch_index_prefix": self.prefix,
            "llm_provider": "none",
            **overrides,
        }
        return settings_for(self.store, self.ollama, self.tmp_path, **values)

    def cli(self, *args: str) -> int:
        """The builder's CLI on this store and Elasticsearch."""
        return main(["--store", self.store, "--elasticsearch", self.url, *args])

    def publish(self, source: Path) -> str:
        """Build ``source``, load it, move channel stable and its alias to it; its index id."""
        self.capsys.readouterr()
        status = self.cli("build", "--source", str(source), "--channel", "stable")
        out, err = self.capsys.readouterr()
        assert status == 0, err
        return out.strip()


@pytest.fixture(name="loaded")
def loaded_fixture(
    elasticsearch_url: str,
    ollama: Ollama,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Loaded]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    for name, value in {
        "OLLAMA_HOST": ollama.url,
        "RAG_CHUNK_SIZE": "64",
        "RAG_CHUNK_OVERLAP": "8",
        "RAG_ELASTICSEARCH_INDEX_PREFIX": prefix,
        "RAG_ELASTICSEARCH_REPLICAS": "0",
    }.items():
        monkeypatch.setenv(name, value)
    store = str(tmp_path / "store")
    corpus = write_corpus(tmp_path / "corpus")
    target = ("--elasticsearch", elasticsearch_url)
    channel = ("--channel", "stable", "--create-channel")
    status = main(["--store", store, *target, "build", "--source", str(corpus), *channel])
    assert status == 0, capsys.readouterr().err
    index_id = capsys.readouterr().out.strip()
    yield Loaded(elasticsearch_url, prefix, store, index_id, ollama, tmp_path, capsys)
    with httpx.Client(base_url=elasticsearch_url, timeout=60) as es:
        found = es.get(f"/{prefix}-*").json()
        if found:
            es.delete(f"/{','.join(found)}").raise_for_status()

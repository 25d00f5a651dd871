"""An index built into a store and loaded into PostgreSQL, for the tests of the function's
PostgreSQL backend (``loaded_pg``); each test's schema is its own and is dropped at its end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from functions.settings import Settings
from index_builder.__main__ import main

from .conftest import Ollama, settings_for, write_corpus
from .postgres_server import Postgres


@dataclass
class LoadedPg:
    """An index built into a store and loaded into PostgreSQL under a schema of its own, channel
    ``stable`` and its row naming it."""

    postgres: Postgres
    schema: str
    store: str
    index_id: str
    ollama: Ollama
    tmp_path: Path
    capsys: pytest.CaptureFixture[str]

    def settings(self, backend: str = "postgres", **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "backend": backend,
            "postgres_dsn": self.postgres.dsn,
            "postgres_schema": self.schema,
            "llm_provider": "none",
            **overrides,
        }
        return settings_for(self.store, self.ollama, self.tmp_path, **values)

    def cli(self, *args: str) -> int:
        """The builder's CLI on this store and PostgreSQL."""
        return main(["--store", self.store, "--postgres", self.postgres.dsn, *args])

    def publish(self, source: Path) -> str:
        """Build ``source``, load it, move channel stable and its row to it; its index id."""
        self.capsys.readouterr()
        status = self.cli("build", "--source", str(source), "--channel", "stable")
        out, err = self.capsys.readouterr()
        assert status == 0, err
        return out.strip()


@pytest.fixture(name="loaded_pg")
def loaded_pg_fixture(
    postgres: Postgres,
    pg_schema: str,
    ollama: Ollama,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> LoadedPg:
    for name, value in {
        "OLLAMA_HOST": ollama.url,
        "RAG_CHUNK_SIZE": "64",
        "RAG_CHUNK_OVERLAP": "8",
        "RAG_POSTGRES_SCHEMA": pg_schema,
    }.items():
        monkeypatch.setenv(name, value)
    store = str(tmp_path / "store")
    corpus = write_corpus(tmp_path / "corpus")
    target = ("--postgres", postgres.dsn)
    channel = ("--channel", "stable", "--create-channel")
    status = main(["--store", store, *target, "build", "--source", str(corpus), *channel])
    assert status == 0, capsys.readouterr().err
    index_id = capsys.readouterr().out.strip()
    return LoadedPg(postgres, pg_schema, store, index_id, ollama, tmp_path, capsys)

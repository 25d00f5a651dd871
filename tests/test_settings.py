from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from functions.settings import Settings


def test_defaults() -> None:
    settings = Settings()
    assert settings.model_dump() == {
        "store_uri": None,
        "source_uri": None,
        "index": "stable",
        "backend": "artifact",
        "retrieval": "dense",
        "elasticsearch_num_candidates": 1000,
        "cache_dir": Path("/tmp/knative-rag"),
        "embed_provider": "ollama",
        "embed_model": None,
        "embed_batch_size": 32,
        "llm_provider": "ollama",
        "llm_model": "llama3.2",
        "llm_context_window": 8192,
        "llm_timeout_s": 120.0,
        "llm_max_tokens": 1024,
        "llm_max_concurrency": 8,
        "probe_min_cosine": 0.99,
        "chunk_size": None,
        "chunk_overlap": 64,
        "on_unreadable": "skip",
        "max_file_mb": 50,
        "max_pdf_pages": 2000,
        "max_file_chars": 5_000_000,
        "max_chunks": 1_000_000,
        "eval_questions": None,
        "eval_k": 10,
        "eval_metric": "mrr",
        "eval_tolerance": 0.02,
        "eval_floor": None,
        "download_concurrency": 8,
        "on_demand": "auto",
        "on_demand_probes": 16,
        "warm_search": "auto",
        "warm_probes": 96,
        "max_index_mb": None,
        "startup_timeout_s": 120.0,
        "api_keys": None,
        "api_keys_file": None,
        "oidc_issuer": None,
        "oidc_audience": None,
        "oidc_jwks_url": None,
        "oidc_ca_file": None,
        "oidc_token_file": None,
        "oidc_subjects": None,
        "oidc_timeout_s": 5.0,
        "request_timeout_s": 140.0,
        "max_body_bytes": 65536,
        "max_concurrency": 64,
        "body_timeout_s": 10.0,
        "body_idle_timeout_s": 5.0,
        "header_timeout_s": 10.0,
        "max_connections": 256,
        "reload_min_interval_s": 1.0,
        "api_gateway_base_path": "/",
        "elasticsearch_url": None,
        "elasticsearch_api_key": None,
        "elasticsearch_username": None,
        "elasticsearch_password": None,
        "elasticsearch_ca_file": None,
        "elasticsearch_index_prefix": "knative-rag",
        "elasticsearch_replicas": 1,
        "elasticsearch_timeout_s": 30.0,
        "postgres_dsn": None,
        "postgres_schema": "knative_rag",
        "postgres_pool_size": 4,
        "postgres_timeout_s": 5.0,
        "postgres_ef_search": 500,
        "log_level": "INFO",
        "log_format": "auto",
        "ollama_host": "http://127.0.0.1:11434",
        "port": 8080,
        "service": None,
        "sink": None,
        "revision": None,
    }


def test_reads_prefixed_and_ecosystem_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "RAG_STORE_URI": "s3://bucket/rag",
        "RAG_INDEX": "20261127-081500-3f2a9c1d",
        "RAG_EMBED_PROVIDER": "local",
        "RAG_LLM_PROVIDER": "none",
        "RAG_CHUNK_SIZE": "256",
        "OLLAMA_HOST": "ollama.models:11434",
        "PORT": "9090",
        "K_REVISION": "rag-query-00002",
        "RAG_OLLAMA_HOST": "ignored",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.store_uri, settings.index, settings.embed_provider, settings.llm_provider) == (
        "s3://bucket/rag",
        "20261127-081500-3f2a9c1d",
        "local",
        "none",
    )
    assert (settings.chunk_size, settings.ollama_host, settings.port, settings.revision) == (
        256,
        "ollama.models:11434",
        9090,
        "rag-query-00002",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RAG_EMBED_PROVIDER", "openai"),
        ("RAG_LLM_PROVIDER", "gpt"),
        ("PORT", "http"),
        ("RAG_PROBE_MIN_COSINE", "2"),
        ("RAG_API_GATEWAY_BASE_PATH", "prod"),
    ],
    ids=["provider", "llm", "port", "cosine", "base-path-without-slash"],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_readme_documents_every_variable() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        variable = alias.choices[0] if alias is not None else f"RAG_{name.upper()}"  # type: ignore[union-attr]
        assert f"| `{variable}` |" in table, variable

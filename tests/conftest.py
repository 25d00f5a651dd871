"""Shared fixtures: moto's S3 server and the Ollama double on loopback, corpora, settings."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from moto.server import ThreadedMotoServer

from functions.artifact import Artifact
from functions.catalog import fetch_artifact
from functions.embeddings import OllamaEmbedder
from functions.logs import Redactor
from functions.settings import Settings
from functions.storage import open_store
from index_builder.job import run_build
from scripts.elasticsearch import EXIT_UNAVAILABLE

from .ollama_double import OllamaDouble
from .servers import serve

if TYPE_CHECKING:
    from .postgres_server import Postgres

# Tests never reach a real AWS account or a developer's ~/.aws.
for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}.items():
    os.environ[_name] = _value
# The Elasticsearch fixture's own variables, kept aside before the RAG_* variables are dropped.
_ELASTICSEARCH_ENV = {
    name: os.environ[name] for name in ("RAG_TEST_ES_URL", "RAG_ES_CACHE") if name in os.environ
}
# libpq's PG* variables too: a developer's PGHOST or PGPASSWORD never reaches a test's server.
for _name in [name for name in os.environ if name.startswith(("RAG_", "PG"))] + [
    "AWS_PROFILE",
    "OLLAMA_HOST",
]:
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """Entrypoints called in-process (the builder's main) configure logging for a process; undo
    that after each test so that no test sees another's handler, redaction filter or hooks."""
    levels = {name: logging.getLogger(name).level for name in ("", "functions", "index_builder")}
    hooks = threading.excepthook, sys.excepthook
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__module__ == "functions.logs":  # the entrypoint's stderr handler
            root.removeHandler(handler)
        for redactor in [f for f in handler.filters if isinstance(f, Redactor)]:
            handler.removeFilter(redactor)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    threading.excepthook, sys.excepthook = hooks


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server over real HTTP on a free loopback port; boto3 finds it through the env."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = url
    yield url
    server.stop()


@pytest.fixture
def s3_uri(s3_endpoint: str) -> str:
    """A fresh bucket; returns ``s3://<bucket>/rag``."""
    bucket = f"rag-{uuid.uuid4().hex[:16]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/rag"


@dataclass
class Ollama:
    """The running double and its URL."""

    double: OllamaDouble
    url: str


@pytest.fixture(scope="session")
def _ollama_server() -> Iterator[Ollama]:
    double = OllamaDouble()
    with serve(double.app) as url:
        yield Ollama(double, url)


@pytest.fixture
def ollama(_ollama_server: Ollama) -> Ollama:
    """The Ollama double, reset for this test."""
    _reset(_ollama_server.double)
    return _ollama_server


def _reset(double: OllamaDouble) -> None:
    double.latency_s = 0.0
    double.token_latency_s = 0.0
    double.chat_latency_s = 0.0
    double.streams_finished = double.streams_abandoned = 0
    double.chats_running = double.chats_abandoned = 0
    double.fail_embed = False
    double.fail_next = 0
    double.embedded.clear()
    double.chats.clear()


def write_corpus(root: Path, documents: int = 6, paragraphs: int = 3) -> Path:
    """A small corpus of Markdown files with distinct, deterministic text."""
    root.mkdir(parents=True, exist_ok=True)
    topics = ["rivers", "volcanoes", "glaciers", "deserts", "forests", "reefs", "tundra", "canyons"]
    for d in range(documents):
        topic = topics[d % len(topics)]
        body = [f"# Notes on {topic} {d}"]
        for p in range(paragraphs):
            body.append(
                f"Paragraph {p} about {topic} number {d}. "
                + " ".join(f"The {topic} fact {d}-{p}-{s} is recorded here." for s in range(12))
            )
        (root / f"doc-{d}.md").write_text("\n\n".join(body) + "\n")
    return root


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A folder of six Markdown documents."""
    return write_corpus(tmp_path / "corpus")


def settings_for(
    store_uri: str, ollama: Ollama, tmp_path: Path, /, **overrides: object
) -> Settings:
    """Settings for a function that reads ``store_uri`` and talks to the double."""
    values: dict[str, object] = {
        "store_uri": store_uri,
        "index": "stable",
        "cache_dir": tmp_path / "cache",
        "embed_provider": "ollama",
        "llm_provider": "ollama",
        "OLLAMA_HOST": ollama.url,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def build_index(store_uri: str, ollama: Ollama, source: Path, channel: str | None = "stable"):
    """Build ``source`` with the double's nomic-embed-text in small chunks, publish it, move
    ``channel``; returns the manifest."""
    return run_build(
        open_store(store_uri),
        str(source),
        OllamaEmbedder("nomic-embed-text", ollama.url),
        channel=channel,
        create_channel=True,
        chunk_size=64,
        chunk_overlap=8,
    )


def function_env(store_uri: str, ollama: Ollama, tmp_path: Path) -> dict[str, str]:
    """The environment of a ``python -m functions`` process serving ``store_uri`` (retrieve)."""
    return {
        **os.environ,
        "RAG_STORE_URI": store_uri,
        "RAG_CACHE_DIR": str(tmp_path / "cache"),
        "OLLAMA_HOST": ollama.url,
        "RAG_LLM_PROVIDER": "none",
    }


@dataclass(frozen=True)
class Published:
    """An index built by the builder and published to a fresh bucket in moto (module scope)."""

    store_uri: str
    index_id: str
    artifact: Artifact


@pytest.fixture(scope="module")
def published(
    s3_endpoint: str, _ollama_server: Ollama, tmp_path_factory: pytest.TempPathFactory
) -> Published:
    _reset(_ollama_server.double)  # a previous module's test may have left it failing
    bucket = f"rag-{uuid.uuid4().hex[:16]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    store_uri = f"s3://{bucket}/rag"
    source = write_corpus(tmp_path_factory.mktemp("corpus"), documents=5)
    manifest = build_index(store_uri, _ollama_server, source)
    artifact = fetch_artifact(open_store(store_uri), manifest, tmp_path_factory.mktemp("reference"))
    return Published(store_uri, manifest.index_id, artifact)


_ELASTICSEARCH_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "elasticsearch.py"


def _elasticsearch(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(_ELASTICSEARCH_SCRIPT), command],
        env={**os.environ, **_ELASTICSEARCH_ENV},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="session")
def elasticsearch_url() -> Iterator[str]:
    """A real Elasticsearch: ``RAG_TEST_ES_URL``, a running ``scripts/elasticsearch.py`` server
    (left running), or one that script starts for this session and stops after it. Skipped where
    the script cannot get one (no Java, no Maven, no download), failed instead when
    ``REQUIRE_ELASTICSEARCH_TESTS`` is set."""
    if url := _ELASTICSEARCH_ENV.get("RAG_TEST_ES_URL"):
        yield url.rstrip("/")
        return
    running = _elasticsearch("url")
    if running.returncode == 0:
        yield running.stdout.strip()
        return
    started = _elasticsearch("start")
    if started.returncode != 0:
        said = started.stderr.strip()[-3000:]
        reason = f"no Elasticsearch: scripts/elasticsearch.py start said\n{said}"
        if started.returncode != EXIT_UNAVAILABLE:
            pytest.fail(reason, pytrace=False)
        if os.environ.get("REQUIRE_ELASTICSEARCH_TESTS"):
            pytest.fail(f"{reason}\nbut REQUIRE_ELASTICSEARCH_TESTS is set", pytrace=False)
        pytest.skip(reason)
    try:
        yield started.stdout.strip()
    finally:
        _elasticsearch("stop")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL 16 with pgvector (the pgserver wheel) on a loopback port, for the
    session (tests/postgres_server.py)."""
    from .postgres_server import start_postgres

    # Outside pytest's own temporary folder: pgserver opens the folders above the data folder
    # to the system user it runs as, and another pytest run starting meanwhile closes
    # /tmp/pytest-of-<user> again (mode 0700), which left this server unstoppable.
    folder = Path(tempfile.mkdtemp(prefix="knative-rag-pg-"))
    found = start_postgres(folder / "data")
    try:
        yield found
        found.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_schema(postgres: Postgres) -> Iterator[str]:
    """A PostgreSQL schema of this test's own, dropped at its end."""
    schema = f"t{uuid.uuid4().hex[:12]}"
    yield schema
    postgres.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

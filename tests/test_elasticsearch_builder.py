"""The builder's Elasticsearch target against the real server (scripts/elasticsearch.py): load,
the mapping and its _meta, retrieval through LlamaIndex's ElasticsearchStore, channels as
aliases, lost races, killed loaders, gc and failures. Each test names its indexes with a prefix
of its own and deletes them at its end."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from functions.artifact import Manifest
from functions.catalog import fetch_artifact, read_channel, read_manifest
from functions.embeddings import OllamaEmbedder
from functions.search import SearchIndex
from functions.storage import open_store
from index_builder import elastic
from index_builder.__main__ import main
from index_builder.publish import promote

from .conftest import Ollama, write_corpus
from .servers import Gate, kill_when_held, serve

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Builder:
    """The builder's CLI in this process, on this test's store, corpus and index prefix."""

    capsys: pytest.CaptureFixture[str]
    es: httpx.Client
    url: str
    prefix: str
    store: str
    corpus: Path
    env: dict[str, str]

    def cli(self, *args: str) -> tuple[int, str, str]:
        status = main(["--store", self.store, *args])
        out, err = self.capsys.readouterr()
        return status, out, err

    def build(self, *args: str, source: Path | None = None) -> str:
        status, out, err = self.cli("build", "--source", str(source or self.corpus), *args)
        assert status == 0, err
        return out.strip()

    def manifest(self, index_id: str) -> Manifest:
        return read_manifest(open_store(self.store), index_id)

    def channel(self) -> str:
        return read_channel(open_store(self.store), "stable")[0].index_id

    def aliased(self) -> list[str]:
        """The index ids whose indexes hold the alias of channel stable."""
        response = self.es.get(f"/_alias/{self.prefix}-stable")
        found = [] if response.status_code == 404 else response.json()
        return sorted(name.removeprefix(f"{self.prefix}-") for name in found)


@pytest.fixture
def builder(
    elasticsearch_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ollama: Ollama,
    corpus: Path,
    tmp_path: Path,
) -> Iterator[Builder]:
    """The Ollama double, small chunks, a prefix of this test's own and no replicas; every
    index under the prefix is deleted after the test."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    env = {
        "OLLAMA_HOST": ollama.url,
        "RAG_CHUNK_SIZE": "64",
        "RAG_CHUNK_OVERLAP": "8",
        "RAG_ELASTICSEARCH_INDEX_PREFIX": prefix,
        "RAG_ELASTICSEARCH_REPLICAS": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with httpx.Client(base_url=elasticsearch_url, timeout=60) as es:
        yield Builder(capsys, es, elasticsearch_url, prefix, str(tmp_path / "store"), corpus, env)
        found = es.get(f"/{prefix}-*").json()
        if found:  # by name: the server refuses to delete by wildcard
            es.delete(f"/{','.join(found)}").raise_for_status()


def test_load_creates_the_explicit_mapping_and_a_second_load_changes_nothing(
    builder: Builder,
) -> None:
    index_id = builder.build()
    status, out, err = builder.cli("--elasticsearch", builder.url, "load", index_id)
    name = f"{builder.prefix}-{index_id}"
    assert (status, out) == (0, f"{name}\n"), err
    assert "elasticsearch" in err  # a phase of the summary table

    manifest = builder.manifest(index_id)
    body = builder.es.get(f"/{name}").json()[name]
    mappings, settings = body["mappings"], body["settings"]["index"]
    assert mappings["properties"]["embedding"] == {
        "type": "dense_vector",  # element_type float is the default, not echoed
        "dims": manifest.embedding.dim,
        "similarity": "dot_product",
        "index": True,
        "index_options": {"type": "hnsw", "m": 16, "ef_construction": 100},
    }
    assert mappings["properties"]["content"] == {"type": "text"}
    assert mappings["_source"] == {"excludes": ["embedding"]}  # searched, never read back
    metadata = mappings["properties"]["metadata"]["properties"]
    keyword = {"type": "keyword", "fields": {"keyword": {"type": "keyword"}}}
    assert [metadata[key] for key in ("source", "file_name", "file_type")] == [keyword] * 3
    assert metadata["ref_doc_id"] == {"type": "keyword"}
    stored = (Path(builder.store) / "indexes" / index_id / "manifest.json").read_bytes()
    string = {"type": "keyword", "shape": "scalar", "empty_list": False, "folds_to_ascii": False}
    assert mappings["_meta"] == {
        "index_id": index_id,
        "format_version": manifest.format_version,
        "created_at": manifest.created_at.isoformat(),
        "builder_version": manifest.builder_version,
        "embedding": manifest.embedding.model_dump(),
        "chunking": manifest.chunking.model_dump(),
        "counts": manifest.counts.model_dump(),
        "probe": manifest.probe.model_dump(),
        "manifest_sha256": hashlib.sha256(stored).hexdigest(),
        # what functions.es_filters translates filters from: each key's type and shape
        "metadata": {key: string for key in ("file_name", "file_type", "source")},
    }
    assert (settings["number_of_replicas"], settings["blocks"]) == ("0", {"write": "true"})
    assert "refresh_interval" not in settings  # restored to the default after the load
    assert builder.es.get(f"/{name}/_count").json()["count"] == manifest.counts.chunks

    status, out, err = builder.cli("--elasticsearch", builder.url, "load", index_id)
    assert (status, out) == (0, f"{name}\n")
    assert f"{index_id} was loaded already" in err
    assert builder.es.get(f"/{name}").json()[name]["settings"]["index"]["uuid"] == settings["uuid"]


_RETRIEVE = """
import asyncio, json, sys
from elasticsearch import AsyncElasticsearch
from llama_index.core.vector_stores.types import VectorStoreQuery
from llama_index.vector_stores.elasticsearch import ElasticsearchStore

url, index, queries = json.load(sys.stdin)

async def retrieve():
    client = AsyncElasticsearch(url)
    store = ElasticsearchStore(index_name=index, es_client=client)
    found = []
    for query in queries:
        result = await store.aquery(VectorStoreQuery(query_embedding=query, similarity_top_k=10))
        found.append([[n.node_id, n.get_content(), n.metadata, n.ref_doc_id] for n in result.nodes])
    await client.close()
    return found

print(json.dumps(asyncio.run(retrieve())))
"""


def test_elasticsearch_store_retrieves_what_the_artifact_search_finds(
    builder: Builder, ollama: Ollama, tmp_path: Path
) -> None:
    """Top 10 through ElasticsearchStore, by the channel's alias (kNN, k=10, num_candidates=100
    as it asks, hnsw), equal the artifact's exact top 10: the same nodes in the same order, with
    their texts, metadata and document ids. LlamaIndex patches asyncio when the store is made,
    so it runs in a process of its own."""
    target = ("--elasticsearch", builder.url, "--channel", "stable", "--create-channel")
    manifest = builder.manifest(builder.build(*target))
    search = SearchIndex(fetch_artifact(open_store(builder.store), manifest, tmp_path / "cache"))
    embedder = OllamaEmbedder("nomic-embed-text", ollama.url)
    questions = ["rivers number 0", "volcanoes fact", "The glaciers fact 2-1-3", "deserts", "x"]
    queries = [embedder.embed_query(question) for question in questions]
    done = subprocess.run(
        [sys.executable, "-c", _RETRIEVE],
        input=json.dumps([builder.url, f"{builder.prefix}-stable", [q.tolist() for q in queries]]),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    expected = [
        [
            [h.record.id, h.record.text, h.record.metadata, h.record.doc_id]
            for h in search.search(q, 10)
        ]
        for q in queries
    ]
    search.close()
    assert json.loads(done.stdout) == expected
    assert manifest.counts.chunks > 10


def test_a_channel_is_an_alias_that_each_build_moves(builder: Builder) -> None:
    target = ("--elasticsearch", builder.url, "--channel", "stable")
    first = builder.build(*target, "--create-channel")
    assert builder.aliased() == [first]
    (builder.corpus / "doc-0.md").write_text("# New\n\nA changed first document.\n")
    second = builder.build(*target)
    assert builder.aliased() == [second]
    assert builder.es.head(f"/{builder.prefix}-{first}").status_code == 200  # kept until gc

    status, out, _ = builder.cli("--elasticsearch", builder.url, "list")
    assert status == 0
    lines = {line.split()[1]: line for line in out.splitlines()}
    assert lines["stable"].endswith(f"alias -> {second}")
    chunks = [builder.manifest(index_id).counts.chunks for index_id in (first, second)]
    assert lines[first].endswith(f"elasticsearch: {chunks[0]} docs")
    assert lines[second].endswith(f"elasticsearch: {chunks[1]} docs [stable]")


def test_gc_deletes_what_no_alias_names_and_the_store_does_not_keep(builder: Builder) -> None:
    target = ("--elasticsearch", builder.url)
    first = builder.build(*target, "--channel", "stable", "--create-channel")
    (builder.corpus / "doc-0.md").write_text("# New\n\nA changed first document.\n")
    second = builder.build(*target)  # loaded, no channel
    name = f"{builder.prefix}-{second}"
    assert builder.cli(*target, "gc", "--keep", "2")[:2] == (0, "")  # the store keeps both
    assert builder.cli(*target, "gc", "--keep", "0", "--dry-run")[:2] == (
        0,
        f"would delete {second}\nwould delete elasticsearch {name}\n",
    )
    assert builder.cli(*target, "gc", "--keep", "0")[:2] == (
        0,
        f"deleted {second}\ndeleted elasticsearch {name}\n",
    )
    assert list(builder.es.get(f"/{builder.prefix}-*").json()) == [f"{builder.prefix}-{first}"]


def test_a_lost_race_leaves_the_alias_where_it_was(
    builder: Builder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another publisher moves the channel while this build loads its index: the build's
    compare-and-swap loses (exit 3), and the alias is not touched."""
    target = ("--elasticsearch", builder.url)
    first = builder.build(*target, "--channel", "stable", "--create-channel")
    other = builder.build(*target, source=write_corpus(tmp_path / "other", documents=2))
    real_load = elastic.Cluster.load

    def load_then_lose_the_race(self: elastic.Cluster, *args: Any) -> bool:
        loaded = real_load(self, *args)
        promote(open_store(builder.store), "stable", other)  # the other one, in the store only
        return loaded

    monkeypatch.setattr(elastic.Cluster, "load", load_then_lose_the_race)
    (builder.corpus / "doc-0.md").write_text("# New\n\nA changed first document.\n")
    status, out, err = builder.cli(
        *target, "build", "--source", str(builder.corpus), "--channel", "stable"
    )
    assert (status, out) == (3, ""), err
    assert err.splitlines()[-1].endswith(
        "/channels/stable.json changed since it was read "
        "(another publisher moved it first; nothing was overwritten)"
    )
    assert "Traceback" not in err
    assert (builder.channel(), builder.aliased()) == (other, [first])


@pytest.mark.parametrize(
    "hold",
    [r"^PUT /_bulk$", r"^PUT /[^/]+/_settings$"],
    ids=["mid-bulk", "after-the-last-document"],
)
def test_a_killed_loader_leaves_no_alias_on_a_half_loaded_index(
    builder: Builder, hold: str
) -> None:
    """``promote`` (load, then the channel, then the alias) is killed with SIGKILL while a proxy
    holds its first bulk request, or the settings request after its last document: the channel
    and the alias stay on the old index; the next load deletes the incomplete index and loads
    it again."""
    target = ("--elasticsearch", builder.url)
    first = builder.build(*target, "--channel", "stable", "--create-channel")
    (builder.corpus / "doc-0.md").write_text("# New\n\nA changed first document.\n")
    second = builder.build()  # published, not loaded
    gate = Gate(builder.url, hold)
    with serve(gate) as gate_url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "index_builder", "--store", builder.store, "--elasticsearch",
             gate_url, "promote", "--channel", "stable", "--index", second],
            env={**os.environ, **builder.env}, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        kill_when_held(gate, proc)
    name = f"{builder.prefix}-{second}"
    assert (builder.channel(), builder.aliased()) == (first, [first])
    assert "blocks" not in builder.es.get(f"/{name}").json()[name]["settings"]["index"]

    assert builder.cli(*target, "load", "stable")[:2] == (
        0,
        f"{builder.prefix}-{first}\nalias {builder.prefix}-stable -> {builder.prefix}-{first}\n",
    )
    status, _, err = builder.cli(*target, "promote", "--channel", "stable", "--index", second)
    assert status == 0, err
    assert builder.aliased() == [second]
    chunks = builder.manifest(second).counts.chunks
    assert builder.es.get(f"/{name}/_count").json()["count"] == chunks


def _secured_double() -> Starlette:
    """A double of an Elasticsearch with security on that takes no credentials: its 401."""

    async def refuse(request: Request) -> JSONResponse:
        cause = {
            "type": "security_exception",
            "reason": f"unable to authenticate user [builder] for {request.url.path}",
        }
        return JSONResponse(
            {"error": {**cause, "root_cause": [cause]}, "status": 401},
            status_code=401,
            headers={"WWW-Authenticate": "Basic", "X-Elastic-Product": "Elasticsearch"},
        )

    methods = ["GET", "HEAD", "PUT", "POST", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", refuse, methods=methods)])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", ["build", "promote"])
@pytest.mark.parametrize("failure", ["unreachable", "401"])
def test_an_elasticsearch_failure_is_one_line_and_moves_no_channel(
    builder: Builder,
    monkeypatch: pytest.MonkeyPatch,
    ollama: Ollama,
    tmp_path: Path,
    command: str,
    failure: str,
) -> None:
    monkeypatch.setenv("RAG_ELASTICSEARCH_USERNAME", "builder")
    monkeypatch.setenv("RAG_ELASTICSEARCH_PASSWORD", "hunter2-in-the-env")
    first = builder.build("--channel", "stable", "--create-channel")
    second = builder.build(source=write_corpus(tmp_path / "other", documents=2))
    embedded = len(ollama.double.embedded)
    with serve(_secured_double()) as double_url:
        url = f"http://127.0.0.1:{_closed_port()}" if failure == "unreachable" else double_url
        url = url.replace("//", "//elastic:hunter3-in-the-url@")
        args = {
            "build": ["build", "--source", str(builder.corpus), "--channel", "stable"],
            "promote": ["promote", "--channel", "stable", "--index", second],
        }[command]
        status, out, err = builder.cli("--elasticsearch", url, *args)
    assert (status, out, err.count("\n")) == (1, "", 1), err
    title, said = {
        "unreachable": (
            "Elasticsearch unavailable",
            "is unreachable ([Errno 111] Connection refused) while trying to read",
        ),
        "401": ("Elasticsearch error", "refused the credentials (401) while trying to read"),
    }[failure]
    assert err.startswith(f"error: {title}: http://[REDACTED]@127.0.0.1:")
    assert said in err
    assert "hunter" not in err
    assert builder.channel() == first  # loading comes before the compare-and-swap
    assert len(ollama.double.embedded) == embedded  # a build fails before embedding anything


def test_a_channel_named_like_an_index_id_has_no_alias(builder: Builder) -> None:
    index_id = "20990101-000000-deadbeef"
    Path(builder.store).mkdir()
    status, _, err = builder.cli(
        "--elasticsearch", builder.url, "promote", "--channel", index_id, "--index", index_id
    )
    assert (status, err) == (
        1,
        f"error: Configuration error: channel '{index_id}' is named like an index id: its "
        "Elasticsearch alias would be the name of an index\n",
    )

"""The query function with RAG_BACKEND=postgres against a real PostgreSQL with pgvector: built
with the builder, loaded into PostgreSQL, served with nothing downloaded; compared with the
artifact backend on the same index, and with LlamaIndex's own ``PGVectorStore`` reading the
loaded table. Each test has a schema of its own, dropped at its end."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import numpy as np
from llama_index.core.vector_stores.types import VectorStoreQuery
from llama_index.vector_stores.postgres import PGVectorStore

from functions.app import create_app
from functions.composition import compose
from functions.postgres import table_name

from .conftest import write_corpus
from .loaded_postgres import LoadedPg, loaded_pg_fixture  # noqa: F401 - the fixture
from .servers import serve
from .test_elastic_backend import wait_ready
from .test_events import event, send


def test_the_loader_serves_from_postgres_what_the_artifact_serves(loaded_pg: LoadedPg) -> None:
    loader = compose(loaded_pg.settings())
    pg, artifact = loader.load(), compose(loaded_pg.settings("artifact")).load()
    assert pg.index_id == artifact.index_id == loaded_pg.index_id
    assert len(pg.index) == len(artifact.index)
    for query in ("lakes and rivers of the north", "volcanoes", "reefs of the south"):
        got, want = pg.retrieve(query, 5, {}), artifact.retrieve(query, 5, {})
        assert [s.id for s in got.sources] == [s.id for s in want.sources]
        assert np.allclose(
            [s.score for s in got.sources], [s.score for s in want.sources], atol=1e-5
        )
        assert [(s.text, s.metadata) for s in got.sources] == [
            (s.text, s.metadata) for s in want.sources
        ]
    name = want.sources[1].metadata["file_name"]
    got = pg.retrieve("rivers", 10, {"file_name": name})
    want = artifact.retrieve("rivers", 10, {"file_name": name})
    assert [s.id for s in got.sources] == [s.id for s in want.sources]
    assert {s.metadata["file_name"] for s in got.sources} == {name}
    loader.close()


def test_llamaindex_pgvectorstore_reads_the_loaded_table(loaded_pg: LoadedPg) -> None:
    """The table is PGVectorStore's own layout: the stock store (SQLAlchemy, psycopg2, its own
    SQL and node conversion; cosine distance, so an exact scan) finds what ours finds."""
    loader = compose(loaded_pg.settings())
    service = loader.load()
    searcher = service.index
    dim = searcher.manifest.embedding.dim
    stock = PGVectorStore.from_params(
        connection_string=loaded_pg.postgres.dsn.replace("postgresql://", "postgresql+psycopg2://"),
        async_connection_string=loaded_pg.postgres.dsn.replace(
            "postgresql://", "postgresql+asyncpg://"
        ),
        table_name=loaded_pg.index_id.replace("-", "_"),
        schema_name=loaded_pg.schema,
        embed_dim=dim,
        use_jsonb=True,
        perform_setup=False,
    )
    assert stock._table_class.__tablename__ == table_name(loaded_pg.index_id)
    rng = np.random.default_rng(3)
    for _ in range(5):
        vector = rng.standard_normal(dim)
        vector /= np.linalg.norm(vector)
        theirs = stock.query(VectorStoreQuery(query_embedding=vector.tolist(), similarity_top_k=7))
        ours = searcher.search(vector, 7)
        assert theirs.ids == [hit.record.id for hit in ours]
        assert np.allclose(theirs.similarities, [hit.score for hit in ours], atol=1e-5)
        assert theirs.nodes is not None
        for node, hit in zip(theirs.nodes, ours, strict=True):
            assert node.get_content() == hit.record.text
            assert node.metadata == hit.record.metadata
            assert node.ref_doc_id == hit.record.doc_id
    stock._engine.dispose()
    loader.close()


def test_the_function_answers_over_http_with_the_index_id(loaded_pg: LoadedPg) -> None:
    with serve(create_app(loaded_pg.settings())) as url, httpx.Client(base_url=url) as client:
        ready = wait_ready(client)
        assert ready["index_id"] == loaded_pg.index_id
        response = client.post("/query", json={"query": "lakes", "mode": "retrieve"})
        assert response.status_code == 200, response.text
        assert response.headers["x-index-id"] == loaded_pg.index_id
        assert len(response.json()["sources"]) == 5  # top_k's default
        answer = client.post("/query", json={"query": "lakes", "mode": "answer"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["answer_type"] == "extractive"


def test_a_pointer_swap_under_a_query_loop_fails_no_request(loaded_pg: LoadedPg) -> None:
    """The channel moves (store, then its row) while four clients query; index.published makes
    the function read the row again. Every request succeeds, on the old index or the new."""
    served: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()
    with serve(create_app(loaded_pg.settings())) as url, httpx.Client(base_url=url) as client:
        assert wait_ready(client)["index_id"] == loaded_pg.index_id

        def ask() -> None:
            with httpx.Client(base_url=url, timeout=30) as own:
                while not stop.is_set():
                    response = own.post("/query", json={"query": "rivers", "mode": "retrieve"})
                    if response.status_code != 200:
                        failures.append(response.text)
                    index_id = response.headers.get("x-index-id", "")
                    served[index_id] = served.get(index_id, 0) + 1

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        second = loaded_pg.publish(write_corpus(loaded_pg.tmp_path / "second", documents=3))
        published = event("dev.knative-rag.index.published", {"index_id": second}, id="p1")
        assert send(client, published).status_code == 202
        deadline = time.monotonic() + 30
        while wait_ready(client)["index_id"] != second:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # some queries on the new index too
        stop.set()
        for thread in threads:
            thread.join()
        assert wait_ready(client)["reloads"] == {"succeeded": 1}
    assert failures == []
    assert set(served) == {loaded_pg.index_id, second}


def test_a_pinned_revision_keeps_its_index_when_the_channel_moves(loaded_pg: LoadedPg) -> None:
    pinned = compose(loaded_pg.settings(index=loaded_pg.index_id))
    following = compose(loaded_pg.settings())
    assert pinned.load().index_id == following.load().index_id == loaded_pg.index_id
    second = loaded_pg.publish(write_corpus(loaded_pg.tmp_path / "second", documents=3))
    assert pinned.request_reload() is False
    assert following.request_reload() is True
    deadline = time.monotonic() + 30
    while following.reloads["succeeded"] != 1:
        assert time.monotonic() < deadline, following.reloads
        time.sleep(0.05)
    assert (pinned.require().index_id, following.require().index_id) == (
        loaded_pg.index_id,
        second,
    )
    assert pinned.require().retrieve("rivers", 3, {}).index_id == loaded_pg.index_id
    pinned.close()
    following.close()


def test_chat_and_streamed_answers_run_the_llamaindex_engines_on_postgres(
    loaded_pg: LoadedPg,
) -> None:
    settings = loaded_pg.settings(llm_provider="ollama")
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        answer = client.post("/query", json={"query": "Which facts about lakes?", "top_k": 3})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["answer_type"] == "generated"
        assert len(body["sources"]) == 3
        assert -1 <= body["sources"][0]["score"] <= 1  # cosine similarities, as the artifact's
        filtered = client.post(
            "/query", json={"query": "lakes", "top_k": 3, "filters": {"file_name": "doc-2.md"}}
        )
        assert filtered.status_code == 200, filtered.text
        assert {s["metadata"]["file_name"] for s in filtered.json()["sources"]} == {"doc-2.md"}
        chat = client.post(
            "/chat",
            json={
                "messages": [
                    {"role": "user", "content": "Tell me about lakes."},
                    {"role": "assistant", "content": "Lakes are recorded [1]."},
                    {"role": "user", "content": "And rivers?"},
                ]
            },
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["sources"]
        assert chat.headers["x-index-id"] == loaded_pg.index_id
        with client.stream(
            "POST",
            "/query",
            json={"query": "glaciers", "top_k": 2},
            headers={"Accept": "text/event-stream"},
        ) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("event: ")]
            assert stream.headers["x-index-id"] == loaded_pg.index_id
        assert (events[0], events[-1]) == ("event: token", "event: end")


_RETRIEVE_ALONE = """
import sys
from functions.composition import compose
from functions.settings import Settings
loader = compose(Settings(llm_provider="none"))
service = loader.load()
sources = service.retrieve("rivers", 3, {}).sources
loader.close()
imported = {name.split(".")[0] for name in sys.modules}
print(len(sources), sorted(imported & {"llama_index", "sqlalchemy", "psycopg2", "asyncpg"}))
"""


def test_retrieve_mode_imports_neither_llamaindex_nor_sqlalchemy(loaded_pg: LoadedPg) -> None:
    """The cold start and retrieve mode talk to PostgreSQL with psycopg alone; answer mode
    imports LlamaIndex (and its store's SQLAlchemy) after readiness."""
    env = {
        "PATH": "/usr/bin:/bin",
        "RAG_BACKEND": "postgres",
        "RAG_POSTGRES_DSN": loaded_pg.postgres.dsn,
        "RAG_POSTGRES_SCHEMA": loaded_pg.schema,
        "OLLAMA_HOST": loaded_pg.ollama.url,
    }
    done = subprocess.run(
        [sys.executable, "-c", _RETRIEVE_ALONE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "3 []"


def test_top_k_beyond_ef_search_and_beyond_pgvector_s_limit(loaded_pg: LoadedPg) -> None:
    """A top k above RAG_POSTGRES_EF_SEARCH raises ef_search for that statement (else HNSW would
    return fewer); above 1,000 (pgvector's limit) the search is exact: every chunk, scored and
    ordered as the artifact's."""
    loader = compose(loaded_pg.settings(postgres_ef_search=3))
    pg = loader.load()
    artifact_loader = compose(loaded_pg.settings("artifact"))
    artifact = artifact_loader.load()
    assert len(pg.retrieve("rivers", 8, {}).sources) == 8
    everything = len(artifact.index)
    got = pg.index.search(artifact.embedder.embed_query("rivers"), 1500)
    want = artifact.index.search(artifact.embedder.embed_query("rivers"), 1500)
    assert len(got) == len(want) == everything
    assert {hit.record.id for hit in got} == {hit.record.id for hit in want}
    assert np.allclose([hit.score for hit in got], [hit.score for hit in want], atol=1e-5)
    loader.close()
    artifact_loader.close()

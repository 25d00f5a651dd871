"""The query function with RAG_BACKEND=elasticsearch against the real server: built with the
builder, loaded into Elasticsearch, served with nothing downloaded; compared with the artifact
backend on the same index. Each test names its indexes with a prefix of its own and deletes them
at its end."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import numpy as np

from functions.app import create_app
from functions.composition import compose

from .conftest import write_corpus
from .loaded_elasticsearch import Loaded, loaded_fixture  # noqa: F401 - the fixture
from .servers import serve
from .test_events import event, send


def wait_ready(client: httpx.Client, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (response := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.05)
    return response.json()  # type: ignore[no-any-return]


def test_the_loader_serves_from_elasticsearch_what_the_artifact_serves(loaded: Loaded) -> None:
    loader = compose(loaded.settings())
    elastic, artifact = loader.load(), compose(loaded.settings("artifact")).load()
    assert elastic.index_id == artifact.index_id == loaded.index_id
    assert len(elastic.index) == len(artifact.index)
    query = "lakes and rivers of the north"
    got, want = elastic.retrieve(query, 5, {}), artifact.retrieve(query, 5, {})
    assert [s.id for s in got.sources] == [s.id for s in want.sources]
    assert np.allclose([s.score for s in got.sources], [s.score for s in want.sources], atol=1e-5)
    assert [(s.text, s.metadata) for s in got.sources] == [
        (s.text, s.metadata) for s in want.sources
    ]
    name = want.sources[1].metadata["file_name"]
    got = elastic.retrieve(query, 10, {"file_name": name})
    want = artifact.retrieve(query, 10, {"file_name": name})
    assert [s.id for s in got.sources] == [s.id for s in want.sources]
    assert {s.metadata["file_name"] for s in got.sources} == {name}
    loader.close()


def test_the_function_answers_over_http_with_the_index_id(loaded: Loaded) -> None:
    with serve(create_app(loaded.settings())) as url, httpx.Client(base_url=url) as client:
        deadline = time.monotonic() + 30
        while (ready := client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.05)
        assert ready.json()["index_id"] == loaded.index_id
        response = client.post("/query", json={"query": "lakes", "mode": "retrieve"})
        assert response.status_code == 200, response.text
        assert response.headers["x-index-id"] == loaded.index_id
        assert len(response.json()["sources"]) == 5  # top_k's default
        answer = client.post("/query", json={"query": "lakes", "mode": "answer"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["answer_type"] == "extractive"


def test_an_alias_swap_under_a_query_loop_fails_no_request(loaded: Loaded) -> None:
    """The channel moves (store, then alias) while four clients query; index.published makes
    the function re-read the alias. Every request succeeds, on the old index or the new."""
    served: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()
    with serve(create_app(loaded.settings())) as url, httpx.Client(base_url=url) as client:
        assert wait_ready(client)["index_id"] == loaded.index_id

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
        second = loaded.publish(write_corpus(loaded.tmp_path / "second", documents=3))
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
    assert set(served) == {loaded.index_id, second}


def test_a_pinned_revision_keeps_its_index_when_the_alias_moves(loaded: Loaded) -> None:
    pinned, following = compose(loaded.settings(index=loaded.index_id)), compose(loaded.settings())
    assert pinned.load().index_id == following.load().index_id == loaded.index_id
    second = loaded.publish(write_corpus(loaded.tmp_path / "second", documents=3))
    assert pinned.request_reload() is False
    assert following.request_reload() is True
    deadline = time.monotonic() + 30
    while following.reloads["succeeded"] != 1:
        assert time.monotonic() < deadline, following.reloads
        time.sleep(0.05)
    assert (pinned.require().index_id, following.require().index_id) == (loaded.index_id, second)
    assert pinned.require().retrieve("rivers", 3, {}).index_id == loaded.index_id
    pinned.close()
    following.close()


def test_chat_and_streamed_answers_run_the_llamaindex_engines_on_elasticsearch(
    loaded: Loaded,
) -> None:
    settings = loaded.settings(llm_provider="ollama")
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        answer = client.post("/query", json={"query": "Which facts about lakes?", "top_k": 3})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["answer_type"] == "generated"
        assert len(body["sources"]) == 3
        assert -1 <= body["sources"][0]["score"] <= 1  # cosine similarities, as the artifact's
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
        assert chat.headers["x-index-id"] == loaded.index_id
        with client.stream(
            "POST",
            "/query",
            json={"query": "glaciers", "top_k": 2},
            headers={"Accept": "text/event-stream"},
        ) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("event: ")]
            assert stream.headers["x-index-id"] == loaded.index_id
        assert (events[0], events[-1]) == ("event: token", "event: end")


def test_hybrid_retrieval_adds_bm25_to_knn(loaded: Loaded) -> None:
    dense_loader = compose(loaded.settings())
    dense = dense_loader.load()
    hybrid_loader = compose(loaded.settings(retrieval="hybrid"))
    hybrid = hybrid_loader.load()
    query = "glaciers"  # a word of the corpus: BM25 scores the chunks that hold it
    by_words = hybrid.retrieve(query, 5, {})
    by_vectors = dense.retrieve(query, 5, {})
    assert all("glaciers" in source.text for source in by_words.sources)
    assert by_words.sources[0].score > 1  # kNN's (1 + cos) / 2 plus BM25's, as Elasticsearch
    assert [s.id for s in by_words.sources] != [s.id for s in by_vectors.sources]
    filtered = hybrid.retrieve(query, 10, {"file_name": "doc-1.md"})
    assert {s.metadata["file_name"] for s in filtered.sources} == {"doc-1.md"}
    hybrid_loader.close()
    dense_loader.close()
    assert json.dumps([s.score for s in by_words.sources])  # plain floats


_RETRIEVE_ALONE = """
import sys
from functions.composition import compose
from functions.settings import Settings
loader = compose(Settings(llm_provider="none"))
service = loader.load()
sources = service.retrieve("rivers", 3, {}).sources
loader.close()
imported = {name.split(".")[0] for name in sys.modules}
print(len(sources), sorted(imported & {"llama_index", "nest_asyncio"}))
"""


def test_retrieve_mode_does_not_import_llamaindex(loaded: Loaded) -> None:
    """The cold start and retrieve mode talk to Elasticsearch without LlamaIndex (over a second
    of imports); answer mode imports it after readiness."""
    env = {
        "PATH": "/usr/bin:/bin",
        "RAG_BACKEND": "elasticsearch",
        "RAG_ELASTICSEARCH_URL": loaded.url,
        "RAG_ELASTICSEARCH_INDEX_PREFIX": loaded.prefix,
        "OLLAMA_HOST": loaded.ollama.url,
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

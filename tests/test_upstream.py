"""What keeps working when the model server fails at query time: Ollama down, only the chat
model missing or slow, and the local embedder with Ollama down."""

from __future__ import annotations

import socket
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from functions.settings import Settings
from functions.storage import open_store
from index_builder.job import run_build

from .conftest import Ollama, Published, settings_for, write_corpus
from .ollama_double import OllamaDouble
from .servers import serve
from .test_app import function, is_problem, wait_ready


def test_embedding_server_failure_at_query_time_is_503(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        wait_ready(client)
        ollama.double.fail_embed = True
        response = client.post("/query", json={"query": "x", "mode": "retrieve"})
    assert is_problem(response, 503)
    assert (response.json()["title"], response.headers["retry-after"]) == (
        "Model server unavailable",
        "1",
    )


def test_llm_down_or_slow_fails_answer_mode_cleanly_while_retrieve_works(
    published: Published, ollama: Ollama, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with function(
        settings_for(published.store_uri, ollama, tmp_path, llm_model="missing-llm")
    ) as client:
        wait_ready(client)
        down = client.post("/query", json={"query": "x", "mode": "answer"})
        retrieve = client.post("/query", json={"query": "x", "mode": "retrieve"})
    assert is_problem(down, 503)
    assert down.headers["retry-after"] == "1"
    # The client is not told about the model server; the operator is, in one log line.
    assert down.json()["detail"] == "Model server unavailable; the details are in the logs"
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("POST")] == [
        "POST /query: 503 Model server unavailable: the LLM failed to answer: ResponseError: "
        "model 'missing-llm' not found (status code: 404)"
    ]
    assert retrieve.status_code == 200
    with function(settings_for(published.store_uri, ollama, tmp_path, llm_timeout_s=0.5)) as client:
        wait_ready(client)
        ollama.double.latency_s = 1.5
        slow = client.post("/query", json={"query": "x", "mode": "answer"})
    assert is_problem(slow, 504)
    assert slow.headers["retry-after"] == "1"
    assert slow.json()["title"] == "Model server timed out"


def _outcomes(client: httpx.Client) -> dict[str, int]:
    chat = {"messages": [{"role": "user", "content": "facts about rivers?"}]}
    return {
        "retrieve": client.post("/query", json={"query": "rivers", "mode": "retrieve"}).status_code,
        "answer": client.post("/query", json={"query": "rivers", "mode": "answer"}).status_code,
        "chat": client.post("/chat", json=chat).status_code,
    }


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        # Query embeddings come from Ollama too: with it gone, nothing is answered.
        ("server-down", {"retrieve": 503, "answer": 503, "chat": 503}),
        # /api/embed works, the chat model does not: retrieve mode keeps working.
        ("chat-model-missing", {"retrieve": 200, "answer": 503, "chat": 503}),
        ("chat-too-slow", {"retrieve": 200, "answer": 504, "chat": 504}),
    ],
    ids=["server-down", "chat-model-missing", "chat-too-slow"],
)
def test_what_still_works_when_ollama_fails_at_query_time(
    published: Published, tmp_path: Path, fault: str, expected: dict[str, int]
) -> None:
    """The default configuration (Ollama embeddings, Ollama LLM), Ollama failing after start-up."""
    double = OllamaDouble()
    with ExitStack() as ollama_server:
        url = ollama_server.enter_context(serve(double.app))
        overrides: dict[str, object] = {
            "server-down": {},
            "chat-model-missing": {"llm_model": "missing-llm"},
            "chat-too-slow": {"llm_timeout_s": 0.5},
        }[fault]
        settings = settings_for(published.store_uri, Ollama(double, url), tmp_path, **overrides)
        with function(settings) as client:
            assert wait_ready(client).status_code == 200
            if fault == "server-down":
                ollama_server.close()  # connections refused from now on
            if fault == "chat-too-slow":
                double.latency_s = 1.5  # each embedding and chat answer: over the LLM's 0.5 s
            outcomes = _outcomes(client)
    assert outcomes == expected


@pytest.mark.semantic
def test_with_local_embeddings_retrieve_mode_survives_ollama_down(tmp_path: Path) -> None:
    """RAG_EMBED_PROVIDER=local: query embeddings are made in-process, so only answers need
    Ollama."""
    from functions.embeddings import LocalEmbedder

    store = str(tmp_path / "store")
    corpus = write_corpus(tmp_path / "corpus", documents=3, paragraphs=2)
    run_build(
        open_store(store), str(corpus), LocalEmbedder(), channel="stable", create_channel=True
    )
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}"
    values: dict[str, object] = {
        "store_uri": store,
        "cache_dir": tmp_path / "cache",
        "embed_provider": "local",
        "llm_provider": "ollama",
        "OLLAMA_HOST": down,
    }
    with function(Settings(**values)) as client:  # type: ignore[arg-type]
        assert wait_ready(client, timeout=120).status_code == 200
        outcomes = _outcomes(client)
    assert outcomes == {"retrieve": 200, "answer": 503, "chat": 503}

"""Streamed answers (Server-Sent Events, read by a real SSE client), citations and stateless chat,
through a real uvicorn, with the Ollama double streaming NDJSON over HTTP."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from .conftest import Ollama, Published, settings_for
from .test_app import function, is_problem, wait_ready

EVENTS = {"Accept": "text/event-stream"}


def events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[ServerSentEvent]:
    with connect_sse(client, "POST", path, json=body, headers=EVENTS) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return list(source.iter_sse())


def test_an_answer_streams_token_by_token_and_ends_with_its_sources(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        wait_ready(client)
        received = events(client, "/query", {"query": "facts about rivers", "top_k": 3})
        plain = client.post("/query", json={"query": "facts about rivers", "top_k": 3}).json()
    *tokens, end = received
    assert [e.event for e in tokens] == ["token"] * len(tokens)
    assert len(tokens) > 3  # the double streams word by word
    assert end.event == "end"
    final = end.json()
    assert final["answer"] == "".join(e.json()["text"] for e in tokens)
    assert final["answer"].startswith("DOUBLE ANSWER")
    assert final == plain  # the same answer as without streaming
    assert final["answer_type"] == "generated"
    assert final["index_id"] == published.index_id
    assert len(final["sources"]) == 3
    # The double cites [1] when it is shown numbered sources: the citation names source 1.
    assert final["answer"].rstrip().endswith("[1]")
    assert final["cited"] == [final["sources"][0]["id"]]
    assert not final["sources"][0]["text"].startswith("<source")  # delimiters are not content


def test_retrieve_and_extractive_modes_stream_too(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    settings = settings_for(published.store_uri, ollama, tmp_path, llm_provider="none")
    with function(settings) as client:
        wait_ready(client)
        retrieved = events(client, "/query", {"query": "rivers", "mode": "retrieve"})
        extractive = events(client, "/query", {"query": "rivers facts"})
    assert [e.event for e in retrieved] == ["end"]
    assert retrieved[0].json()["answer"] is None
    assert retrieved[0].json()["cited"] == []
    assert [e.event for e in extractive] == ["token", "end"]
    final = extractive[-1].json()
    assert final["answer_type"] == "extractive"
    assert final["answer"] == extractive[0].json()["text"]
    # An extractive answer cites the sources its sentences came from.
    assert final["cited"]
    assert set(final["cited"]) <= {source["id"] for source in final["sources"]}


@pytest.mark.parametrize(
    ("path", "body"),
    [("/query", {"query": "rivers"}), ("/chat", {"messages": [{"role": "user", "content": "x"}]})],
)
def test_a_client_that_goes_away_stops_the_llm(
    published: Published, ollama: Ollama, tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    ollama.double.token_latency_s = 0.2  # about 3 s for the whole answer
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        wait_ready(client)
        with connect_sse(client, "POST", path, json=body, headers=EVENTS) as source:
            first = next(source.iter_sse())
            assert first.event == "token"
        # The response is closed after one token: the function must stop reading from Ollama,
        # which is how Ollama learns to stop generating.
        deadline = time.monotonic() + 10
        while ollama.double.streams_abandoned == 0:
            assert time.monotonic() < deadline, "the LLM stream was not abandoned"
            time.sleep(0.05)
        assert ollama.double.streams_finished == 0
        # and the function is fine afterwards, with no thread left reading the LLM
        assert client.post("/query", json={"query": "rivers", "mode": "retrieve"}).is_success
        assert not [t for t in threading.enumerate() if t.name == "sse-pump"]


def test_a_stream_that_cannot_start_is_a_plain_problem(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    settings = settings_for(published.store_uri, ollama, tmp_path, llm_model="missing-llm")
    with function(settings) as client:
        wait_ready(client)
        response = client.post("/query", json={"query": "rivers"}, headers=EVENTS)
    assert is_problem(response, 503)
    assert response.headers["retry-after"] == "1"


CONVERSATION = [
    {"role": "user", "content": "Tell me about rivers."},
    {"role": "assistant", "content": "Rivers are recorded in the notes [1]."},
    {"role": "user", "content": "Which fact number is recorded?"},
]


def test_chat_condenses_the_history_the_client_sends(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        wait_ready(client)
        response = client.post("/chat", json={"messages": CONVERSATION, "top_k": 2})
        streamed = events(client, "/chat", {"messages": CONVERSATION, "top_k": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["answer_type"] == "generated"
    assert len(body["sources"]) == 2
    assert body["cited"] == [body["sources"][0]["id"]]
    assert response.headers["x-index-id"] == published.index_id
    # LlamaIndex's condense-plus-context engine: one call to condense the conversation into a
    # question (it sees the history), one to answer from the numbered sources: the
    # instructions, the conversation, then the sources and the last message in the user's turn.
    condense, answer = ollama.double.chats[-4:-2]  # the streamed request made two more
    condense_prompt = json.dumps(condense["messages"])
    assert "Tell me about rivers." in condense_prompt
    assert "Which fact number is recorded?" in condense_prompt
    assert [m["role"] for m in answer["messages"]] == ["system", "user", "assistant", "user"]
    assert answer["messages"][-1]["content"].startswith('Sources:\n\n<source id="1"')
    assert streamed[-1].event == "end"
    assert streamed[-1].json()["answer"] == "".join(e.json()["text"] for e in streamed[:-1])


def test_chat_without_an_llm_answers_the_last_message_extractively(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    settings = settings_for(published.store_uri, ollama, tmp_path, llm_provider="none")
    with function(settings) as client:
        wait_ready(client)
        response = client.post("/chat", json={"messages": CONVERSATION})
    assert response.status_code == 200
    assert response.json()["answer_type"] == "extractive"
    assert response.json()["cited"]


@pytest.mark.parametrize(
    ("messages", "where"),
    [
        ([], "messages"),
        ([{"role": "assistant", "content": "hello"}], "the last message must be the user's"),
        ([{"role": "user", "content": "x"}] * 21, "messages"),
        ([{"role": "system", "content": "x"}], "role"),
        ([{"role": "user", "content": "x" * 4097}], "content"),
    ],
    ids=["empty", "ends-with-assistant", "too-long", "system-role", "huge-message"],
)
def test_chat_refuses_bad_conversations(
    published: Published, ollama: Ollama, tmp_path: Path, messages: list[Any], where: str
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        wait_ready(client)
        response = client.post("/chat", json={"messages": messages})
    assert is_problem(response, 422)
    assert where in json.dumps(response.json()["errors"])


def test_a_stream_past_its_deadline_is_504_and_the_llm_is_stopped(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    ollama.double.chat_latency_s = 1.0  # before the first token
    ollama.double.token_latency_s = 0.2
    settings = settings_for(published.store_uri, ollama, tmp_path, request_timeout_s=0.5)
    with function(settings) as client:
        wait_ready(client)
        response = client.post("/query", json={"query": "rivers"}, headers=EVENTS)
        assert is_problem(response, 504)
        started = time.monotonic()
        assert client.get("/healthz").is_success  # the server is not blocked meanwhile
        assert time.monotonic() - started < 2
        deadline = time.monotonic() + 10
        while ollama.double.streams_abandoned == 0:
            assert time.monotonic() < deadline, "the abandoned answer was not stopped"
            time.sleep(0.05)
    assert ollama.double.streams_finished == 0

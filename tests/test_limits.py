"""The work of an LLM answer ends with its request, and only so many run at once: a real uvicorn
serving the published index, the Ollama double over HTTP with its latency knobs, and what the
double sees of the calls (still running, abandoned, finished)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from functions.settings import Settings

from .conftest import Ollama, Published, settings_for
from .test_app import function, is_problem, wait_ready
from .test_observability import samples

EVENTS = {"Accept": "text/event-stream"}
CHAT = {"messages": [{"role": "user", "content": "rivers?"}]}


@contextmanager
def serving(settings: Settings, ollama: Ollama) -> Iterator[httpx.Client]:
    """The function of ``settings``, ready, its LLM path warmed (LlamaIndex imported and the
    engine built: that first answer's second must not count against a test's deadline), and
    the double's counts of LLM calls back at zero."""
    with function(settings) as client:
        assert wait_ready(client).status_code == 200
        assert client.post("/query", json={"query": "warm"}).status_code == 200
        double = ollama.double
        double.chats.clear()
        double.chats_abandoned = double.streams_finished = double.streams_abandoned = 0
        yield client


def settle(ollama: Ollama, within_s: float) -> float:
    """Seconds until the double has no chat call running (fails after ``within_s``)."""
    started = time.monotonic()
    while ollama.double.chats_running:
        assert time.monotonic() - started < within_s, f"{ollama.double.chats_running} running"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/query", {"query": "rivers"}, {}),
        ("/chat", CHAT, {}),
        ("/query", {"query": "rivers"}, EVENTS),
        ("/chat", CHAT, EVENTS),
    ],
    ids=["query", "chat", "query-streamed", "chat-streamed"],
)
def test_after_the_504s_no_model_call_outlives_the_deadline(
    published: Published,
    ollama: Ollama,
    tmp_path: Path,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> None:
    """A 30 s LLM, a 1 s request deadline: six answers at once all get 504 in about a second,
    and the double sees every call abandoned by then, none running on."""
    settings = settings_for(published.store_uri, ollama, tmp_path, request_timeout_s=1.0)
    with serving(settings, ollama) as client:
        ollama.double.chat_latency_s = 30.0
        started = time.monotonic()
        with ThreadPoolExecutor(6) as pool:
            responses = list(
                pool.map(lambda _: client.post(path, json=body, headers=headers), range(6))
            )
        answered = time.monotonic() - started
        assert [is_problem(r, 504) for r in responses] == [True] * 6
        assert answered < 3.0
        settle(ollama, within_s=1.0)  # the deadline, plus slack
    assert ollama.double.chats_abandoned == len(ollama.double.chats) == 6
    assert ollama.double.streams_finished == 0


def test_a_stream_still_writing_at_its_deadline_is_cut_and_ollama_stopped(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    """The first token comes at once, the rest one every 0.3 s (about 4 s in all): the answer
    ends in an error event at the 1.5 s deadline, and Ollama's stream is closed then."""
    settings = settings_for(published.store_uri, ollama, tmp_path, request_timeout_s=1.5)
    with serving(settings, ollama) as client:
        ollama.double.token_latency_s = 0.3
        started = time.monotonic()
        with connect_sse(client, "POST", "/query", json={"query": "rivers"}, headers=EVENTS) as s:
            received = list(s.iter_sse())
        ended = time.monotonic() - started
        settle(ollama, within_s=0.5)
    *tokens, error = received
    assert {event.event for event in tokens} == {"token"}
    assert 1 <= len(tokens) < 8
    assert (error.event, error.json()["status"], error.json()["title"]) == (
        "error",
        504,
        "Model server timed out",
    )
    assert 1.4 < ended < 2.5
    assert (ollama.double.streams_abandoned, ollama.double.streams_finished) == (1, 0)


def test_answers_beyond_the_bound_are_refused_at_once_and_not_counted_as_upstream_errors(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    settings = settings_for(published.store_uri, ollama, tmp_path, llm_max_concurrency=2)
    with serving(settings, ollama) as client:
        ollama.double.chat_latency_s = 2.0
        with ThreadPoolExecutor(2) as pool:
            first = [pool.submit(client.post, "/query", json={"query": "rivers"}) for _ in "ab"]
            while ollama.double.chats_running < 2:  # both at the model server
                time.sleep(0.01)
            started = time.monotonic()
            refused = client.post("/chat", json=CHAT)
            streamed = client.post("/query", json={"query": "rivers"}, headers=EVENTS)
            waited = time.monotonic() - started
            retrieved = client.post("/query", json={"query": "rivers", "mode": "retrieve"})
            assert [f.result().status_code for f in first] == [200, 200]
        ollama.double.chat_latency_s = 0.0
        after = client.post("/query", json={"query": "rivers"})  # the slots were given back
        metrics = samples(client.get("/metrics").text)
    for response in (refused, streamed):
        assert is_problem(response, 503)
        assert response.json()["title"] == "Too many answers in progress"
        assert response.headers["retry-after"] == "1"
    assert waited < 1.0
    assert (retrieved.status_code, after.status_code) == (200, 200)
    assert len(ollama.double.chats) == 3
    assert {key: v for key, v in metrics.items() if "upstream_errors" in key[0]} == {}


def test_a_stream_holds_its_slot_until_its_last_token_and_gives_it_back_when_dropped(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    settings = settings_for(published.store_uri, ollama, tmp_path, llm_max_concurrency=1)
    with serving(settings, ollama) as client:
        ollama.double.token_latency_s = 0.1
        with connect_sse(client, "POST", "/query", json={"query": "rivers"}, headers=EVENTS) as s:
            assert next(s.iter_sse()).event == "token"
            busy = client.post("/query", json={"query": "rivers"})
        # The client went away: the stream is closed, Ollama stopped, the slot given back.
        settle(ollama, within_s=5.0)
        ollama.double.token_latency_s = 0.0
        free = client.post("/query", json={"query": "rivers"})
    assert is_problem(busy, 503)
    assert free.status_code == 200
    assert ollama.double.streams_abandoned == 1


@pytest.mark.parametrize(
    ("max_tokens", "context_window", "sent"),
    [(64, 8192, 64), (8000, 4096, 2048)],
    ids=["as-set", "half-the-window-at-most"],
)
def test_each_llm_call_writes_at_most_the_configured_tokens(
    published: Published,
    ollama: Ollama,
    tmp_path: Path,
    max_tokens: int,
    context_window: int,
    sent: int,
) -> None:
    settings = settings_for(
        published.store_uri,
        ollama,
        tmp_path,
        llm_context_window=context_window,
        llm_max_tokens=max_tokens,
    )
    with serving(settings, ollama) as client:
        assert client.post("/chat", json=CHAT).status_code == 200
    assert [chat["options"] for chat in ollama.double.chats] == [
        {"temperature": None, "num_ctx": context_window, "num_predict": sent}
    ] * 1

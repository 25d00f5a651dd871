"""The HTTP API's ``filters`` over a real uvicorn: every value type the schema allows (string,
integer, float, boolean) means the same in every mode — retrieve, extractive and LLM answers,
chat, and each of them streamed — and a request LlamaIndex refuses is the client's error (4xx),
never an outage. The index is written by the real writer into a local store, with the Ollama
double's vectors, so the function loads and model-checks it as any other."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from httpx_sse import connect_sse
from llama_index.core.vector_stores.types import MetadataFilter
from pydantic import ValidationError

from functions.app import create_app
from functions.artifact import PROBE_TEXT, NodeRecord
from functions.settings import Settings
from functions.storage import LocalStore

from .artifacts import artifact_of
from .conftest import Ollama, settings_for
from .servers import serve
from .test_artifact import publish_dir

MODEL = "nomic-embed-text"
TOPICS = ["rivers", "volcanoes", "glaciers", "deserts", "forests", "reefs"]
# published: True on even rows, the integer 1 on row 3 (True == 1, as in LlamaIndex).
METADATA: list[dict[str, Any]] = [
    {
        "source": f"{topic}.md",
        "published": 1 if row == 3 else row % 2 == 0,
        "year": 2020 + row % 3,
        "rating": [4.5, 3.0][row % 2],
        "tags": [topic, "notes"],
    }
    for row, topic in enumerate(TOPICS)
]
TEXTS = [f"Notes on {topic}: facts and figures about {topic}." for topic in TOPICS]
ID = [f"{topic}.md#0" for topic in TOPICS]
QUESTION = TEXTS[0]  # embeds exactly as rivers.md#0: the best source wherever it is admitted


@pytest.fixture
def store(ollama: Ollama, tmp_path: Path) -> str:
    """A local store whose ``stable`` channel serves the six notes above."""
    records = [
        NodeRecord(node, node.split("#")[0], text, meta)
        for node, text, meta in zip(ID, TEXTS, METADATA, strict=True)
    ]
    vectors = np.array([ollama.double.vector(MODEL, text) for text in TEXTS])
    probe = ollama.double.vector(MODEL, PROBE_TEXT)
    artifact_of(
        tmp_path / "artifact", vectors, records, provider="ollama", model=MODEL, probe=probe
    )
    root = tmp_path / "store"
    publish_dir(tmp_path / "artifact", LocalStore(root))
    return str(root)


@contextmanager
def function(settings: Settings) -> Iterator[httpx.Client]:
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.02)
        yield client


def source_ids(body: dict[str, Any]) -> list[str]:
    return [source["id"] for source in body["sources"]]


def streamed(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    with connect_sse(
        client, "POST", path, json=body, headers={"Accept": "text/event-stream"}
    ) as source:
        if source.response.status_code != 200:
            source.response.read()
            return source.response.status_code, source.response.json()
        return 200, list(source.iter_sse())[-1].json()


def every_mode(client: httpx.Client, filters: dict[str, Any]) -> dict[str, tuple[int, Any]]:
    """Each mode's status and source ids for QUESTION under ``filters``."""
    ask = {"query": QUESTION, "top_k": 5, "filters": filters}
    chat = {"messages": [{"role": "user", "content": QUESTION}], "top_k": 5, "filters": filters}
    answers = {
        "retrieve": client.post("/query", json={**ask, "mode": "retrieve"}),
        "answer": client.post("/query", json=ask),
        "chat": client.post("/chat", json=chat),
    }
    results = {mode: (r.status_code, r.json()) for mode, r in answers.items()}
    results["retrieve-streamed"] = streamed(client, "/query", {**ask, "mode": "retrieve"})
    results["answer-streamed"] = streamed(client, "/query", ask)
    results["chat-streamed"] = streamed(client, "/chat", chat)
    return {
        mode: (status, source_ids(body) if status == 200 else body)
        for mode, (status, body) in results.items()
    }


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"published": True}, [ID[0], ID[2], ID[3], ID[4]]),
        ({"published": 1}, [ID[0], ID[2], ID[3], ID[4]]),
        ({"published": False}, [ID[1], ID[5]]),
        ({"year": 2021}, [ID[1], ID[4]]),
        ({"rating": 4.5}, [ID[0], ID[2], ID[4]]),
        ({"source": "deserts.md"}, [ID[3]]),
        ({"doc_id": "reefs.md"}, [ID[5]]),
        ({"year": 2020, "published": True}, [ID[0], ID[3]]),
        ({"source": "nowhere.md"}, []),
    ],
    ids=["true", "int-1", "false", "int", "float", "string", "doc-id", "two-keys", "none-match"],
)
@pytest.mark.parametrize("llm", ["ollama", "none"], ids=["llm", "extractive"])
def test_every_filter_value_means_the_same_in_every_mode(
    store: str,
    ollama: Ollama,
    tmp_path: Path,
    llm: str,
    filters: dict[str, Any],
    expected: list[str],
) -> None:
    with function(settings_for(store, ollama, tmp_path, llm_provider=llm)) as client:
        results = every_mode(client, filters)
    status, ids = results["retrieve"]
    assert (status, sorted(ids)) == (200, sorted(expected))
    assert ID[0] not in expected or ids[0] == ID[0]  # the question is rivers' own text
    assert results == dict.fromkeys(results, results["retrieve"])


def _validation_error() -> ValidationError:
    try:
        MetadataFilter(key="published", value=True)  # type: ignore[arg-type]
    except ValidationError as exc:
        return exc
    raise AssertionError("LlamaIndex accepted True")


@pytest.mark.parametrize("path", ["/query", "/chat"], ids=["answer", "chat"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_what_llamaindex_refuses_in_a_request_is_a_400(
    store: str,
    ollama: Ollama,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    stream: bool,
) -> None:
    """Were LlamaIndex to refuse a request's parameters while the engine is built (as its
    MetadataFilter refused True), the client hears 400, not 503 Model server unavailable."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise _validation_error()

    monkeypatch.setattr("functions.engine.RetrieverQueryEngine.from_args", refuse)
    monkeypatch.setattr("functions.engine.StatelessChatEngine.from_defaults", refuse)
    body: dict[str, Any] = {"top_k": 2, "filters": {"published": True}}
    if path == "/query":
        body["query"] = QUESTION
    else:
        body["messages"] = [{"role": "user", "content": QUESTION}]
    with function(settings_for(store, ollama, tmp_path)) as client:
        if stream:
            status, problem = streamed(client, path, body)
        else:
            response = client.post(path, json=body)
            status, problem = response.status_code, response.json()
    assert (status, problem["status"], problem["title"]) == (400, 400, "Invalid request")

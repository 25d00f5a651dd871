"""The Elasticsearch backend when things go wrong: Elasticsearch down or stuck at the cold start
and while serving (through a proxy the test breaks), a wrong embedding model, an index whose load
did not finish, settings that cannot work."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from functions.app import create_app
from functions.composition import compose
from functions.errors import ConfigurationError, NotReady
from functions.settings import Settings

from .loaded_elasticsearch import Loaded, loaded_fixture  # noqa: F401 - the fixture
from .servers import Proxy, serve


@pytest.fixture
def proxy(loaded: Loaded) -> Iterator[Proxy]:
    running = Proxy(loaded.url.removeprefix("http://"))
    yield running
    running.close()


def ready(client: httpx.Client, timeout_s: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while (response := client.get("/readyz")).status_code != 200:
        if response.json().get("state") == "failed" or time.monotonic() > deadline:
            return response
        time.sleep(0.05)
    return response


def is_retryable_problem(response: httpx.Response, status: int) -> bool:
    return (
        response.status_code == status
        and response.headers["content-type"] == "application/problem+json"
        and response.headers["retry-after"] == "1"
        and response.json()["status"] == status
    )


def test_elasticsearch_down_and_stuck_while_serving_are_503_and_504_then_it_recovers(
    loaded: Loaded, proxy: Proxy
) -> None:
    settings = loaded.settings(
        elasticsearch_url=f"http://{proxy.address}", elasticsearch_timeout_s=1.0
    )
    query = {"query": "lakes", "mode": "retrieve"}
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert ready(client).status_code == 200
        assert client.post("/query", json=query).status_code == 200

        proxy.set("refuse")
        down = client.post("/query", json=query)
        assert is_retryable_problem(down, 503), down.text
        assert down.json()["title"] == "Elasticsearch unavailable"
        assert proxy.address not in down.text  # the client is told why, not where

        proxy.set("hang")
        started = time.monotonic()
        stuck = client.post("/query", json=query)
        assert is_retryable_problem(stuck, 504), stuck.text
        assert time.monotonic() - started < 5  # the timeout (1 s), its slack, no retries
        assert client.get("/readyz").status_code == 200  # the index is still the one served

        proxy.set("open")
        again = client.post("/query", json=query)
        assert again.status_code == 200, again.text
        assert again.headers["x-index-id"] == loaded.index_id


def test_elasticsearch_down_at_the_cold_start_is_retried_then_the_reason_is_given(
    loaded: Loaded, proxy: Proxy
) -> None:
    proxy.set("refuse")
    settings = loaded.settings(elasticsearch_url=f"http://{proxy.address}", startup_timeout_s=2.0)
    loader = compose(settings)
    started = time.monotonic()
    with pytest.raises(NotReady):
        loader.load()
    assert time.monotonic() - started < 10
    assert loader.attempts > 1
    assert loader.reason is not None
    assert loader.reason.startswith("Elasticsearch unavailable: ")
    assert "is unreachable" in loader.reason
    assert loader.reason.endswith(f"(gave up after {loader.attempts} attempts)")
    loader.close()

    proxy.set("open")  # back within the deadline: served
    loader = compose(settings)
    assert loader.load().index_id == loaded.index_id
    loader.close()


def test_a_wrong_embedding_model_is_refused_before_serving(loaded: Loaded) -> None:
    loader = compose(loaded.settings(embed_model="other-embed"))
    with pytest.raises(NotReady, match="not the model index"):
        loader.load()
    assert loader.attempts == 1  # not transient: never retried
    loader.close()


def test_an_index_whose_load_did_not_finish_is_never_served(loaded: Loaded) -> None:
    name = f"{loaded.prefix}-{loaded.index_id}"
    with httpx.Client(base_url=loaded.url) as es:
        es.put(f"/{name}/_settings", json={"index.blocks.write": False}).raise_for_status()
        loader = compose(loaded.settings(index=loaded.index_id, startup_timeout_s=1.0))
        with pytest.raises(NotReady, match="not completely loaded"):
            loader.load()
        loader.close()
        es.put(f"/{name}/_settings", json={"index.blocks.write": True}).raise_for_status()
    loader = compose(loaded.settings(index=loaded.index_id))
    assert loader.load().index_id == loaded.index_id
    loader.close()


def test_a_missing_channel_or_index_is_named_and_not_retried(loaded: Loaded) -> None:
    for name, said in (("nightly", "channel 'nightly'"), ("20200101-000000-00000000", "index")):
        loader = compose(loaded.settings(index=name))
        with pytest.raises(NotReady, match=f"{said}.* is not in Elasticsearch"):
            loader.load()
        assert loader.attempts == 1
        loader.close()


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"backend": "elasticsearch"}, "needs RAG_ELASTICSEARCH_URL"),
        ({"retrieval": "hybrid"}, "RAG_RETRIEVAL=hybrid needs RAG_BACKEND=elasticsearch"),
        (
            {
                "backend": "elasticsearch",
                "elasticsearch_url": "http://127.0.0.1:9",
                "elasticsearch_api_key": "a2V5",
                "elasticsearch_username": "elastic",
            },
            "an API key or a username and password, not both",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused_at_once(values: dict[str, str], said: str) -> None:
    with pytest.raises(ConfigurationError, match=said):
        compose(Settings(**values))  # type: ignore[arg-type]

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

import functions.errors as errors
from functions.app import create_app
from functions.composition import compose
from functions.errors import RagError
from functions.settings import Settings

from .conftest import Ollama, Published, settings_for

ERRORS = [getattr(errors, name) for name in errors.__all__]


def test_every_error_is_exported_documented_and_drawn_in_the_tree() -> None:
    defined = {
        obj for _, obj in inspect.getmembers(errors, inspect.isclass) if issubclass(obj, RagError)
    }
    assert set(ERRORS) == defined
    for error in ERRORS:
        assert error.__doc__
        assert error.__doc__.strip().endswith(".")
        assert f"{error.__name__} " in errors.__doc__  # the module docstring draws every class
        assert 400 <= error.status < 600
        assert error.title


def _get(app: FastAPI, path: str, *, raise_app_exceptions: bool = True) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(path)

    return asyncio.run(call())


def _app_raising(error: Exception) -> FastAPI:
    app = create_app(Settings(store_uri=None), loader=compose(Settings(store_uri=None)))

    @app.get("/boom")
    def boom() -> None:
        raise error

    return app


@pytest.mark.parametrize("error", ERRORS, ids=[e.__name__ for e in ERRORS])
def test_each_error_renders_as_problem_json(error: type[RagError]) -> None:
    response = _get(_app_raising(error("what went wrong")), "/boom")
    assert response.status_code == error.status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": error.title,
        "status": error.status,
        "detail": "what went wrong"
        if error.exposed
        else f"{error.title}; the details are in the logs",
    }
    assert ("retry-after" in response.headers) == (error.status in (503, 504))


def test_only_errors_about_the_request_show_their_message() -> None:
    # Whatever names hosts, buckets or keys (the store, the model server, the settings) is
    # logged, not answered.
    assert {e.__name__ for e in ERRORS if e.exposed} == {
        "InvalidRequest",
        "UnsupportedFilter",
        "ContextTooLong",
        "InvalidEvent",
        "UnsupportedEventFormat",
        "UnsupportedEventType",
        "NotReady",
        "DeadlineExceeded",
        "ModelBusy",
        "ArtifactError",
        "IntegrityError",
        "UnsupportedFormat",
        "IndexTooLarge",
        "ModelMismatch",
    }


def test_unexpected_errors_are_a_bare_500_without_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _app_raising(RuntimeError("/secret/path password=hunter2"))
    response = _get(app, "/boom")  # nothing escapes to the server either
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "Internal error",
        "status": 500,
        "detail": "an unexpected error occurred",
    }
    # Logged once, with the request id the client was given.
    (record,) = [r for r in caplog.records if r.name == "functions.errors"]
    assert record.getMessage() == "GET /boom failed"
    assert record.exc_info is not None
    assert len(response.headers["x-request-id"]) == 32


def test_metric_labels_stay_bounded_whatever_the_method(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    app = create_app(settings_for(published.store_uri, ollama, tmp_path))
    transport = httpx.ASGITransport(app=app)

    async def call() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for method in ("X0RANDOM", "BREW", "GET"):
                await client.request(method, "/whatever")

    asyncio.run(call())
    metrics = _get(app, "/metrics").text
    assert "X0RANDOM" not in metrics
    assert 'method="other"' in metrics

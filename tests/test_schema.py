"""Property-based API testing with schemathesis, from the app's own OpenAPI schema.

Every operation gets generated valid and invalid requests; none may produce a 5xx, and every
response must match the schema where the schema describes it (over 500 requests to /query alone).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from functions.app import create_app
from functions.loader import IndexLoader

from .conftest import Ollama, Published, settings_for


@pytest.fixture(scope="module")
def app(
    published: Published, _ollama_server: Ollama, tmp_path_factory: pytest.TempPathFactory
) -> FastAPI:
    configured = settings_for(
        published.store_uri, _ollama_server, tmp_path_factory.mktemp("schema"), llm_provider="none"
    )
    loader = IndexLoader(configured)
    loader.load()
    return create_app(configured, loader=loader)


@pytest.fixture(scope="module")
def api_schema(app: FastAPI) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_server_errors_and_schema_conformance(api_schema: schemathesis.BaseSchema) -> None:
    # schemathesis' pytest plugin does not run under pytest 9; its Python API does. Valid and
    # invalid requests for every operation; hypothesis stops early where the space is small.
    calls: dict[str, int] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=300,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
                case.call_and_validate(
                    checks=[
                        not_a_server_error,
                        response_schema_conformance,
                        content_type_conformance,
                    ]
                )

            try:
                check()
            except Unsatisfiable:
                # An operation without parameters or body has no invalid input to generate.
                if mode is schemathesis.GenerationMode.POSITIVE:
                    raise
    assert sum(calls.values()) >= 500, calls
    assert calls["POST /query"] >= 500
    assert calls["POST /chat"] >= 300


def _has_example(media: dict[str, Any], components: dict[str, Any]) -> bool:
    if "example" in media or "examples" in media:
        return True
    schema = media.get("schema", {})
    ref = schema.get("$ref", "")
    if ref:
        schema = components[ref.rsplit("/", 1)[-1]]
    return bool(schema.get("examples"))


def test_every_endpoint_documents_examples(app: FastAPI) -> None:
    document = app.openapi()
    components = document["components"]["schemas"]
    operations = [
        (f"{method.upper()} {path}", operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]
    assert {label for label, _ in operations} == {
        "GET /metrics",
        "GET /healthz",
        "GET /readyz",
        "POST /query",
        "POST /chat",
        "POST /events",
    }
    for label, operation in operations:
        if "requestBody" in operation:
            for media_type, media in operation["requestBody"]["content"].items():
                assert _has_example(media, components), f"{label} request {media_type}"
        for status, response in operation["responses"].items():
            if status == "422" and "application/json" in response.get("content", {}):
                continue  # FastAPI's own validation schema; ours is the problem+json beside it
            for media_type, media in response.get("content", {}).items():
                assert _has_example(media, components), f"{label} {status} {media_type}"


def test_docs_are_served(app: FastAPI) -> None:
    client = TestClient(app)
    assert "swagger-ui" in client.get("/docs").text
    assert client.get("/openapi.json").json()["info"]["title"] == "knative-rag query function"

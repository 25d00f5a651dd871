"""Property-based API testing with schemathesis, from the app's own OpenAPI schema.

Every operation gets generated valid and invalid requests; none may produce a 5xx, and every
response must match the schema where the schema describes it (over 500 requests to /query alone).
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi import FastAPI
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

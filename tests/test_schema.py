"""The OpenAPI document and the server agree: schemathesis, every check it has, every operation.

Schemathesis' own engine (what ``st run`` runs: examples, coverage, fuzzing; stateful has no
links to follow here) drives a real uvicorn serving a loaded index, with every check v4 has:
valid requests must be accepted, invalid ones refused with a 4xx, every response must match its
documented status, media type, headers and schema, undeclared methods must get 405 with
``Allow``, and with API keys every protected operation must refuse a request without one.
``SCHEMA_MAX_EXAMPLES`` raises the examples per operation for a long run (default 40).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema

from functions.app import create_app
from functions.composition import compose
from functions.settings import Settings

from .conftest import Ollama, Published, function_env, settings_for
from .servers import function_process, serve

KEY = "schema-test-key"
OPERATIONS = {
    "GET /metrics",
    "GET /healthz",
    "GET /readyz",
    "POST /query",
    "POST /chat",
    "POST /events",
}
MAX_EXAMPLES = int(os.environ.get("SCHEMA_MAX_EXAMPLES", "40"))


@dataclass
class Report:
    """What one schemathesis run did: cases and statuses per operation, checks run, failures."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def run_schemathesis(url: str, *, max_examples: int, headers: dict[str, str]) -> Report:
    """``st run --checks all`` against ``url``, as a library call."""
    config = SchemathesisConfig()
    config.update(seed=20261127, max_failures=None)
    project = config.projects.override
    project.update(headers=headers, workers=1)
    project.checks.update(included_check_names=["all"])
    project.generation.update(max_examples=max_examples, database="none")
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config, headers=headers)
    report = Report()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            recorder = event.recorder
            report.cases[recorder.label] += len(recorder.cases)
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    report.statuses[(recorder.label, interaction.response.status_code)] += 1
            for node in (node for nodes in recorder.checks.values() for node in nodes):
                report.checks[node.name] += 1
                if node.failure_info is not None:
                    failure = node.failure_info.failure
                    report.failures.append(
                        f"{recorder.label}: {failure.title}: {failure.message}\n"
                        f"{node.failure_info.code_sample}"
                    )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            report.failures.append(f"{getattr(event, 'label', 'run')}: {event!r}")
    return report


def _every_check() -> set[str]:
    load_all_checks()
    return set(CHECKS.get_all_names())


@pytest.mark.parametrize(
    ("llm", "keys"),
    [("ollama", ""), ("none", KEY)],
    ids=["open-llm-double", "api-keys-extractive"],
)
def test_the_schema_and_the_server_agree(
    published: Published, ollama: Ollama, tmp_path: Path, llm: str, keys: str
) -> None:
    env = {
        **function_env(published.store_uri, ollama, tmp_path),
        "RAG_LLM_PROVIDER": llm,
        "RAG_API_KEYS": keys,
        # OpenAPI has no keyword for a body's size in bytes: the longest documented-valid
        # conversation or batch is about 1 MB, so the byte limit (413, tested in test_guards)
        # is raised above it here.
        "RAG_MAX_BODY_BYTES": str(4 << 20),
        "RAG_LOG_LEVEL": "WARNING",  # thousands of generated requests: no access lines
    }
    headers = {"X-API-Key": keys} if keys else {}
    with function_process(env) as running:  # python -m functions, as in the container
        report = run_schemathesis(
            str(running.client.base_url), max_examples=MAX_EXAMPLES, headers=headers
        )
    print(f"cases {dict(report.cases)}\nchecks {dict(report.checks)}")  # for the long run
    print(*report.failures, sep="\n\n")  # whole, with a curl command each
    assert report.failures == []
    assert set(report.cases) == OPERATIONS
    assert set(report.checks) == _every_check() | {"max_response_time"}
    # Both answer modes and the events were exercised, not only refusals.
    answered = {label for (label, status), _ in report.statuses.items() if 200 <= status < 300}
    assert answered == OPERATIONS
    assert min(report.cases[label] for label in ("POST /query", "POST /chat")) >= MAX_EXAMPLES
    assert report.cases["POST /events"] >= MAX_EXAMPLES


@pytest.fixture(scope="module")
def app(
    published: Published, _ollama_server: Ollama, tmp_path_factory: pytest.TempPathFactory
) -> FastAPI:
    configured = settings_for(
        published.store_uri, _ollama_server, tmp_path_factory.mktemp("schema"), llm_provider="none"
    )
    loader = compose(configured)
    loader.load()
    return create_app(configured, loader=loader)


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


CONVERSATIONS = {
    "one-question": ["user"],
    "question-answer-question": ["user", "assistant", "user"],
    "two-questions-in-a-row": ["user", "user"],
    "ends-with-the-answer": ["user", "assistant"],
    "only-an-answer": ["assistant"],
    "twenty-ending-with-the-user": ["assistant"] * 19 + ["user"],
    "twenty-one": ["user"] * 21,
}


@pytest.mark.parametrize("roles", list(CONVERSATIONS.values()), ids=list(CONVERSATIONS))
def test_chat_accepts_exactly_the_conversations_its_schema_describes(
    app: FastAPI, roles: list[str]
) -> None:
    document = app.openapi()
    body = {"messages": [{"role": role, "content": f"turn {n}"} for n, role in enumerate(roles)]}
    documented = _validator(document, {"$ref": "#/components/schemas/ChatRequest"}).is_valid(body)
    response = TestClient(app).post("/chat", json=body)
    assert (documented, response.status_code) in ((True, 200), (False, 422)), response.text


TOP_K = {"int": 5, "integral-float": 5.0, "true": True, "numeric-string": "5", "fraction": 5.5}


@pytest.mark.parametrize("top_k", list(TOP_K.values()), ids=list(TOP_K))
@pytest.mark.parametrize("path", ["/query", "/chat"], ids=["query", "chat"])
def test_top_k_is_an_integer_as_the_schema_says(app: FastAPI, path: str, top_k: object) -> None:
    """Pydantic's lax mode read true as 1 and "5" as 5; the schema says integer."""
    document = app.openapi()
    name = "QueryRequest" if path == "/query" else "ChatRequest"
    body = {"top_k": top_k, "mode": "retrieve", "query": "rivers"}
    if path == "/chat":
        body = {"top_k": top_k, "messages": [{"role": "user", "content": "rivers?"}]}
    documented = _validator(document, {"$ref": f"#/components/schemas/{name}"}).is_valid(body)
    response = TestClient(app).post(path, json=body)
    assert (documented, response.status_code) in ((True, 200), (False, 422)), response.text


def test_events_documents_what_it_takes(app: FastAPI) -> None:
    """Each documented request body, sent as documented, is accepted; the binary-mode headers
    are declared."""
    operation = app.openapi()["paths"]["/events"]["post"]
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert {"ce-specversion", "ce-id", "ce-source", "ce-type"} <= headers
    client = TestClient(app)
    outcomes = {
        media_type: client.post(
            "/events", json=media["example"], headers={"content-type": media_type}
        ).status_code
        for media_type, media in operation["requestBody"]["content"].items()
    }
    assert outcomes == {
        "application/cloudevents+json": 200,
        "application/cloudevents-batch+json": 200,
    }


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
    assert {label for label, _ in operations} == OPERATIONS
    for label, operation in operations:
        if "requestBody" in operation:
            for media_type, media in operation["requestBody"]["content"].items():
                assert _has_example(media, components), f"{label} request {media_type}"
        for status, response in operation["responses"].items():
            if status == "422" and "application/json" in response.get("content", {}):
                continue  # FastAPI's own validation schema; ours is the problem+json beside it
            for media_type, media in response.get("content", {}).items():
                assert _has_example(media, components), f"{label} {status} {media_type}"


def test_security_is_declared_only_where_a_key_is_required(tmp_path: Path) -> None:
    settings = Settings(store_uri=None, api_keys=KEY, cache_dir=tmp_path)
    app = create_app(settings, loader=compose(settings))
    document = TestClient(app).get("/openapi.json", headers={"X-API-Key": KEY}).json()
    security = {
        f"{method.upper()} {path}": operation.get("security")
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    required = [{"apiKey": []}, {"bearer": []}]
    assert security == {
        "GET /metrics": required,
        "GET /healthz": None,
        "GET /readyz": None,
        "POST /query": required,
        "POST /chat": required,
        "POST /events": required,
    }
    assert set(document["components"]["securitySchemes"]) == {"apiKey", "bearer"}


def test_docs_are_served(app: FastAPI) -> None:
    client = TestClient(app)
    assert "swagger-ui" in client.get("/docs").text
    assert client.get("/openapi.json").json()["info"]["title"] == "knative-rag query function"


def test_a_problem_from_the_edge_is_what_every_operation_documents(app: FastAPI) -> None:
    document = app.openapi()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            content = operation["responses"]["500"]["content"]
            assert content == {
                "application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"},
                    "example": {
                        "type": "about:blank",
                        "title": "Internal error",
                        "status": 500,
                        "detail": "an unexpected error occurred",
                    },
                }
            }, f"{method} {path}"


def _conforms(document: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """The response's status, media type, headers and body are what the document says."""
    documented = document["paths"][path][method.lower()]["responses"][str(response.status_code)]
    media = documented["content"][response.headers["content-type"]]
    _validator(document, media["schema"]).validate(response.json())
    assert {name.lower() for name in documented.get("headers", {})} <= set(response.headers)


GUARDED = {
    "401-query": ("POST", "/query", {}, b"{}", 401),
    "401-metrics": ("GET", "/metrics", {}, b"", 401),
    "401-events": ("POST", "/events", {}, b"{}", 401),
    "413-query": ("POST", "/query", {"x-api-key": KEY}, b" " * 2048, 413),
    "413-events": ("POST", "/events", {"x-api-key": KEY}, b" " * 2048, 413),
    "415-chat": ("POST", "/chat", {"x-api-key": KEY, "content-type": "text/plain"}, b"hi", 415),
    "415-events": (
        "POST",
        "/events",
        {"x-api-key": KEY, "content-type": "application/cloudevents+xml"},
        b"<event/>",
        415,
    ),
    "503-not-ready": (
        "POST",
        "/query",
        {"x-api-key": KEY, "content-type": "application/json"},
        b'{"query": "rivers"}',
        503,
    ),
    "500-edge": (
        "POST",
        "/chat",
        {"x-api-key": KEY, "content-type": "application/json"},
        b'{"messages": [{"role": "user", "content": "rivers?"}]}',
        500,
    ),
}


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status"), list(GUARDED.values()), ids=list(GUARDED)
)
def test_the_guards_and_the_edge_answer_as_documented(
    tmp_path: Path,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    settings = Settings(store_uri=None, api_keys=KEY, max_body_bytes=1024, cache_dir=tmp_path)
    loader = compose(settings)  # never loaded: 503 where an index is needed
    if status == 500:

        def broken() -> None:
            raise RuntimeError("a bug")

        loader.require = broken  # type: ignore[method-assign]
    app = create_app(settings, loader=loader)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        response = client.request(method, path, content=body, headers=headers)
        document = client.get("/openapi.json", headers={"x-api-key": KEY}).json()
    assert response.status_code == status
    _conforms(document, method, path, response)

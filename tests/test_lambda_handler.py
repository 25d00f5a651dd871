"""The Lambda handler, invoked with realistic event payloads of each AWS front door."""

from __future__ import annotations

import base64
import importlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from functions.s3 import S3Store
from functions.search import SearchIndex

from .conftest import Ollama, Published

BODY = json.dumps({"query": "facts about rivers", "mode": "retrieve", "top_k": 2})
HEADERS = {
    "content-type": "application/json",
    "host": "rag.example.com",
    "user-agent": "curl/8.5.0",
}


def http_api_v2(
    domain: str = "abc123.execute-api.us-east-1.amazonaws.com",
    route: str = "POST /query",
    stage: str = "$default",
) -> dict[str, Any]:
    # On a named stage, an HTTP API keeps the stage in rawPath and http.path.
    path = "/query" if stage == "$default" else f"/{stage}/query"
    return {
        "version": "2.0",
        "routeKey": route,
        "rawPath": path,
        "rawQueryString": "",
        "headers": {**HEADERS, "content-length": str(len(BODY))},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": domain.split(".")[0],
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "curl/8.5.0",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": route,
            "stage": stage,
            "time": "27/Nov/2026:08:15:00 +0000",
            "timeEpoch": 1795767300000,
        },
        "body": BODY,
        "isBase64Encoded": False,
    }


def function_url() -> dict[str, Any]:
    return http_api_v2(domain="a1b2c3d4e5.lambda-url.us-east-1.on.aws", route="$default")


def http_api_v2_on_a_stage() -> dict[str, Any]:
    return http_api_v2(stage="prod")


def rest_api_v1(path: str = "/query") -> dict[str, Any]:
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": "POST",
        "headers": HEADERS,
        "multiValueHeaders": {k: [v] for k, v in HEADERS.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": "query"},
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "1234567890",
            "httpMethod": "POST",
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0"},
            "path": "/prod/query",
            "protocol": "HTTP/1.1",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "resourcePath": "/{proxy+}",
            "stage": "prod",
        },
        "body": BODY,
        "isBase64Encoded": False,
    }


def alb() -> dict[str, Any]:
    return {
        "requestContext": {
            "elb": {
                "targetGroupArn": (
                    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/rag/6d0ecf831eec9f09"
                )
            }
        },
        "httpMethod": "POST",
        "path": "/query",
        "queryStringParameters": {},
        "headers": {
            **HEADERS,
            "x-forwarded-for": "203.0.113.7",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
        },
        "body": BODY,
        "isBase64Encoded": False,
    }


class Context:
    """The parts of a Lambda context object Mangum reads."""

    function_name = "rag-query"
    aws_request_id = "8f5d2a1e-0000-4000-8000-000000000000"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:rag-query"


def rest_api_v1_with_the_stage_in_the_path() -> dict[str, Any]:
    """What a REST API's custom domain with a base path mapping (or a stage) sends."""
    return rest_api_v1("/prod/query")


@pytest.fixture
def base_path() -> str:
    """RAG_API_GATEWAY_BASE_PATH; a test parametrizes it to change it."""
    return "/"


@pytest.fixture
def lambda_module(
    published: Published,
    ollama: Ollama,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    base_path: str,
) -> Iterator[tuple[ModuleType, list[str]]]:
    for name, value in {
        "RAG_STORE_URI": published.store_uri,
        "RAG_CACHE_DIR": str(tmp_path / "cache"),
        "RAG_LLM_PROVIDER": "none",
        "OLLAMA_HOST": ollama.url,
        "RAG_API_GATEWAY_BASE_PATH": base_path,
    }.items():
        monkeypatch.setenv(name, value)
    fetched: list[str] = []
    original = S3Store.fetch

    def counting(self: S3Store, key: str, dest: Path, **kwargs: Any) -> Any:
        fetched.append(key)
        return original(self, key, dest, **kwargs)

    monkeypatch.setattr(S3Store, "fetch", counting)
    sys.modules.pop("functions.lambda_handler", None)
    module = importlib.import_module("functions.lambda_handler")  # Lambda's init phase
    yield module, fetched
    sys.modules.pop("functions.lambda_handler", None)


def expected_answer(published: Published, ollama: Ollama) -> dict[str, Any]:
    """What /query must answer: the top 2 chunks for the double's embedding of the query."""
    query = np.asarray(
        ollama.double.vector("nomic-embed-text", "facts about rivers"), dtype=np.float32
    )
    hits = SearchIndex(published.artifact).search(query, 2)
    sources = [
        {
            "id": h.record.id,
            "score": pytest.approx(h.score, abs=1e-6),
            "text": h.record.text,
            "metadata": h.record.metadata,
        }
        for h in hits
    ]
    return {
        "answer": None,
        "answer_type": None,
        "sources": sources,
        "cited": [],
        "index_id": published.index_id,
    }


@pytest.mark.parametrize(
    ("event", "extra"),
    [(http_api_v2, {}), (function_url, {}), (rest_api_v1, {"multiValueHeaders": {}}), (alb, {})],
    ids=["http-api-v2", "function-url", "rest-api-v1", "alb"],
)
def test_each_front_door_gets_the_whole_answer(
    lambda_module: tuple[ModuleType, list[str]],
    published: Published,
    ollama: Ollama,
    event: Any,
    extra: dict[str, Any],
) -> None:
    module, _ = lambda_module
    request = event()
    response = module.handler(request, Context())
    body = response.pop("body")
    # The front door's own request id where it has one (API Gateway, function URLs), so logs
    # correlate; else a new one.
    front_door_id = request.get("requestContext", {}).get("requestId")
    request_id = response["headers"]["x-request-id"]
    assert (
        request_id == front_door_id if front_door_id else re.fullmatch("[0-9a-f]{32}", request_id)
    )
    assert response == {
        "statusCode": 200,
        "headers": {
            "content-length": str(len(body)),
            "content-type": "application/json",
            "x-index-id": published.index_id,
            "x-request-id": request_id,
        },
        "isBase64Encoded": False,
        **extra,
    }
    assert json.loads(body) == expected_answer(published, ollama)


def test_invalid_input_is_a_problem_not_a_crash(
    lambda_module: tuple[ModuleType, list[str]], published: Published
) -> None:
    module, _ = lambda_module
    event = alb()
    event["body"] = json.dumps({"query": "", "top_k": 99})
    response = module.handler(event, Context())
    problem = json.loads(response["body"])
    assert response["isBase64Encoded"] is False
    assert (response["statusCode"], response["headers"]["content-type"]) == (
        422,
        "application/problem+json",
    )
    assert (problem["status"], problem["title"], response["headers"]["x-index-id"]) == (
        422,
        "Invalid request body",
        published.index_id,
    )
    assert sorted(error["loc"][-1] for error in problem["errors"]) == ["query", "top_k"]


def test_two_invocations_download_the_index_once(
    lambda_module: tuple[ModuleType, list[str]],
) -> None:
    module, fetched = lambda_module
    assert len(fetched) == 6  # the six data files, at init
    for _ in range(2):
        assert module.handler(http_api_v2(), Context())["statusCode"] == 200
    assert len(fetched) == 6
    assert module.loader.state == "ready"


FRONT_DOORS = [http_api_v2, function_url, rest_api_v1, alb]
FRONT_DOOR_IDS = ["http-api-v2", "function-url", "rest-api-v1", "alb"]


@pytest.mark.parametrize("base_path", ["/prod", "/prod/"], ids=["prod", "trailing-slash"])
@pytest.mark.parametrize(
    "event",
    [rest_api_v1_with_the_stage_in_the_path, http_api_v2_on_a_stage, alb, function_url],
    ids=["rest-api-v1-stage-in-path", "http-api-v2-named-stage", "alb", "function-url"],
)
def test_the_api_gateway_base_path_is_stripped(
    lambda_module: tuple[ModuleType, list[str]],
    published: Published,
    ollama: Ollama,
    event: Any,
    base_path: str,
) -> None:
    """API Gateway's stage or base path leaves the path; an ALB or a function URL has none."""
    module, _ = lambda_module
    response = module.handler(event(), Context())
    assert (response["statusCode"], json.loads(response["body"])) == (
        200,
        expected_answer(published, ollama),
    )


def test_without_the_base_path_configured_a_staged_path_is_not_found(
    lambda_module: tuple[ModuleType, list[str]],
) -> None:
    module, _ = lambda_module
    response = module.handler(rest_api_v1_with_the_stage_in_the_path(), Context())
    assert (response["statusCode"], json.loads(response["body"])["title"]) == (404, "Not Found")


def _without_content_type(event: dict[str, Any]) -> dict[str, Any]:
    for name in ("headers", "multiValueHeaders"):
        if name in event:
            event[name] = {k: v for k, v in event[name].items() if k != "content-type"}
    return event


@pytest.mark.parametrize("event", FRONT_DOORS, ids=FRONT_DOOR_IDS)
def test_a_body_without_content_type_is_415_with_accept_post(
    lambda_module: tuple[ModuleType, list[str]], event: Any
) -> None:
    module, _ = lambda_module
    response = module.handler(_without_content_type(event()), Context())
    headers = response.get("headers") or {}
    assert (
        response["statusCode"],
        headers.get("content-type"),
        headers.get("accept-post"),
        json.loads(response["body"]),
    ) == (
        415,
        "application/problem+json",
        "application/json",
        {
            "type": "about:blank",
            "title": "Unsupported Media Type",
            "status": 415,
            "detail": "the request body must be JSON: Content-Type: application/json",
        },
    )


def _base64(event: dict[str, Any], body: str) -> dict[str, Any]:
    return {**event, "body": body, "isBase64Encoded": True}


@pytest.mark.parametrize(
    "body",
    # Mangum raised binascii.Error on the first; it decoded the second, skipping what is not
    # base64, into bytes nobody sent.
    ["not base64!", 'not base64: {"query": "rivers"}'],
    ids=["bad-padding", "stray-characters"],
)
@pytest.mark.parametrize("event", FRONT_DOORS, ids=FRONT_DOOR_IDS)
def test_a_body_marked_base64_that_is_not_is_a_400_problem(
    lambda_module: tuple[ModuleType, list[str]], event: Any, body: str
) -> None:
    module, _ = lambda_module
    response = module.handler(_base64(event(), body), Context())
    problem = json.loads(response.pop("body"))
    headers = response.pop("headers")
    assert headers["content-type"] == "application/problem+json"
    assert re.fullmatch("[0-9A-Za-z=_-]{8,}", headers["x-request-id"])
    assert (response["statusCode"], response["isBase64Encoded"], problem) == (
        400,
        False,
        {
            "type": "about:blank",
            "title": "Bad Request",
            "status": 400,
            "detail": "the request body is marked base64 (isBase64Encoded) but is not",
        },
    )


@pytest.mark.parametrize("event", FRONT_DOORS, ids=FRONT_DOOR_IDS)
def test_a_base64_body_is_decoded(
    lambda_module: tuple[ModuleType, list[str]], published: Published, ollama: Ollama, event: Any
) -> None:
    module, _ = lambda_module
    request = _base64(event(), base64.b64encode(BODY.encode()).decode())
    response = module.handler(request, Context())
    assert (response["statusCode"], json.loads(response["body"])) == (
        200,
        expected_answer(published, ollama),
    )

"""The HTTP edge: the FastAPI app, its request and response bodies, and problem+json errors.

``create_app(settings)`` builds the app; ``uvicorn functions.app:app`` builds one from the
environment, once, logging as ``python -m functions`` does. The index loads in the background
at start-up: ``/healthz`` is 200 at once, ``/readyz`` is 503 until the index is fetched,
verified and the embedding model checked.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .composition import compose
from .edge import Edge
from .errors import ConfigurationError, DeadlineExceeded, RagError
from .events import ACCEPTED_MEDIA_TYPES
from .guards import AUTHORIZED, ApiKeys, JsonBodies, Limits, describe_security
from .loader import IndexLoader
from .logs import configure
from .metrics import Metrics
from .problems import Problem as ProblemModel
from .problems import problem, problem_body, problem_responses
from .receiver import COMPONENTS, add_events_route
from .schemas import (
    METRICS_EXAMPLE,
    READY_EXAMPLE,
    SSE_EXAMPLE,
    ChatRequest,
    QueryRequest,
    QueryResponse,
)
from .service import AnswerStream, QueryResult
from .settings import Settings, api_keys, token_verifier
from .sse import MEDIA_TYPE, stream_events, wants_events

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


class _IndexIdHeader:
    """Adds ``X-Index-Id`` (the serving index) to every response that does not carry one."""

    def __init__(self, app: ASGIApp, loader: IndexLoader) -> None:
        self.app = app
        self.loader = loader

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            service = self.loader.service
            if message["type"] == "http.response.start" and service is not None:
                headers = list(message.get("headers", []))
                if not any(name == b"x-index-id" for name, _ in headers):
                    headers.append((b"x-index-id", service.index_id.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_header)


def create_app(settings: Settings, *, loader: IndexLoader | None = None) -> FastAPI:
    """Build the query function's app; the index starts loading when the app starts."""
    loader = loader or compose(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loader.start()
        yield
        loader.close()

    app = FastAPI(title="knative-rag query function", version="0.1.0", lifespan=lifespan)
    keys, tokens = api_keys(settings), token_verifier(settings)
    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = original_openapi()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            # The problem schema every error response refers to; the CloudEvents /events takes.
            schemas["Problem"] = ProblemModel.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schemas.update(COMPONENTS)
            describe_security(document, keys=bool(keys), token_paths=("/events",) if tokens else ())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.loader = loader
    metrics = Metrics(loader, revision=settings.revision)
    loader.observers.append(metrics.observe_upstream)
    app.state.metrics = metrics
    app.add_middleware(JsonBodies, paths=("/query", "/chat"))  # not /events: any media type
    app.add_middleware(_IndexIdHeader, loader=loader)
    app.add_middleware(
        Limits,
        max_body_bytes=settings.max_body_bytes,
        max_concurrency=settings.max_concurrency,
        body_timeout_s=settings.body_timeout_s,
        body_idle_timeout_s=settings.body_idle_timeout_s,
    )
    if keys or tokens:
        app.add_middleware(ApiKeys, keys=keys, tokens=tokens, token_paths=("/events",))
    if not keys:
        logger.warning(
            "no API key configured (RAG_API_KEYS, RAG_API_KEYS_FILE): the service is open%s",
            " but for /events (RAG_OIDC_ISSUER)" if tokens else "",
        )
    app.add_middleware(Edge, metrics=metrics)  # outermost: request ids, metrics, access log

    @app.exception_handler(RagError)
    async def rag_error(request: Request, exc: RagError) -> JSONResponse:
        if not exc.exposed:  # the client gets the title; the operator gets the whole story
            logger.warning(
                "%s %s: %s %s: %s", request.method, request.url.path, exc.status, exc.title,
                exc.message,
            )  # fmt: skip
        response = problem(exc.status, exc.public, exc.title)
        if exc.status in (503, 504):
            response.headers["Retry-After"] = "1"
        elif exc.status == 415:  # a CloudEvents format /events cannot read
            response.headers["Accept-Post"] = ACCEPTED_MEDIA_TYPES
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return problem(422, "the request body is not valid", "Invalid request body", errors=errors)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        response = problem(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # 405's Allow (RFC 9110, section 15.5.6)
        return response

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # functions.edge answers and logs unexpected errors first; this is the last resort.
        return problem(500, "an unexpected error occurred", "Internal error")

    @app.get(
        "/metrics",
        summary="Prometheus metrics: requests, latency, cold start, the index, reloads.",
        response_class=PlainTextResponse,
        responses={
            200: {"content": {"text/plain": {"example": METRICS_EXAMPLE}}},
            **problem_responses(401, 500, 503),
        },
    )
    async def metrics_text() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/healthz",
        summary="Liveness: the process is up.",
        responses={
            200: {"content": {"application/json": {"example": {"status": "ok"}}}},
            **problem_responses(500),
        },
    )
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # The same probes at the paths a Knative Function's Service probes (func.yaml's
    # healthEndpoints): func-python answers them itself, uvicorn (this image's default
    # command, which `func deploy --image` runs) through these.
    app.add_api_route("/health/liveness", healthz, methods=["GET"], include_in_schema=False)

    @app.get(
        "/readyz",
        summary="Readiness: 200 once the index is loaded and verified, else 503.",
        description=(
            "Open to all. With API keys configured, a caller without a valid key is shown only "
            "`status` and `index_id`; the timings and reload counts need a key (they are in "
            "`/metrics` too)."
        ),
        responses={
            200: {"content": {"application/json": {"example": READY_EXAMPLE}}},
            **problem_responses(500, 503),
        },
    )
    async def readyz(request: Request) -> Response:
        service = loader.service
        if service is None:
            return problem(
                503, loader.public_reason or "not ready", "Index not ready", state=loader.state
            )
        ready: dict[str, Any] = {"status": "ready", "index_id": service.index_id}
        if keys and not request.scope.get("state", {}).get(AUTHORIZED, False):
            return JSONResponse(ready)  # what a probe and an operator need, and no more
        tier = getattr(service.index, "tier", None)  # an index answered on demand, for now
        cold = getattr(service.index, "cold", None)
        return JSONResponse(
            {
                **ready,
                "started_at": loader.started_at,
                "ready_at": loader.ready_at,
                "timings_s": {name: round(value, 4) for name, value in loader.timings.items()},
                "reloads": dict(loader.reloads),
                **({"serving_from": tier} if tier else {}),
                **({"search": mode} if (mode := getattr(service.index, "mode", None)) else {}),
                **({"on_demand_reads": {"gets": cold.gets, "bytes": cold.bytes}} if cold else {}),
            }
        )

    app.add_api_route("/health/readiness", readyz, methods=["GET"], include_in_schema=False)

    def render(result: QueryResult) -> dict[str, Any]:
        return QueryResponse.model_validate(result, from_attributes=True).model_dump(mode="json")

    def error_body(exc: RagError) -> dict[str, Any]:
        return problem_body(exc.status, exc.public, exc.title)

    async def streamed(
        request: Request, query: str, top_k: int, filters: dict[str, Any], **how: Any
    ) -> Response:
        """The answer as Server-Sent Events; fails with a plain problem until the first token."""
        service = loader.require()

        abandoned = threading.Event()

        def start() -> tuple[AnswerStream, str | None]:
            stream = service.stream(query, top_k, filters, **how)
            first = next(stream.tokens, None)
            if abandoned.is_set():  # the client got its 504: stop the LLM, here, not in the loop
                close = getattr(stream.tokens, "close", None)
                if close is not None:
                    close()
            return stream, first

        try:
            stream, first = await asyncio.wait_for(
                run_in_threadpool(start), settings.request_timeout_s
            )
        except TimeoutError as exc:
            abandoned.set()
            raise DeadlineExceeded(f"no answer within {settings.request_timeout_s:g} s") from exc
        return StreamingResponse(
            stream_events(stream, first, render, error_body),
            media_type=MEDIA_TYPE,
            headers={"X-Index-Id": stream.index_id, "Cache-Control": "no-cache"},
        )

    streams: dict[int | str, dict[str, Any]] = {
        200: {"content": {MEDIA_TYPE: {"example": SSE_EXAMPLE}}}
    }

    @app.post(
        "/query",
        response_model=QueryResponse,
        summary="Answer a question, or retrieve sources.",
        description=(
            "With `Accept: text/event-stream` the answer streams as Server-Sent Events: "
            "`token` events with pieces of the answer, then an `end` event whose data is the "
            "whole response (sources, cited, index_id), or an `error` event with a problem."
        ),
        responses={**streams, **problem_responses(400, 401, 408, 413, 415, 422, 500, 503, 504)},
    )
    async def query(body: QueryRequest, request: Request, response: Response) -> Any:
        if wants_events(request.headers.get("accept", "")):
            return await streamed(
                request, body.query, body.top_k, dict(body.filters), mode=body.mode
            )
        answer = await _within(settings.request_timeout_s, _answer, loader, body)
        response.headers["X-Index-Id"] = answer.index_id
        return answer

    @app.post(
        "/chat",
        response_model=QueryResponse,
        summary="Continue a conversation the client keeps (stateless).",
        description=(
            "The client sends the whole conversation each time; the function condenses it and "
            "the new message into one question (LlamaIndex's condense-plus-context chat engine), "
            "retrieves, and answers with citations. Without an LLM it answers the last message "
            "extractively. `Accept: text/event-stream` streams as for `/query`."
        ),
        responses={**streams, **problem_responses(400, 401, 408, 413, 415, 422, 500, 503, 504)},
    )
    async def chat(body: ChatRequest, request: Request, response: Response) -> Any:
        history: list[tuple[str, str]] = [(m.role, m.content) for m in body.messages[:-1]]
        message = body.messages[-1].content
        filters = dict(body.filters)
        if wants_events(request.headers.get("accept", "")):
            return await streamed(request, message, body.top_k, filters, history=history)

        def run() -> QueryResponse:
            result = loader.require().chat(history, message, body.top_k, filters)
            return QueryResponse.model_validate(result, from_attributes=True)

        answer = await _within(settings.request_timeout_s, run)
        response.headers["X-Index-Id"] = answer.index_id
        return answer

    async def answer(body: QueryRequest, deadline_s: float) -> QueryResponse:
        return await _within(deadline_s, _answer, loader, body)

    source = f"knative-rag/{settings.service or 'rag-query'}/{settings.revision or 'local'}"
    add_events_route(
        app, loader=loader, answer=answer, source=source, timeout_s=settings.request_timeout_s
    )
    return app


async def _within(
    deadline_s: float, run: Callable[..., QueryResponse], *args: Any
) -> QueryResponse:
    """Run a blocking answer in the thread pool, giving up (504) after ``deadline_s``.

    The worker thread cannot be interrupted and finishes in the background; what the deadline
    guarantees is that the client gets the app's own 504 before the platform's timeout.
    """
    try:
        return await asyncio.wait_for(run_in_threadpool(run, *args), deadline_s)
    except TimeoutError as exc:
        raise DeadlineExceeded(f"no answer within {deadline_s:g} s") from exc


def _answer(loader: IndexLoader, body: QueryRequest) -> QueryResponse:
    service = loader.require()
    run = service.answer if body.mode == "answer" else service.retrieve
    result = run(body.query, body.top_k, dict(body.filters))
    return QueryResponse.model_validate(result, from_attributes=True)


def __getattr__(name: str) -> FastAPI:
    # ``uvicorn functions.app:app``: made once (uvicorn looks it up twice), logging as -m does.
    if name != "app":
        raise AttributeError(name)
    settings = Settings()
    try:
        configure(settings.log_level, secrets=api_keys(settings), log_format=settings.log_format)
        app = globals()["app"] = create_app(settings)
    except ConfigurationError as exc:
        sys.exit(f"knative-rag: exiting: {exc.message}")
    return app

"""RFC 9457 problem details: the body of every error this service answers."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import Message, Send

__all__ = ["Problem", "problem", "problem_body", "problem_responses", "send_problem"]


class Problem(BaseModel):
    """An RFC 9457 problem: every error response of this API."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = Field(None, description="Invalid body fields (422).")
    state: str | None = Field(None, description="Loader state (503 from /readyz).")


# What each status looks like, for the examples in /docs.
_EXAMPLES = {
    400: ("Invalid CloudEvent", "the event has no 'id' attribute"),
    401: ("Unauthorized", "a valid API key is required: Authorization: Bearer <key> or X-API-Key"),
    403: ("Forbidden", "this token's subject may not deliver events here"),
    413: ("Request Entity Too Large", "request body over 65536 bytes"),
    415: (
        "Unsupported Media Type",
        "the request body must be JSON: Content-Type: application/json",
    ),
    422: ("Invalid request body", "the request body is not valid"),
    500: ("Internal error", "an unexpected error occurred"),
    503: ("Index not ready", "index is loading"),
    504: ("Request deadline exceeded", "no answer within 140 s"),
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, each a problem+json ``Problem``."""
    schema = {"$ref": "#/components/schemas/Problem"}
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        title, detail = _EXAMPLES.get(status, (HTTPStatus(status).phrase, "what went wrong"))
        example = problem_body(status, detail, title)
        responses[status] = {
            "description": HTTPStatus(status).phrase,
            "content": {"application/problem+json": {"schema": schema, "example": example}},
        }
        if status in _HEADERS:
            name, description = _HEADERS[status]
            responses[status]["headers"] = {
                name: {"description": description, "schema": {"type": "string"}}
            }
    return responses


# The header each of these statuses comes with.
_HEADERS = {
    401: ("WWW-Authenticate", "The challenge: Bearer, with an error code when one was sent."),
    415: ("Accept-Post", "The media types a POST here takes."),
    503: ("Retry-After", "Seconds to wait before retrying (not from /readyz)."),
    504: ("Retry-After", "Seconds to wait before retrying."),
}


def problem_body(status: int, detail: str, title: str | None = None) -> dict[str, Any]:
    """The JSON of an RFC 9457 problem (also an SSE ``error`` event's data)."""
    return {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }


def problem(status: int, detail: str, title: str | None = None, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem response."""
    return JSONResponse(
        {**problem_body(status, detail, title), **extra},
        status_code=status,
        media_type="application/problem+json",
    )


async def send_problem(
    send: Send,
    status: int,
    detail: str,
    title: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """A problem answered from plain ASGI middleware, before or outside the app's handlers."""
    response = problem(status, detail, title)
    response.headers.update(headers or {})
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}

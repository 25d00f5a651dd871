"""AWS Lambda: the query function's app behind API Gateway, an ALB or a function URL, via Mangum.

The index is loaded once per execution environment, during Lambda's init phase, by the same
loader the HTTP app uses; invocations only answer. Mangum runs with ``lifespan="off"``: its
default runs the app's start-up and shut-down on every invocation. A load failure fails the
init, so Lambda reports it and the next invocation starts a fresh environment.

A REST API (and an HTTP API on a named stage) leaves the stage, or a custom domain's base path,
in the request path (``/prod/query``): ``RAG_API_GATEWAY_BASE_PATH=/prod`` strips it. A body
marked ``isBase64Encoded`` that is not base64 gets 400 problem+json in the front door's own
response shape, where Mangum would raise.

Deploy the container image with ``CMD ["functions.lambda_handler.handler"]`` on a Lambda base
image, or a zip of the virtual environment with this module as the handler.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from mangum import Mangum
from mangum.adapter import DEFAULT_TEXT_MIME_TYPES
from mangum.types import LambdaContext, LambdaEvent

from .app import create_app
from .composition import compose
from .edge import pick_request_id
from .logs import configure
from .problems import problem_body
from .settings import Settings, api_keys

__all__ = ["handler", "loader"]

logger = logging.getLogger(__name__)


class _Adapter(Mangum):
    """Mangum, but a body marked base64 that is not base64 gets 400 problem+json instead of an
    exception (which API Gateway and the ALB turn into a bare 502)."""

    def __call__(self, event: LambdaEvent, context: LambdaContext) -> dict[str, Any]:
        if not _invalid_base64(event):
            return super().__call__(event, context)
        front_door = self.infer(event, context)
        scope = front_door.scope
        request_id = pick_request_id(dict(scope["headers"]), event)
        logger.warning(
            "%s %s: 400 a body marked base64 is not base64", scope["method"], scope["path"]
        )
        body = problem_body(400, "the request body is marked base64 (isBase64Encoded) but is not")
        return front_door(
            {
                "status": 400,
                "headers": [
                    [b"content-type", b"application/problem+json"],
                    [b"x-request-id", request_id.encode()],
                ],
                "body": json.dumps(body).encode(),
            }
        )


def _invalid_base64(event: LambdaEvent) -> bool:
    if not isinstance(event, dict) or not event.get("isBase64Encoded"):
        return False
    try:
        base64.b64decode(event.get("body") or b"", validate=True)
    except (binascii.Error, ValueError, TypeError):  # not base64, or not even text
        return True
    return False


_settings = Settings()
# Keeps the Lambda runtime's handler (its format is the function's LoggingConfig).
configure(_settings.log_level, secrets=api_keys(_settings), log_format=_settings.log_format)
loader = compose(_settings)
loader.load()  # at init, once per execution environment; raises with the reason if it cannot
handler = _Adapter(
    create_app(_settings, loader=loader),
    lifespan="off",
    # The stage or custom-domain base path API Gateway leaves in the path (/prod/query).
    api_gateway_base_path=_settings.api_gateway_base_path.rstrip("/") or "/",
    # Errors are problem+json: text, not base64, for API Gateway, the ALB and function URLs.
    text_mime_types=[*DEFAULT_TEXT_MIME_TYPES, "application/problem+json"],
)

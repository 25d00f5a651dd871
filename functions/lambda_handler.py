"""AWS Lambda: the query function's app behind API Gateway, an ALB or a function URL, via Mangum.

The index is loaded once per execution environment, during Lambda's init phase, by the same
loader the HTTP app uses; invocations only answer. Mangum runs with ``lifespan="off"``: its
default runs the app's start-up and shut-down on every invocation. A load failure fails the
init, so Lambda reports it and the next invocation starts a fresh environment.

Deploy the container image with ``CMD ["functions.lambda_handler.handler"]`` on a Lambda base
image, or a zip of the virtual environment with this module as the handler.
"""

from __future__ import annotations

from mangum import Mangum
from mangum.adapter import DEFAULT_TEXT_MIME_TYPES

from .app import create_app
from .loader import IndexLoader
from .logs import configure
from .settings import Settings, api_keys

__all__ = ["handler", "loader"]

_settings = Settings()
# Keeps the Lambda runtime's handler (its format is the function's LoggingConfig).
configure(_settings.log_level, secrets=api_keys(_settings), log_format=_settings.log_format)
loader = IndexLoader(_settings)
loader.load()  # at init, once per execution environment; raises with the reason if it cannot
handler = Mangum(
    create_app(_settings, loader=loader),
    lifespan="off",
    # Errors are problem+json: text, not base64, for API Gateway, the ALB and function URLs.
    text_mime_types=[*DEFAULT_TEXT_MIME_TYPES, "application/problem+json"],
)

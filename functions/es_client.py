"""Elasticsearch clients as the settings describe them, and their failures as ``RagError``s.

Shared by the builder (``index_builder.elastic``, which loads indexes and moves aliases) and the
query function's backend (``functions.elastic``). Credentials come only from the environment
(API key, or username and password) and a CA bundle from a file; messages name the URL with any
credentials in it redacted, never a key or a password. Neither ever calls ``info()`` or
``ping()``: they ``GET /``, which some clusters (and API keys without the monitor privilege) do
not serve.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elastic_transport import ConnectionTimeout, SerializationError, TransportError
from elasticsearch import ApiError

from .errors import (
    ConfigurationError,
    ElasticsearchError,
    ElasticsearchTimeout,
    ElasticsearchUnavailable,
)

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["client_options", "credentials", "explained", "reason"]


def credentials(settings: Settings) -> dict[str, Any]:
    """The ``RAG_ELASTICSEARCH_*`` credentials and CA bundle, as ``client_options`` takes them."""
    api_key, password = settings.elasticsearch_api_key, settings.elasticsearch_password
    return {
        "api_key": api_key.get_secret_value() if api_key else None,
        "username": settings.elasticsearch_username,
        "password": password.get_secret_value() if password else None,
        "ca_file": settings.elasticsearch_ca_file,
    }


def client_options(
    *,
    api_key: str | None = None,
    username: str | None = None,
    password: str | None = None,
    ca_file: Path | None = None,
) -> dict[str, Any]:
    """The client's authentication and TLS options; refuses settings that cannot work."""
    options: dict[str, Any] = {}
    if api_key and (username or password):
        raise ConfigurationError(
            "Elasticsearch: set an API key or a username and password, not both"
        )
    if api_key:
        options["api_key"] = api_key
    elif username or password:
        if not (username and password):
            raise ConfigurationError("Elasticsearch: a username and a password go together")
        options["basic_auth"] = (username, password)
    if ca_file is not None:
        options["ca_certs"] = str(ca_file)
    return options


@contextmanager
def explained(url: str, doing: str, timeout_s: float) -> Iterator[None]:
    """Elasticsearch's and its transport's exceptions as one-line errors: unreachable, 429 and
    5xx are ``ElasticsearchUnavailable`` (transient), no answer in time ``ElasticsearchTimeout``,
    the rest ``ElasticsearchError``. ``url`` must be redacted already."""
    try:
        yield
    except ApiError as exc:
        status, said = exc.meta.status, reason(exc.body)
        if status == 401:
            raise ElasticsearchError(
                f"{url} refused the credentials (401) while trying to {doing}: set "
                "RAG_ELASTICSEARCH_API_KEY, or RAG_ELASTICSEARCH_USERNAME and _PASSWORD"
            ) from exc
        if status == 403:
            raise ElasticsearchError(
                f"the credentials may not {doing} at {url} (403: {said})"
            ) from exc
        error = ElasticsearchUnavailable if status == 429 or status >= 500 else ElasticsearchError
        raise error(f"{url} could not {doing}: {status} {said}") from exc
    except ConnectionTimeout as exc:
        raise ElasticsearchTimeout(
            f"{url} did not answer within {timeout_s:g} s while trying to {doing}"
        ) from exc
    except SerializationError as exc:
        raise ElasticsearchError(
            f"{url} did not answer as Elasticsearch does while trying to {doing}"
        ) from exc
    except TransportError as exc:  # refused, unresolvable, TLS
        found = re.search(r"\[Errno -?\d+\][^)'\"]*|certificate verify failed[^)'\"]*", exc.message)
        why = found.group(0) if found else type(exc).__name__
        raise ElasticsearchUnavailable(
            f"{url} is unreachable ({why}) while trying to {doing}"
        ) from exc


def reason(body: Any) -> str:
    """The root cause Elasticsearch gave in an error body."""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        causes = error.get("root_cause") or [error]
        return str(causes[0].get("reason") or causes[0].get("type") or error)
    return str(error)

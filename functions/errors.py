"""The one error hierarchy of knative-rag.

Every error the query function or the index builder raises on purpose is a ``RagError``. Each
class carries the HTTP status and the RFC 9457 title it is rendered with at the HTTP edge; the CLI
prints its message as a one-line reason. Clients see the message only of errors about their own
request (``exposed``); the rest may name hosts, buckets and files, and are logged instead.
Foreign exceptions (botocore, httpx, numpy, LlamaIndex) are translated where that library is
used, with ``raise ... from exc``.

    RagError                       500  base class; never raised directly
    ├── ConfigurationError         500  settings that cannot work together
    ├── InvalidRequest             400  a request the function cannot answer as asked
    │   ├── UnsupportedFilter      400  a metadata filter the index cannot evaluate
    │   ├── ContextTooLong         413  a conversation longer than the LLM's context window takes
    │   ├── InvalidEvent           400  a CloudEvent that is malformed or lacks a required attribute
    │   ├── UnsupportedEventFormat 415  a CloudEvents format (a Content-Type) it cannot read
    │   └── UnsupportedEventType   400  a CloudEvent of a type this function does not handle
    ├── NotReady                   503  no index is loaded (yet, or loading failed)
    ├── DeadlineExceeded           504  the request ran past its deadline (RAG_REQUEST_TIMEOUT_S)
    ├── ModelBusy                  503  all LLM answer slots are taken (RAG_LLM_MAX_CONCURRENCY)
    ├── StoreError                 502  the object store failed or refused an operation
    │   ├── ObjectNotFound         404  a key, index or channel does not exist
    │   └── WriteConflict          409  a conditional write lost (a channel moved, a key exists)
    ├── ArtifactError              500  an index artifact that must not be served
    │   ├── IntegrityError         500  a file is missing, truncated or fails its sha256
    │   ├── UnsupportedFormat      500  a manifest of a format version this build cannot read
    │   └── IndexTooLarge          500  the index would not fit the memory budget (RAG_MAX_INDEX_MB)
    ├── ModelMismatch              500  the configured embedding model differs from the index's
    ├── ElasticsearchError         502  Elasticsearch failed or refused an operation
    │   └── ElasticsearchUnavailable 503  unreachable, overloaded (429, 5xx), an index gone
    │       └── ElasticsearchTimeout 504  Elasticsearch did not answer in time
    ├── PostgresError              502  PostgreSQL failed or refused an operation
    │   └── PostgresUnavailable    503  unreachable, too many connections, an index gone
    │       └── PostgresTimeout    504  PostgreSQL did not answer in time
    └── UpstreamError              503  the embedding model or LLM server failed (Retry-After)
        └── UpstreamTimeout        504  the embedding model or LLM server did not answer in time
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ConfigurationError",
    "ContextTooLong",
    "DeadlineExceeded",
    "ElasticsearchError",
    "ElasticsearchTimeout",
    "ElasticsearchUnavailable",
    "IndexTooLarge",
    "IntegrityError",
    "InvalidEvent",
    "InvalidRequest",
    "ModelBusy",
    "ModelMismatch",
    "NotReady",
    "ObjectNotFound",
    "PostgresError",
    "PostgresTimeout",
    "PostgresUnavailable",
    "RagError",
    "StoreError",
    "UnsupportedEventFormat",
    "UnsupportedEventType",
    "UnsupportedFilter",
    "UnsupportedFormat",
    "UpstreamError",
    "UpstreamTimeout",
    "WriteConflict",
]


class RagError(Exception):
    """Base class of every error knative-rag raises on purpose.

    ``message`` may name hosts, buckets, keys and files: it goes to logs. Clients see it only
    where ``exposed`` says it describes their own request; otherwise they see ``public``: what
    the raiser said is safe to tell, or that the logs have the details.
    """

    status: int = 500
    title: str = "Internal error"
    exposed: bool = False
    transient: bool = False  # may pass by itself: worth retrying (a cold start does)

    def __init__(
        self, message: str, *, public: str | None = None, transient: bool | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self._public = public
        if transient is not None:
            self.transient = transient

    @property
    def public(self) -> str:
        """What a client may be told."""
        if self._public is not None:
            return self._public
        return self.message if self.exposed else f"{self.title}; the details are in the logs"


class ConfigurationError(RagError):
    """The settings cannot work together."""

    title = "Configuration error"


class InvalidRequest(RagError):
    """The request is well-formed but cannot be answered as asked."""

    status = 400
    title = "Invalid request"
    exposed = True


class UnsupportedFilter(InvalidRequest):
    """A metadata filter uses an operator or key the index cannot evaluate."""

    title = "Unsupported filter"


class ContextTooLong(InvalidRequest):
    """A conversation too long for the LLM's context window, refused before any model call."""

    status = 413
    title = "Conversation too long for the model"


class InvalidEvent(InvalidRequest):
    """A CloudEvent that is malformed or lacks a required attribute (not retried)."""

    title = "Invalid CloudEvent"


class UnsupportedEventFormat(InvalidRequest):
    """A CloudEvents format this function cannot read, e.g. ``application/cloudevents+xml``."""

    status = 415
    title = "Unsupported CloudEvents format"


class UnsupportedEventType(InvalidRequest):
    """A CloudEvent of a type this function does not handle (not retried)."""

    title = "Unsupported event type"


class NotReady(RagError):
    """No index is loaded: it is still loading, or loading failed."""

    status = 503
    title = "Index not ready"
    exposed = True


class DeadlineExceeded(RagError):
    """The request ran past its deadline; the client may retry."""

    status = 504
    title = "Request deadline exceeded"
    exposed = True


class ModelBusy(RagError):
    """As many LLM answers are in flight in this process as allowed; the client may retry."""

    status = 503
    title = "Too many answers in progress"
    exposed = True
    transient = True


class StoreError(RagError):
    """The object store failed or refused an operation."""

    status = 502
    title = "Object store error"
    transient = True  # unreachable, throttled, 5xx; the store says which are not


class ObjectNotFound(StoreError):
    """A key, index or channel does not exist in the store."""

    status = 404
    title = "Not found"
    transient = False


class WriteConflict(StoreError):
    """A conditional write lost: someone else moved the channel or created the key first."""

    status = 409
    title = "Conditional write lost"
    transient = False


class ArtifactError(RagError):
    """An index artifact that must not be served."""

    title = "Invalid index artifact"
    exposed = True  # names index ids, artifact files and models: nothing internal


class IntegrityError(ArtifactError):
    """A file of the artifact is missing, truncated or fails its sha256."""

    title = "Index artifact integrity check failed"


class UnsupportedFormat(ArtifactError):
    """The manifest declares a format version this build cannot read."""

    title = "Unsupported index format"


class IndexTooLarge(ArtifactError):
    """The index would not fit the memory budget (``RAG_MAX_INDEX_MB``)."""

    title = "Index larger than the memory budget"


class ModelMismatch(RagError):
    """The configured embedding model does not produce the vectors the index was built with."""

    title = "Embedding model mismatch"
    exposed = True  # names index ids, artifact files and models: nothing internal


class ElasticsearchError(RagError):
    """Elasticsearch failed or refused an operation: credentials, a mapping, a load, a query."""

    status = 502
    title = "Elasticsearch error"


class ElasticsearchUnavailable(ElasticsearchError):
    """Elasticsearch is unreachable or overloaded, or the index went away; retry shortly."""

    status = 503
    title = "Elasticsearch unavailable"
    transient = True


class ElasticsearchTimeout(ElasticsearchUnavailable):
    """Elasticsearch did not answer within RAG_ELASTICSEARCH_TIMEOUT_S."""

    status = 504
    title = "Elasticsearch timed out"


class PostgresError(RagError):
    """PostgreSQL failed or refused an operation: credentials, a missing extension, a load."""

    status = 502
    title = "PostgreSQL error"


class PostgresUnavailable(PostgresError):
    """PostgreSQL is unreachable, out of connections, or the index went away; retry shortly."""

    status = 503
    title = "PostgreSQL unavailable"
    transient = True


class PostgresTimeout(PostgresUnavailable):
    """PostgreSQL did not answer within RAG_POSTGRES_TIMEOUT_S."""

    status = 504
    title = "PostgreSQL timed out"


class UpstreamError(RagError):
    """The embedding model server or the LLM failed; the client may retry shortly."""

    status = 503
    title = "Model server unavailable"
    transient = True  # down, restarting, overloaded; a missing model is not


class UpstreamTimeout(UpstreamError):
    """The embedding model server or the LLM did not answer in time."""

    status = 504
    title = "Model server timed out"

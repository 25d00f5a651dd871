"""Settings, read from the environment once at each entrypoint and passed down as arguments.

Our own variables carry the ``RAG_`` prefix; where the ecosystem has a variable of its own
(``PORT``, ``OLLAMA_HOST``, ``K_REVISION``, ``K_SINK`` and boto3's ``AWS_*``) we read that instead.
botocore reads ``AWS_ENDPOINT_URL_S3``, ``AWS_DEFAULT_REGION`` and the credential variables by
itself; the S3 client takes its region from ``AWS_REGION`` first (``functions.s3``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError
from .oidc import TokenVerifier

__all__ = ["Settings", "api_keys", "token_verifier"]


class Settings(BaseSettings):
    """Every setting of the query function and the index builder."""

    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore", frozen=True)

    store_uri: str | None = Field(
        None, description="Where indexes live: s3://bucket/prefix, file:///path or a path."
    )
    source_uri: str | None = Field(
        None, description="Builder: the documents, a folder or s3://bucket/prefix."
    )
    index: str = Field("stable", description="Channel name to follow, or an index id to pin.")
    backend: Literal["artifact", "elasticsearch", "postgres"] = Field(
        "artifact",
        description="Where the function's vectors live: artifact = downloaded from the store "
        "and held in memory; elasticsearch = the index the builder loaded into "
        "RAG_ELASTICSEARCH_URL; postgres = the table the builder loaded into PostgreSQL "
        "(RAG_POSTGRES_DSN or the PG* variables); nothing downloaded for either.",
    )
    retrieval: Literal["dense", "hybrid"] = Field(
        "dense",
        description="dense = kNN on the embeddings; hybrid = kNN + BM25 on the text in one "
        "search, scores added (elasticsearch backend only).",
    )
    cache_dir: Path = Field(
        Path("/tmp/knative-rag"), description="Where downloaded artifacts are kept."
    )
    embed_provider: Literal["ollama", "local"] = Field("ollama", description="Embedding provider.")
    embed_model: str | None = Field(
        None,
        description="Embedding model; default: the index's own model.",
    )
    embed_batch_size: int = Field(
        32, ge=1, le=1024, description="Texts per embedding request (builder)."
    )
    llm_provider: Literal["ollama", "none"] = Field(
        "ollama", description="LLM for answer mode; none = extractive."
    )
    llm_model: str = Field("llama3.2", description="Ollama chat model for answer mode.")
    llm_context_window: int = Field(
        8192, ge=512, description="Context window sent to Ollama as num_ctx."
    )
    llm_timeout_s: float = Field(120.0, gt=0, description="Timeout of one LLM call.")
    llm_max_tokens: int = Field(
        1024,
        ge=16,
        description="Most tokens one LLM call may write (Ollama's num_predict); at most half "
        "the context window is kept for it.",
    )
    llm_max_concurrency: int = Field(
        8,
        ge=1,
        description="LLM answers (and chat turns) in flight per process before new ones get "
        "503 + Retry-After.",
    )
    probe_min_cosine: float = Field(
        0.99, ge=-1, le=1, description="Least probe similarity to become ready."
    )
    chunk_size: int | None = Field(
        None,
        ge=32,
        description="SentenceSplitter chunk size in tokens (builder); default 512, 200 for local.",
    )
    chunk_overlap: int = Field(
        64, ge=0, description="SentenceSplitter overlap in tokens (builder)."
    )
    on_unreadable: Literal["skip", "fail"] = Field(
        "skip",
        description="Builder: a source file that cannot be read is skipped (and reported) or "
        "fails the build.",
    )
    max_file_mb: int = Field(
        50, ge=1, description="Builder: a source file of more MiB than this is unreadable."
    )
    max_pdf_pages: int = Field(
        2000, ge=1, description="Builder: a PDF of more pages than this is unreadable."
    )
    max_file_chars: int = Field(
        5_000_000, ge=1, description="Builder: a file of more characters of text is unreadable."
    )
    max_chunks: int = Field(
        1_000_000, ge=1, description="Builder: a build of more chunks fails before embedding."
    )
    eval_questions: str | None = Field(
        None,
        description="Builder and release: the question set (a path or s3://bucket/key); when "
        "set, build --channel and promote move a channel only past the quality gate.",
    )
    eval_k: int = Field(10, ge=1, le=100, description="Evaluation: hit rate and MRR at this k.")
    eval_metric: Literal["mrr", "hit_rate"] = Field(
        "mrr", description="Quality gate: the figure compared."
    )
    eval_tolerance: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Quality gate: how far below the serving index's figure a candidate may be.",
    )
    eval_floor: float | None = Field(
        None, ge=0, le=1, description="Quality gate: the least figure a candidate must reach."
    )
    download_concurrency: int = Field(
        8, ge=1, le=64, description="Parallel ranged GETs per file from S3; 1 = one streaming GET."
    )
    on_demand: Literal["auto", "off"] = Field(
        "auto",
        description="auto = from an S3 store, answer from the index's partitions by ranged "
        "reads while the whole index downloads, then from memory; off = answer only once it "
        "has downloaded.",
    )
    on_demand_probes: int = Field(
        16,
        ge=1,
        le=4096,
        description="Partitions a query reads on demand: more = better recall, more bytes.",
    )
    warm_search: Literal["auto", "exact", "partitions"] = Field(
        "auto",
        description="How the index in memory answers a query without filters: exact = every "
        "vector; partitions = the RAG_WARM_PROBES nearest partitions, re-ranked exactly (an "
        "index with a partition index); auto = partitions from 250,000 chunks up, else exact.",
    )
    warm_probes: int = Field(
        96,
        ge=1,
        le=65536,
        description="Partitions a query scores in memory with RAG_WARM_SEARCH=partitions: more "
        "= better recall, more time.",
    )
    max_index_mb: int | None = Field(
        None,
        ge=1,
        description=(
            "Largest index to load, MiB (its files' total size); default: what the container's "
            "memory limit leaves, halved when following a channel (hot reloads hold two)."
        ),
    )
    startup_timeout_s: float = Field(
        120.0, gt=0, description="python -m functions exits non-zero if not ready by then."
    )
    api_keys: str | None = Field(
        None, description="Comma-separated API keys; unset (and no file) = open service."
    )
    api_keys_file: Path | None = Field(
        None, description="A file with one API key per line (a mounted Secret)."
    )
    oidc_issuer: str | None = Field(
        None,
        description=(
            "Knative Eventing OIDC: the issuer (iss) of the tokens on /events, the cluster's "
            "service-account issuer; unset = no token checks."
        ),
    )
    oidc_audience: str | None = Field(
        None, description="The audience (aud) those tokens must carry: the Triggers' audience."
    )
    oidc_jwks_url: str | None = Field(
        None,
        description="Where the issuer's keys are; default: OpenID discovery under the issuer.",
    )
    oidc_ca_file: Path | None = Field(
        None, description="CA bundle trusted when fetching the keys (the cluster's ca.crt)."
    )
    oidc_token_file: Path | None = Field(
        None,
        description="A bearer token sent when fetching the keys (a projected service-account "
        "token), read at each fetch.",
    )
    oidc_subjects: str | None = Field(
        None,
        description=(
            "Comma-separated subjects (sub) allowed to deliver events; a trailing * matches a "
            "prefix; unset = any subject of the issuer."
        ),
    )
    oidc_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Timeout of one discovery or key fetch."
    )
    request_timeout_s: float = Field(
        140.0, gt=0, description="Deadline of one query (504); keep it below the platform's."
    )
    max_body_bytes: int = Field(65536, ge=1024, description="Largest request body, bytes (413).")
    max_concurrency: int = Field(
        64, ge=1, description="Requests in flight before new ones get 503 + Retry-After."
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request body must arrive whole within this many seconds after its head "
        "(else 408 and the connection closes); it does not count as in flight until then.",
    )
    body_idle_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Longest pause, seconds, between two pieces of a request body (else 408).",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="python -m functions: a connection that has not sent a whole request head "
        "this many seconds after it opened or after its last response is closed.",
    )
    max_connections: int = Field(
        256,
        ge=1,
        description="python -m functions: open connections; a new one beyond it closes the one "
        "waiting longest with no request in the app (no head yet, idle, or a body arriving).",
    )
    reload_min_interval_s: float = Field(
        1.0,
        ge=0,
        description="Least time between the starts of two hot reloads; index-published events "
        "meanwhile are coalesced into one reload after the running one.",
    )
    api_gateway_base_path: str = Field(
        "/",
        pattern=r"^/",
        description="AWS Lambda: the API Gateway stage or custom-domain base path before the "
        "routes in request paths (/prod), stripped; / = none.",
    )
    elasticsearch_url: str | None = Field(
        None,
        description="The Elasticsearch that the builder loads published indexes into "
        "(--elasticsearch) and that RAG_BACKEND=elasticsearch serves from; unset or empty = "
        "none.",
    )
    elasticsearch_api_key: SecretStr | None = Field(
        None, description="Elasticsearch API key (base64 id:key); or username and password."
    )
    elasticsearch_username: str | None = Field(None, description="Elasticsearch basic auth user.")
    elasticsearch_password: SecretStr | None = Field(
        None, description="Elasticsearch basic auth password."
    )
    elasticsearch_ca_file: Path | None = Field(
        None, description="CA bundle trusted for an https Elasticsearch URL."
    )
    elasticsearch_index_prefix: str = Field(
        "knative-rag",
        pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$",
        description="Elasticsearch names: <prefix>-<index id> for indexes, <prefix>-<channel> "
        "for the channels' aliases.",
    )
    elasticsearch_replicas: int = Field(
        1, ge=0, description="number_of_replicas of each Elasticsearch index the builder creates."
    )
    elasticsearch_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Timeout of one Elasticsearch request, seconds (a search past it is 504).",
    )
    elasticsearch_num_candidates: int = Field(
        1000,
        ge=1,
        le=10000,
        description="kNN candidates per segment a search considers (at least top_k): recall "
        "against cost. Recall@10 0.99 on uniform random 768-d vectors needs 1000 at 10k chunks, "
        "5000 at 100k (bench/elasticsearch_recall.py); raise it with the corpus.",
    )
    postgres_dsn: SecretStr | None = Field(
        None,
        description="The PostgreSQL (with pgvector) that the builder loads published indexes "
        "into (--postgres) and that RAG_BACKEND=postgres serves from: a libpq connection string "
        "or postgresql:// URI; empty = libpq's own PGHOST, PGUSER, PGPASSWORD... Never logged.",
    )
    postgres_schema: str = Field(
        "knative_rag",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema of the indexes (one table each), their facts and the "
        "channels' pointers; the builder and the function must agree.",
    )
    postgres_pool_size: int = Field(
        4, ge=1, le=64, description="Most PostgreSQL connections one function process holds."
    )
    postgres_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Connecting, waiting for a pooled connection and each statement, seconds "
        "(a search past it is 504).",
    )
    postgres_ef_search: int = Field(
        500,
        ge=1,
        le=1000,
        description="hnsw.ef_search of unfiltered searches (at least top_k): recall against "
        "cost. Recall@10 on 10k uniform random 768-d vectors (the hard case): 0.98 at 300, 0.995 "
        "at 400, 0.998 at 500 (bench/postgres_recall.py). Filtered and id-restricted searches "
        "are exact.",
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log lines as JSON objects or text; auto = JSON unless on a terminal."
    )
    ollama_host: str = Field(
        "http://127.0.0.1:11434",
        validation_alias=AliasChoices("OLLAMA_HOST"),
        description="Ollama server.",
    )
    port: int = Field(
        8080, validation_alias=AliasChoices("PORT"), description="HTTP port (Knative sets it)."
    )
    service: str | None = Field(
        None,
        validation_alias=AliasChoices("K_SERVICE"),
        description="Knative service name, if any.",
    )
    sink: str | None = Field(
        None,
        validation_alias=AliasChoices("K_SINK"),
        description="Builder: where to send index.published.",
    )
    revision: str | None = Field(
        None,
        validation_alias=AliasChoices("K_REVISION"),
        description="Knative revision name, if any.",
    )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """The settings ``environ`` holds, read exactly as from the process's environment:
        Knative Functions hands ``start(cfg)`` a copy of it, which is the configuration to use.
        """
        from pydantic_settings import EnvSettingsSource, PydanticBaseSettingsSource
        from pydantic_settings.sources.utils import parse_env_vars

        class Given(EnvSettingsSource):
            def _load_env_vars(self) -> Mapping[str, str | None]:
                return parse_env_vars(
                    environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
                )

        class FromEnviron(cls):  # type: ignore[valid-type,misc]
            @classmethod
            def settings_customise_sources(
                cls,
                settings_cls: type[BaseSettings],
                init_settings: PydanticBaseSettingsSource,
                env_settings: PydanticBaseSettingsSource,
                dotenv_settings: PydanticBaseSettingsSource,
                file_secret_settings: PydanticBaseSettingsSource,
            ) -> tuple[PydanticBaseSettingsSource, ...]:
                del env_settings, dotenv_settings, file_secret_settings  # the process's own
                return (init_settings, Given(settings_cls))

        settings: Settings = FromEnviron()
        return settings


def api_keys(settings: Settings) -> list[str]:
    """The configured API keys, from the variable and the mounted file."""
    keys = [key.strip() for key in (settings.api_keys or "").split(",")]
    if settings.api_keys_file is not None:
        try:
            keys += [line.strip() for line in settings.api_keys_file.read_text().splitlines()]
        except OSError as exc:
            raise ConfigurationError(f"RAG_API_KEYS_FILE cannot be read: {exc.strerror}") from exc
    return [key for key in keys if key]


def token_verifier(settings: Settings) -> TokenVerifier | None:
    """The verifier of Knative Eventing OIDC tokens the settings describe; None without them."""
    if settings.oidc_issuer is None and settings.oidc_audience is None:
        return None
    if not settings.oidc_issuer or not settings.oidc_audience:
        raise ConfigurationError("RAG_OIDC_ISSUER and RAG_OIDC_AUDIENCE go together: set both")
    try:
        return TokenVerifier(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url,
            ca_file=settings.oidc_ca_file,
            token_file=settings.oidc_token_file,
            subjects=(settings.oidc_subjects or "").split(","),
            timeout_s=settings.oidc_timeout_s,
        )
    except (ValueError, OSError) as exc:  # a bad URL; RAG_OIDC_CA_FILE missing or not PEM
        raise ConfigurationError(f"the OIDC settings cannot work: {exc}") from exc

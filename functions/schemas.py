"""The HTTP API's request and response bodies, and the examples ``/docs`` shows for them and
for the routes without a body model (readiness, metrics, CloudEvents, SSE)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "EVENT_EXAMPLE",
    "MAX_MESSAGES",
    "METRICS_EXAMPLE",
    "QUERY_RESPONSE_EXAMPLE",
    "READY_EXAMPLE",
    "SSE_EXAMPLE",
    "ChatRequest",
    "Message",
    "QueryRequest",
    "QueryResponse",
    "SourceModel",
]

FilterValue = str | int | float | bool


def _json_integer(value: Any) -> Any:
    """What the schema's ``integer`` admits (5, 5.0), not what pydantic's lax mode turns into
    one (true, "5")."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


Integer = Annotated[int, BeforeValidator(_json_integer)]
MAX_MESSAGES = 20  # a conversation's turns sent back by the client, the last one included
_SOURCE_EXAMPLE: dict[str, Any] = {
    "id": "channels.md#2",
    "score": 0.83,
    "text": "The builder moves a channel with a compare-and-swap on its pointer...",
    "metadata": {"source": "channels.md", "file_name": "channels.md"},
}


QUERY_RESPONSE_EXAMPLE: dict[str, Any] = {
    "answer": "A channel moves by compare-and-swap on its pointer [1].",
    "answer_type": "generated",
    "sources": [_SOURCE_EXAMPLE],
    "cited": ["channels.md#2"],
    "index_id": "20261127-081500-3f2a9c1d",
}


class QueryRequest(BaseModel):
    """The body of ``POST /query``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"query": "How do channels move?", "top_k": 3, "mode": "answer"},
                {
                    "query": "compare-and-swap",
                    "top_k": 5,
                    "mode": "retrieve",
                    "filters": {"file_name": "channels.md"},
                },
            ]
        },
    )

    query: str = Field(min_length=1, max_length=4096, description="The question.")
    top_k: Integer = Field(5, ge=1, le=50, description="How many sources to return.")
    mode: Literal["answer", "retrieve"] = Field(
        "answer", description="Answer with an LLM, or only retrieve."
    )
    filters: dict[str, FilterValue] = Field(
        default_factory=dict,
        max_length=16,
        description="Metadata equality filters, all must match.",
    )


class Message(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(min_length=1, max_length=4096)


def _last_is_the_users(schema: dict[str, Any]) -> None:
    """States "the last message is the user's" in the schema itself.

    JSON Schema has no keyword for an array's last item, but a conversation has at most
    ``MAX_MESSAGES`` messages: one branch per length, each pinning the role of its last item,
    says exactly what the validator below accepts.
    """
    last: dict[str, Any] = {"properties": {"role": {"const": "user"}}}
    schema["anyOf"] = [
        {"minItems": n, "maxItems": n, "prefixItems": [*({} for _ in range(n - 1)), last]}
        for n in range(1, MAX_MESSAGES + 1)
    ]


class ChatRequest(BaseModel):
    """The body of ``POST /chat``: the whole conversation so far, kept by the client."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "messages": [
                        {"role": "user", "content": "What is a channel?"},
                        {
                            "role": "assistant",
                            "content": "A channel is a small pointer to an index [1].",
                        },
                        {"role": "user", "content": "And how does it move?"},
                    ],
                    "top_k": 3,
                }
            ]
        },
    )

    messages: list[Message] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description=(
            f"The conversation, oldest first, at most {MAX_MESSAGES} messages; the last one is "
            "the user's new message. The server keeps nothing between requests."
        ),
        json_schema_extra=_last_is_the_users,
    )
    top_k: Integer = Field(5, ge=1, le=50, description="How many sources to retrieve.")
    filters: dict[str, FilterValue] = Field(
        default_factory=dict, max_length=16, description="Metadata equality filters."
    )

    @model_validator(mode="after")
    def _ends_with_the_user(self) -> ChatRequest:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must be the user's")
        return self


class SourceModel(BaseModel):
    """One source chunk."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SOURCE_EXAMPLE]})

    id: str
    score: float
    text: str
    metadata: dict[str, Any]


class QueryResponse(BaseModel):
    """An answer from ``POST /query`` or ``POST /chat`` (and the data of the SSE end event)."""

    model_config = ConfigDict(json_schema_extra={"examples": [QUERY_RESPONSE_EXAMPLE]})

    answer: str | None = Field(description="The answer; null in retrieve mode.")
    answer_type: Literal["generated", "extractive"] | None = Field(
        description="generated by the LLM, or extractive (sentences of the sources, no LLM)."
    )
    sources: list[SourceModel] = Field(
        description="The sources, best first; an LLM's [n] cites sources[n-1]."
    )
    cited: list[str] = Field(
        default_factory=list,
        description="Ids of the sources the answer cites, first citation first; empty in "
        "retrieve mode.",
    )
    index_id: str = Field(description="The index that answered.")


METRICS_EXAMPLE = (
    "# HELP knative_rag_requests_total HTTP requests answered, by route template, method and "
    "status.\n# TYPE knative_rag_requests_total counter\n"
    'knative_rag_requests_total{method="POST",route="/query",status="200"} 42.0\n'
    'knative_rag_index_info{embed_model="nomic-embed-text",embed_provider="ollama",'
    'format_version="1",index_id="20261127-081500-3f2a9c1d",revision="rag-query-00002"} 1.0\n'
)
READY_EXAMPLE = {
    "status": "ready",
    "index_id": "20261127-081500-3f2a9c1d",
    "started_at": 1795770000.1,
    "ready_at": 1795770000.9,
    "timings_s": {"imports": 0.41, "fetch_and_verify": 0.62, "map": 0.001, "model_check": 0.02},
    "reloads": {"succeeded": 1},
}
EVENT_EXAMPLE = {
    "specversion": "1.0",
    "type": "dev.knative-rag.query.request",
    "source": "my-app/questions",
    "id": "b6c0d2d4-1f3a-4c44-9d0e-0a6c7f1e2b3c",
    "datacontenttype": "application/json",
    "data": {"query": "How do channels move?", "mode": "retrieve", "top_k": 3},
}
SSE_EXAMPLE = (
    'event: token\ndata: {"text":"A channel moves"}\n\n'
    'event: token\ndata: {"text":" by compare-and-swap [1]."}\n\n'
    'event: end\ndata: {"answer":"A channel moves by compare-and-swap [1].",'
    '"answer_type":"generated","sources":[...],"cited":["channels.md#2"],'
    '"index_id":"20261127-081500-3f2a9c1d"}\n\n'
)

"""The real Elasticsearch that scripts/elasticsearch.py runs: what our code may rely on, and what
the test distribution lacks (docs/elasticsearch-test-server.md), pinned against the server."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

DIMS = 8
TOPICS = ["rivers", "volcanoes", "glaciers", "deserts"]


@dataclass(frozen=True)
class Corpus:
    """200 unit vectors with a keyword topic and a sentence each."""

    vectors: np.ndarray
    topics: list[str]
    texts: list[str]


@pytest.fixture(scope="module")
def es(elasticsearch_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=elasticsearch_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def names(es: httpx.Client) -> Iterator[list[str]]:
    """Index names this module creates; all deleted at its end."""
    created: list[str] = []
    yield created
    if created:
        es.delete(f"/{','.join(created)}", params={"ignore_unavailable": "true"})


def _name(names: list[str]) -> str:
    names.append(f"rag-test-{uuid.uuid4().hex[:12]}")
    return names[-1]


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    rng = np.random.default_rng(15)
    vectors = rng.standard_normal((200, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    topics = [TOPICS[i % len(TOPICS)] for i in range(200)]
    texts = [f"Note {i} is about {topic}." for i, topic in enumerate(topics)]
    return Corpus(vectors, topics, texts)


def _create(
    es: httpx.Client, name: str, index_options: str = "hnsw", meta: dict[str, Any] | None = None
) -> None:
    mappings: dict[str, Any] = {
        "dynamic": "strict",
        "properties": {
            "embedding": {
                "type": "dense_vector",
                "dims": DIMS,
                "similarity": "dot_product",
                "index": True,
                "index_options": {"type": index_options},
            },
            "topic": {"type": "keyword"},
            "text": {"type": "text"},
        },
    }
    if meta is not None:
        mappings["_meta"] = meta
    settings = {"number_of_shards": 1, "number_of_replicas": 0}
    response = es.put(f"/{name}", json={"settings": settings, "mappings": mappings})
    assert response.json() == {"acknowledged": True, "shards_acknowledged": True, "index": name}


def _load(es: httpx.Client, name: str, corpus: Corpus, count: int = 200) -> None:
    lines = []
    for i in range(count):
        lines.append(json.dumps({"index": {"_id": str(i)}}))
        document = {"embedding": corpus.vectors[i].tolist(), "topic": corpus.topics[i]}
        lines.append(json.dumps({**document, "text": corpus.texts[i]}))
    response = es.post(
        f"/{name}/_bulk",
        params={"refresh": "wait_for"},
        content="\n".join(lines) + "\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 200
    assert response.json()["errors"] is False
    assert es.get(f"/{name}/_count").json()["count"] == count


@pytest.fixture(scope="module")
def index(es: httpx.Client, names: list[str], corpus: Corpus) -> str:
    """The corpus in an hnsw index."""
    name = _name(names)
    _create(es, name)
    _load(es, name, corpus)
    return name


def _queries(count: int = 20) -> np.ndarray:
    queries = np.random.default_rng(16).standard_normal((count, DIMS)).astype(np.float32)
    return np.asarray(queries / np.linalg.norm(queries, axis=1, keepdims=True))


def _exact(corpus: Corpus, query: np.ndarray, allowed: list[int] | None = None) -> list[str]:
    ids = np.arange(len(corpus.vectors)) if allowed is None else np.asarray(allowed)
    scores = corpus.vectors[ids] @ query
    return [str(ids[i]) for i in np.argsort(-scores, kind="stable")[:10]]


def test_the_cluster_is_green_with_one_node(es: httpx.Client) -> None:
    health = es.get("/_cluster/health").json()
    assert (health["status"], health["number_of_nodes"]) == ("green", 1)


def test_the_version_is_reported(es: httpx.Client) -> None:
    nodes = es.get("/_nodes/_local", params={"filter_path": "nodes.*.version"}).json()["nodes"]
    [node] = nodes.values()
    assert re.fullmatch(r"(8|9)\.\d+\.\d+", node["version"]), node


@pytest.mark.parametrize(
    "index_options",
    ["hnsw", "int8_hnsw", "int4_hnsw", "bbq_hnsw", "flat", "int8_flat", "int4_flat", "bbq_flat"],
)
def test_every_index_options_type_is_accepted(
    es: httpx.Client, names: list[str], index_options: str
) -> None:
    name = _name(names)
    field = {"type": "dense_vector", "dims": 64, "similarity": "cosine", "index": True}
    mapping = {"properties": {"v": {**field, "index_options": {"type": index_options}}}}
    response = es.put(f"/{name}", json={"mappings": mapping})
    assert response.json() == {"acknowledged": True, "shards_acknowledged": True, "index": name}


@pytest.mark.parametrize(
    ("index_options", "rescore"),
    [("hnsw", None), ("int8_hnsw", {"oversample": 3.0})],
    ids=["hnsw", "int8_hnsw-rescored"],
)
def test_knn_top_10_is_the_exact_ranking(
    es: httpx.Client,
    names: list[str],
    corpus: Corpus,
    index_options: str,
    rescore: dict[str, float] | None,
) -> None:
    """k=10 from 100 candidates over 200 vectors: the exact top 10, in order, scored (1 + dot) / 2.
    Without the rescore, int8_hnsw is approximate (docs/elasticsearch-test-server.md)."""
    name = _name(names)
    _create(es, name, index_options)
    _load(es, name, corpus)
    for query in _queries():
        knn: dict[str, Any] = {
            "field": "embedding",
            "query_vector": query.tolist(),
            "k": 10,
            "num_candidates": 100,
        }
        if rescore is not None:
            knn["rescore_vector"] = rescore
        hits = es.post(f"/{name}/_search", json={"knn": knn, "size": 10, "_source": False})
        got = [(hit["_id"], hit["_score"]) for hit in hits.json()["hits"]["hits"]]
        exact = _exact(corpus, query)
        assert [hit_id for hit_id, _ in got] == exact
        expected_scores = [(1 + float(corpus.vectors[int(i)] @ query)) / 2 for i in exact]
        assert [score for _, score in got] == pytest.approx(expected_scores, abs=1e-6)


def test_knn_with_a_keyword_filter_ranks_exactly_among_the_matches(
    es: httpx.Client, index: str, corpus: Corpus
) -> None:
    allowed = [i for i, topic in enumerate(corpus.topics) if topic == "glaciers"]
    for query in _queries(5):
        knn = {
            "field": "embedding",
            "query_vector": query.tolist(),
            "k": 10,
            "num_candidates": 100,
            "filter": {"term": {"topic": "glaciers"}},
        }
        hits = es.post(f"/{index}/_search", json={"knn": knn, "size": 10, "_source": False})
        assert [hit["_id"] for hit in hits.json()["hits"]["hits"]] == _exact(corpus, query, allowed)


def test_a_bm25_match_finds_every_document_with_the_word(
    es: httpx.Client, index: str, corpus: Corpus
) -> None:
    body = {"query": {"match": {"text": "glaciers"}}, "size": 200, "_source": False}
    hits = es.post(f"/{index}/_search", json=body).json()["hits"]
    expected = [str(i) for i, topic in enumerate(corpus.topics) if topic == "glaciers"]
    assert hits["total"] == {"value": 50, "relation": "eq"}
    assert sorted(hit["_id"] for hit in hits["hits"]) == sorted(expected)


def test_the_mapping_meta_is_stored_and_read_back(es: httpx.Client, names: list[str]) -> None:
    meta = {
        "index_id": "20260101T000000Z-0123456789ab",
        "embedding": {"provider": "ollama", "model": "nomic-embed-text", "dim": DIMS},
        "probe": [0.125, -0.5],
        "chunks": 200,
    }
    name = _name(names)
    _create(es, name, meta=meta)
    assert es.get(f"/{name}/_mapping").json()[name]["mappings"]["_meta"] == meta


def test_an_alias_moves_atomically_with_one_request(
    es: httpx.Client, names: list[str], index: str, corpus: Corpus
) -> None:
    alias, new = f"rag-alias-{uuid.uuid4().hex[:12]}", _name(names)
    _create(es, new)
    _load(es, new, corpus, count=10)
    add = {"actions": [{"add": {"index": index, "alias": alias}}]}
    assert es.post("/_aliases", json=add).json() == {"acknowledged": True, "errors": False}
    assert es.get(f"/{alias}/_count").json()["count"] == 200
    move = {
        "actions": [
            {"remove": {"index": index, "alias": alias}},
            {"add": {"index": new, "alias": alias}},
        ]
    }
    assert es.post("/_aliases", json=move).json() == {"acknowledged": True, "errors": False}
    assert es.get(f"/_alias/{alias}").json() == {new: {"aliases": {alias: {}}}}
    assert es.get(f"/{alias}/_count").json()["count"] == 10


@dataclass(frozen=True)
class Capability:
    """A request, the module a full distribution serves it with (None: the server itself), and
    the status and reason the test distribution answers where that module is missing."""

    module: str | None
    method: str
    path: str
    body: dict[str, Any] | None
    refused: tuple[int, str] | None = None


_KNN = {"field": "embedding", "query_vector": [1.0] + [0.0] * (DIMS - 1), "k": 3}
_SCRIPT = "dotProduct(params.q, 'embedding') + 1.0"
CAPABILITIES = {
    "painless-script-score": Capability(
        "lang-painless",
        "POST",
        "/{index}/_search",
        {
            "query": {
                "script_score": {
                    "query": {"match_all": {}},
                    "script": {"source": _SCRIPT, "params": {"q": _KNN["query_vector"]}},
                }
            }
        },
        (400, "failed to create query: script_lang not supported [painless]"),
    ),
    "reindex": Capability(
        "reindex",
        "POST",
        "/_reindex",
        {"source": {"index": "{index}"}, "dest": {"index": "{index}-copy"}},
        (
            405,
            "Incorrect HTTP method for uri [/_reindex] and method [POST], "
            "allowed: [GET, PUT, DELETE, HEAD]",
        ),
    ),
    "delete-by-query": Capability(
        "reindex",
        "POST",
        "/{index}/_delete_by_query",
        {"query": {"match_none": {}}},
        (400, "no handler found for uri [/{index}/_delete_by_query] and method [POST]"),
    ),
    "english-analyzer": Capability(
        "analysis-common",
        "PUT",
        "/{index}-english",
        {"mappings": {"properties": {"text": {"type": "text", "analyzer": "english"}}}},
        (400, "Failed to parse mapping: analyzer [english] has not been configured in mappings"),
    ),
    "stop-filter": Capability(
        None,
        "POST",
        "/_analyze",
        {"tokenizer": "standard", "filter": ["lowercase", "stop"], "text": "The rivers"},
    ),
    "rrf-retriever": Capability(
        "rank-rrf",
        "POST",
        "/{index}/_search",
        {
            "retriever": {
                "rrf": {
                    "retrievers": [
                        {"standard": {"query": {"match": {"text": "rivers"}}}},
                        {"knn": {**_KNN, "num_candidates": 10}},
                    ]
                }
            }
        },
        (400, "unknown retriever [rrf]"),
    ),
    "knn-plus-match": Capability(
        None,
        "POST",
        "/{index}/_search",
        {"query": {"match": {"text": "rivers"}}, "knn": {**_KNN, "num_candidates": 10}},
    ),
    "root-info": Capability(
        "rest-root",
        "GET",
        "/",
        None,
        (405, "Incorrect HTTP method for uri [/] and method [GET], allowed: [DELETE]"),
    ),
}


@pytest.fixture(scope="module")
def modules(es: httpx.Client) -> set[str]:
    """The modules and plugins the server loaded."""
    nodes = es.get("/_nodes/_local/plugins").json()["nodes"]
    [node] = nodes.values()
    return {entry["name"] for entry in node["modules"] + node["plugins"]}


def _reason(response: httpx.Response) -> str:
    error = response.json()["error"]
    return error if isinstance(error, str) else str(error["root_cause"][0]["reason"])


@pytest.mark.parametrize("capability", CAPABILITIES.values(), ids=CAPABILITIES.keys())
def test_a_capability_works_exactly_when_its_module_is_loaded(
    es: httpx.Client, names: list[str], index: str, modules: set[str], capability: Capability
) -> None:
    names.extend([f"{index}-copy", f"{index}-english"])  # what a full distribution creates
    body = json.loads(json.dumps(capability.body).replace("{index}", index))
    response = es.request(capability.method, capability.path.format(index=index), json=body)
    if capability.module is None or capability.module in modules:
        assert response.status_code == 200, response.text
    else:
        assert capability.refused is not None
        status, reason = capability.refused
        assert (response.status_code, _reason(response)) == (status, reason.format(index=index))

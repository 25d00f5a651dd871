"""The quality gate: question sets, evaluation (against LlamaIndex's own evaluator as the oracle),
stored results, the gate's boundaries, and gated builds and promotions on the command line with
the real all-MiniLM-L6-v2 over the repository's docs/ and its question set.

Over 400 lines: one module for the gate's whole path (set, scores, storage, decision, the CLI's
builds, promotions and events, each backend), sharing the model and the built index it loads
once."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.quality import replace_half
from functions.artifact import NodeRecord
from functions.catalog import fetch_artifact, read_manifest, read_pointer
from functions.embeddings import LocalEmbedder
from functions.errors import ConfigurationError
from functions.events import INDEX_PROMOTION_REFUSED, INDEX_PUBLISHED
from functions.storage import open_store
from index_builder.__main__ import main
from index_builder.publish import catalog, collect_garbage
from index_builder.quality import (
    EXIT_REFUSED,
    Evaluation,
    Gate,
    Question,
    artifact_evaluator,
    decide,
    parse_questions,
    read_questions,
    result_key,
    score,
)

from .test_announcements import sink

pytestmark = pytest.mark.semantic

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ROOT / "tests" / "data" / "questions.json"
COUNT = len(json.loads(QUESTIONS.read_text())["questions"])


# -- question sets -------------------------------------------------------------------------


def test_a_bare_list_is_the_same_set_as_an_object_and_formatting_does_not_count() -> None:
    items = [{"question": "Why?", "sources": ["a.md"]}, {"question": "How?", "sources": ["b.md"]}]
    listed = parse_questions(json.dumps(items).encode(), "x")
    wrapped = parse_questions(json.dumps({"questions": items}, indent=4).encode(), "x")
    assert listed.sha256 == wrapped.sha256
    noted = {
        "questions": items,
        "generated": {"by": "ollama:llama3.2", "from_index": "x", "at": "2026-12-04T00:00:00Z"},
    }
    assert parse_questions(json.dumps(noted).encode(), "x").sha256 == listed.sha256
    assert parse_questions(json.dumps(items[::-1]).encode(), "x").sha256 != listed.sha256


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not JSON"),
        (b"[]", "questions: List should have at least 1 item"),
        (b'[{"question": "Why?"}]', "questions.0.sources: Field required"),
        (b'[{"question": "Why?", "sources": []}]', "questions.0.sources: List should have"),
        (b'[{"question": "", "sources": ["a"]}]', "questions.0.question: String should have"),
        (b'[{"question": "Why?", "sources": ["a"], "answer": "x"}]', "Extra inputs"),
        (b'{"items": []}', "questions: Field required"),
    ],
)
def test_a_bad_question_set_is_refused_with_where_and_what(content: bytes, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_questions(content, "q.json")
    assert "question set q.json" in raised.value.message
    assert message in raised.value.message


def test_a_missing_question_set_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot be read"):
        read_questions(str(tmp_path / "none.json"))


def test_the_repository_question_set_parses() -> None:
    questions = read_questions(str(QUESTIONS))
    assert len(questions.questions) >= 20
    assert questions.generated is None


def test_relevance_by_source_or_document_id_and_by_span() -> None:
    record = NodeRecord(
        "n1", "report.pdf#2", "The Limit is  AT MOST\n50 results.", {"source": "report.pdf"}
    )
    assert Question(question="q", sources=["report.pdf"]).relevant(record)
    assert Question(question="q", sources=["report.pdf#2"]).relevant(record)
    assert not Question(question="q", sources=["report.pdf#3"]).relevant(record)
    assert Question(question="q", sources=["report.pdf"], text="at most 50").relevant(record)
    assert not Question(question="q", sources=["report.pdf"], text="at least 50").relevant(record)
    assert not Question(question="q", sources=["other.pdf"], text="at most 50").relevant(record)


@given(st.lists(st.sampled_from(["a.md", "b.md", "c.md", "d.md#1"]), max_size=12))
def test_scores_equal_llamaindex_metrics_on_every_relevant_chunk_id(sources: list[str]) -> None:
    """Ours give every relevant chunk one id; LlamaIndex's metrics, given each relevant chunk's
    own id as expected (as RetrieverEvaluator users pass them), must agree."""
    from llama_index.core.evaluation.retrieval.metrics import MRR, HitRate

    question = Question(question="q", sources=["a.md", "d.md#1"])
    records = [
        NodeRecord(f"n{i}", source, "text", {"source": source.split("#")[0]})
        for i, source in enumerate(sources)
    ]
    scored = score(question, records)
    expected = [r.id for r in records if question.relevant(r)] or ["none"]
    retrieved = [r.id for r in records]
    if retrieved:
        assert scored.hit == HitRate().compute(expected_ids=expected, retrieved_ids=retrieved).score
        assert (
            scored.reciprocal_rank
            == MRR().compute(expected_ids=expected, retrieved_ids=retrieved).score
        )
    else:
        assert (scored.hit, scored.reciprocal_rank, scored.rank) == (0.0, 0.0, None)


# -- the gate's arithmetic -----------------------------------------------------------------


def _evaluation(index_id: str, mrr: float, hit_rate: float = 1.0) -> Evaluation:
    return Evaluation(
        index_id=index_id,
        backend="artifact",
        model="local:all-MiniLM-L6-v2",
        k=10,
        questions_sha256="0" * 64,
        questions=28,
        hit_rate=hit_rate,
        mrr=mrr,
        evaluated_at=datetime.now(UTC),
        seconds=0.0,
        results=[],
    )


@pytest.mark.parametrize(
    ("serving", "candidate", "gate", "passed"),
    [
        (0.75, 0.75, Gate(tolerance=0), True),  # a tie passes, even with no tolerance
        (0.75, 0.75 - 1 / 28, Gate(tolerance=0), False),  # one question a rank worse
        (25 / 28, 25 / 28 - 0.02, Gate(tolerance=0.02), True),  # exactly the tolerance
        (25 / 28, 25 / 28 - 0.0201, Gate(tolerance=0.02), False),  # just beyond it
        (0.5, 0.9, Gate(), True),  # better
        (0.9, 0.8, Gate(floor=0.8, tolerance=0.2), True),  # exactly the floor
        (0.9, 0.79, Gate(floor=0.8, tolerance=0.2), False),  # below the floor, within tolerance
        (None, 0.1, Gate(), True),  # nothing serves yet: only a floor can refuse
        (None, 0.1, Gate(floor=0.5), False),
    ],
)
def test_the_gate_passes_ties_and_the_tolerance_boundary(
    serving: float | None, candidate: float, gate: Gate, passed: bool
) -> None:
    current = _evaluation("20261204-000000-00000000", serving) if serving is not None else None
    decision = decide(gate, _evaluation("20261204-000001-00000001", candidate), current)
    assert decision.passed is passed, decision.reason
    data = decision.event_data()
    assert data["decision"] == ("passed" if passed else "refused")
    assert data["candidate"]["mrr"] == candidate
    assert data["serving"] == (current.summary() if current else None)


def test_the_gate_compares_the_metric_it_is_given() -> None:
    current = _evaluation("20261204-000000-00000000", 0.9, hit_rate=1.0)
    candidate = _evaluation("20261204-000001-00000001", 0.95, hit_rate=0.9)
    assert decide(Gate(metric="mrr"), candidate, current).passed
    refused = decide(Gate(metric="hit_rate"), candidate, current)
    assert not refused.passed
    assert refused.reason == (
        "hit_rate 0.9000 is 0.1000 below the serving index's 1.0000 (tolerance 0.02)"
    )


# -- evaluation on a real index ------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture(scope="module")
def docs_index(
    tmp_path_factory: pytest.TempPathFactory, embedder: LocalEmbedder
) -> tuple[str, str]:
    """The repository's docs/ built with the local model; (store, index id)."""
    from index_builder.job import run_build

    store = str(tmp_path_factory.mktemp("docs-store"))
    manifest = run_build(open_store(store), str(ROOT / "docs"), embedder, channel=None)
    return store, manifest.index_id


def test_evaluation_agrees_with_llamaindex_retriever_evaluator(
    docs_index: tuple[str, str], embedder: LocalEmbedder, tmp_path: Path
) -> None:
    """The oracle: LlamaIndex's RetrieverEvaluator with its own in-memory vector store over the
    same chunks and vectors, expecting the ids of every relevant chunk."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.evaluation import RetrieverEvaluator
    from llama_index.core.schema import TextNode

    from functions.engine import EmbedderAdapter

    store_uri, index_id = docs_index
    store = open_store(store_uri)
    questions = read_questions(str(QUESTIONS))
    evaluator = artifact_evaluator(store, questions, lambda *_: embedder, k=5)
    ours = evaluator._compute(index_id)  # computed here, not read back
    artifact = fetch_artifact(store, read_manifest(store, index_id), tmp_path)
    records = [artifact.record(row) for row in range(len(artifact))]
    nodes = [
        TextNode(id_=r.id, text=r.text, embedding=artifact.vectors[row].tolist())
        for row, r in enumerate(records)
    ]
    retriever = VectorStoreIndex(nodes, embed_model=EmbedderAdapter(embedder)).as_retriever(
        similarity_top_k=5
    )
    oracle = RetrieverEvaluator.from_metric_names(["hit_rate", "mrr"], retriever=retriever)
    for question, result in zip(questions.questions, ours.results, strict=True):
        expected = [r.id for r in records if question.relevant(r)]
        theirs = oracle.evaluate(question.question, expected_ids=expected).metric_vals_dict
        assert (result.hit, result.reciprocal_rank) == pytest.approx(
            (theirs["hit_rate"], theirs["mrr"])
        ), question.question
    evaluator.close()


def test_results_are_stored_beside_the_index_once_and_reused(
    docs_index: tuple[str, str], embedder: LocalEmbedder
) -> None:
    store_uri, index_id = docs_index
    store = open_store(store_uri)
    questions = read_questions(str(QUESTIONS))
    calls: list[str] = []

    class Counting:
        provider, model = embedder.provider, embedder.model

        def embed_query(self, text: str) -> Any:
            calls.append(text)
            return embedder.embed_query(text)

        def embed_documents(self, texts: list[str]) -> Any:
            return embedder.embed_documents(texts)

    first = artifact_evaluator(store, questions, lambda *_: Counting(), k=7)
    evaluation = first.evaluate(index_id)
    assert first.computed == 1
    assert len(calls) == len(questions.questions) + 1
    key = result_key(index_id, questions.sha256, "artifact", 7)
    assert Evaluation.model_validate_json(store.get(key).data) == evaluation
    again = artifact_evaluator(store, questions, lambda *_: Counting(), k=7)
    assert again.evaluate(index_id) == evaluation
    assert again.computed == 0
    assert len(calls) == len(questions.questions) + 1
    other_k = artifact_evaluator(store, questions, lambda *_: Counting(), k=3)
    assert other_k.evaluate(index_id).k == 3
    assert other_k.computed == 1
    for evaluator in (first, again, other_k):
        evaluator.close()
    # The index's listing is its artifact alone; gc deletes the results with the index.
    (info,) = [i for i in catalog(store)[0] if i.index_id == index_id]
    assert info.complete
    assert info.size == sum(f.size for f in read_manifest(store, index_id).files.values()) + len(
        store.get(f"indexes/{index_id}/manifest.json").data
    )


# -- gated builds on the command line ------------------------------------------------------


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", folder)
    return folder


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("RAG_EMBED_PROVIDER", "local")
    monkeypatch.setenv("RAG_EVAL_QUESTIONS", str(QUESTIONS))
    store = str(tmp_path / "store")

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(["--store", store, *args])
        out, err = capsys.readouterr()
        return status, out, err

    run.store = store  # type: ignore[attr-defined]
    return run


def test_a_rebuild_of_unrelated_text_is_refused_and_stays_published(
    cli: Any, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, out, err = cli(
        "build", "--source", str(docs), "--channel", "stable", "--create-channel"
    )
    assert status == 0, err
    serving = out.strip()
    assert f"quality gate (mrr at k=10, tolerance 0.02; {COUNT} questions" in err
    assert "passed: no serving index to compare with" in err
    replace_half(docs)  # every other document: unrelated words
    with sink() as (url, received):
        monkeypatch.setenv("K_SINK", url)
        status, out, err = cli("build", "--source", str(docs), "--channel", "stable")
    assert status == EXIT_REFUSED == 4, err
    candidate = out.strip()
    store = open_store(cli.store)
    assert read_pointer(store, "stable").index_id == serving
    assert read_manifest(store, candidate).index_id == candidate  # published, complete
    assert "REFUSED: mrr" in err
    assert "below the serving index's" in err
    assert f"refused: channel stable not moved to {candidate}, which stays published" in err
    lines = {line.split()[0]: line.split() for line in err.splitlines() if line.startswith("  ")}
    assert lines["serving"][1] == serving
    assert lines["candidate"][1] == candidate
    (event,) = received
    assert event.get_type() == INDEX_PROMOTION_REFUSED
    data = event.get_data()
    assert (data["index_id"], data["channel"], data["serving"]) == (candidate, "stable", serving)
    quality = data["quality"]
    assert quality["decision"] == "refused"
    assert quality["metric"] == "mrr"
    assert quality["candidate"]["index_id"] == candidate
    assert quality["serving"]["mrr"] - quality["candidate"]["mrr"] > 0.2
    assert quality["questions"]["count"] == COUNT

    # Promoting it is gated too; --force moves the channel, and says it overrode the gate.
    status, _, err = cli("promote", "--channel", "stable", "--index", candidate)
    assert status == 4
    assert "REFUSED" in err
    assert read_pointer(store, "stable").index_id == serving
    status, out, err = cli("promote", "--channel", "stable", "--index", candidate, "--force")
    assert status == 0, err
    assert "REFUSED" in err
    assert f"quality gate overridden by --force: channel stable moved to {candidate}" in err
    assert out.strip() == f"channel stable -> {candidate}"
    assert read_pointer(store, "stable").index_id == candidate


def test_a_rebuild_that_adds_relevant_documents_passes_and_announces_its_figures(
    cli: Any, docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    half = tmp_path / "half"
    half.mkdir()
    for path in sorted(docs.glob("*.md"))[::2]:
        shutil.copy(path, half / path.name)
    status, out, err = cli(
        "build", "--source", str(half), "--channel", "stable", "--create-channel"
    )
    assert status == 0, err
    serving = out.strip()
    with sink() as (url, received):
        monkeypatch.setenv("K_SINK", url)
        status, out, err = cli("build", "--source", str(docs), "--channel", "stable")
    assert status == 0, err
    candidate = out.strip()
    assert read_pointer(open_store(cli.store), "stable").index_id == candidate
    (event,) = received
    assert event.get_type() == INDEX_PUBLISHED
    quality = event.get_data()["quality"]
    assert quality["decision"] == "passed"
    assert quality["forced"] is False
    assert quality["serving"]["index_id"] == serving
    assert quality["candidate"]["hit_rate"] > quality["serving"]["hit_rate"]
    assert quality["candidate"]["mrr"] > quality["serving"]["mrr"]


def test_eval_prints_json_off_a_terminal_and_a_table_on_request(cli: Any, docs: Path) -> None:
    status, out, err = cli(
        "build", "--source", str(docs), "--channel", "stable", "--create-channel"
    )
    assert status == 0, err
    index_id = out.strip()
    status, out, err = cli("eval", "stable", "--k", "3")
    assert status == 0, err
    evaluation = Evaluation.model_validate_json(out)
    assert (evaluation.index_id, evaluation.k, evaluation.questions) == (index_id, 3, COUNT)
    assert 0.8 <= evaluation.hit_rate <= 1
    assert 0 < evaluation.mrr <= evaluation.hit_rate
    status, out, err = cli("eval", index_id, "--k", "3", "--format", "table")
    assert status == 0, err
    assert out.splitlines()[-1] == (
        f"hit rate {evaluation.hit_rate:.4f}   MRR {evaluation.mrr:.4f}   "
        "(read back from the store)"
    )
    assert len(out.splitlines()) == COUNT + 3


def test_eval_without_a_question_set_is_a_clear_error(
    cli: Any, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAG_EVAL_QUESTIONS")
    status, _out, err = cli(
        "build", "--source", str(docs), "--channel", "stable", "--create-channel"
    )
    assert status == 0
    assert "quality gate" not in err
    status, _, err = cli("eval", "stable")
    assert status == 1
    assert err == (
        "error: Configuration error: no question set: pass --questions or set RAG_EVAL_QUESTIONS\n"
    )


# -- a question set drafted by the LLM -----------------------------------------------------


@pytest.fixture
def asking(ollama: Any) -> Iterator[Any]:
    double = ollama.double
    original = double.answer

    def questions(messages: list[dict[str, Any]]) -> str:
        return "1. What does the first line say?\n2) Which part follows it?\n"

    double.answer = questions
    yield ollama
    double.answer = original


def test_questions_drafts_a_set_marked_generated(
    cli: Any, docs: Path, asking: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", asking.url)
    status, out, err = cli(
        "build", "--source", str(docs), "--channel", "stable", "--create-channel"
    )
    assert status == 0, err
    index_id = out.strip()
    drafted = tmp_path / "drafted.json"
    status, _, err = cli(
        "questions", "stable", "--out", str(drafted), "--count", "5", "--per-chunk", "2"
    )
    assert status == 0, err
    assert "generated, review them before they gate a channel" in err
    questions = read_questions(str(drafted))
    assert questions.generated is not None
    assert questions.generated.from_index == index_id
    assert [q.question for q in questions.questions] == [
        "What does the first line say?",
        "Which part follows it?",
    ] * 5
    documents = {path.name for path in docs.glob("*.md")}
    assert {source for q in questions.questions for source in q.sources} <= documents
    # Each question's chunk was in the prompt the LLM read.
    prompts = ["\n".join(m["content"] for m in chat["messages"]) for chat in asking.double.chats]
    assert len(prompts) == 5
    status, _, err = cli("questions", "stable", "--out", str(drafted))
    assert status == 1
    assert "exists: the draft is never written over a file" in err


def test_gc_deletes_evaluations_with_their_index(cli: Any, docs: Path) -> None:
    status, out, err = cli("build", "--source", str(docs))
    assert status == 0, err
    index_id = out.strip()
    assert cli("eval", index_id)[0] == 0
    store = open_store(cli.store)
    assert [item.key for item in store.list_objects(f"indexes/{index_id}/eval/")]
    assert collect_garbage(store, 0).indexes == [index_id]
    assert not list(store.list_objects(f"indexes/{index_id}/"))


# -- the same evaluation through Elasticsearch and PostgreSQL ------------------------------


def _figures_by(cli: Any, index_id: str, *target: str) -> Evaluation:
    status, out, err = cli(*target, "eval", index_id)
    assert status == 0, err
    return Evaluation.model_validate_json(out)


def test_the_same_evaluation_through_postgresql(
    cli: Any, docs: Path, postgres: Any, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAG_POSTGRES_SCHEMA", pg_schema)
    target = ("--postgres", postgres.dsn)
    build = ("build", "--source", str(docs), "--channel", "stable", "--create-channel")
    status, out, err = cli(*target, *build)
    assert status == 0, err
    index_id = out.strip()
    # The gate evaluated it where it is served: PostgreSQL, at the configured ef_search.
    assert f"{COUNT} questions, set" in err
    assert "postgres-ef500): passed" in err
    artifact = _figures_by(cli, index_id)
    served = _figures_by(cli, index_id, *target)
    assert (artifact.backend, served.backend) == ("artifact", "postgres-ef500")
    # 70 chunks: HNSW finds the exact neighbours, so every question ranks alike.
    assert [r.rank for r in served.results] == [r.rank for r in artifact.results]
    assert (served.hit_rate, served.mrr) == (artifact.hit_rate, artifact.mrr)


def test_the_same_evaluation_through_elasticsearch(
    cli: Any, docs: Path, elasticsearch_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    import httpx

    prefix = f"t{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("RAG_ELASTICSEARCH_INDEX_PREFIX", prefix)
    monkeypatch.setenv("RAG_ELASTICSEARCH_REPLICAS", "0")
    target = ("--elasticsearch", elasticsearch_url)
    try:
        status, out, err = cli(*target, "build", "--source", str(docs))
        assert status == 0, err
        index_id = out.strip()
        artifact = _figures_by(cli, index_id)
        served = _figures_by(cli, index_id, *target)
        assert served.backend == "elasticsearch-dense-nc1000"
        assert [r.rank for r in served.results] == [r.rank for r in artifact.results]
        assert (served.hit_rate, served.mrr) == (artifact.hit_rate, artifact.mrr)
    finally:
        with httpx.Client(base_url=elasticsearch_url, timeout=60) as es:
            found = es.get(f"/{prefix}-*").json()
            if found:
                es.delete(f"/{','.join(found)}").raise_for_status()


def test_a_gate_that_cannot_evaluate_moves_nothing_and_force_moves_on(
    cli: Any, docs: Path, ollama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serving index was built with a model whose server is gone (a change of embedding
    model): the gate cannot score it, so the channel stays, unless forced."""
    monkeypatch.setenv("OLLAMA_HOST", ollama.url)
    monkeypatch.delenv("RAG_EVAL_QUESTIONS")  # ungated: no figures of it are stored
    status, out, err = cli(
        "build",
        "--source",
        str(docs),
        "--channel",
        "stable",
        "--create-channel",
        "--embed-provider",
        "ollama",
        "--embed-model",
        "nomic-embed-text",
    )
    assert status == 0, err
    serving = out.strip()
    monkeypatch.setenv("RAG_EVAL_QUESTIONS", str(QUESTIONS))
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    status, _, err = cli("build", "--source", str(docs), "--channel", "stable")
    assert status == 1, err
    assert "error: Quality gate unavailable: quality gate could not evaluate, so channel " in err
    store = open_store(cli.store)
    assert read_pointer(store, "stable").index_id == serving
    status, out, err = cli("build", "--source", str(docs), "--channel", "stable", "--force")
    assert status == 0, err
    assert "quality gate could not evaluate (moving on: --force)" in err
    assert read_pointer(store, "stable").index_id == out.strip()


def test_a_forced_build_past_a_refusal_announces_it(
    cli: Any, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("build", "--source", str(docs), "--channel", "stable", "--create-channel")[0] == 0
    replace_half(docs)  # every other document: unrelated words
    with sink() as (url, received):
        monkeypatch.setenv("K_SINK", url)
        status, out, err = cli("build", "--source", str(docs), "--channel", "stable", "--force")
    assert status == 0, err
    assert f"quality gate overridden by --force: channel stable moved to {out.strip()}" in err
    (event,) = received
    assert event.get_type() == INDEX_PUBLISHED
    quality = event.get_data()["quality"]
    assert quality["decision"] == "refused"
    assert quality["forced"] is True

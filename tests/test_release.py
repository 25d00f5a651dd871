"""make release: every blue-green step on the prod overlay, its refusals, and the quality gate on
green with two real indexes.

Over 400 lines: each step's refusals are cases of one state machine, checked on the same
release.yaml fixture; the gate's cases share the two indexes built once for the module.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from scripts import release

ROOT = Path(__file__).resolve().parent.parent
OLD, NEW, THIRD = "20261127-081500-3f2a9c1d", "20261128-060000-aaaabbbb", "20261129-060000-ccccdddd"
QUESTIONS = ROOT / "tests" / "data" / "questions.json"
UNGATED = "no question set (RAG_EVAL_QUESTIONS): green is not gated\n"
# Text about nothing the question set asks, in place of half of docs/ in the worse candidate.
UNRELATED = (
    "Sourdough starter wants flour and water fed twice a day; a warm kitchen makes it rise faster.",
    "Tomato seedlings grow leggy without enough light; plant them deep when moving them outdoors.",
    "A sloop carries one mast; reefing the mainsail early keeps her upright when the wind builds.",
    "The Sicilian Defence answers 1.e4 with c5 and leads to sharp, unbalanced middlegames.",
    "Herons stand motionless in shallow water and strike at fish with their long, sharp bills.",
    "Stoneware clay is fired hotter than earthenware and comes out of the kiln dense and strong.",
    "Jupiter's four large moons were first seen by Galileo through a small refracting telescope.",
)

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl renders the overlay"
)


@pytest.fixture(autouse=True)
def overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(ROOT / "knative", tmp_path / "knative")
    path = tmp_path / "knative" / "overlays" / "prod" / "release.yaml"
    monkeypatch.setattr(release, "RELEASE", path)
    monkeypatch.delenv("RAG_EVAL_QUESTIONS", raising=False)  # green is ungated unless a test says
    return path


def traffic() -> list[tuple[str, int, str]]:
    _, entries = release._load()
    return [(e["revisionName"].removeprefix("rag-query-"), e["percent"], e["tag"]) for e in entries]


def test_a_whole_blue_green_rollout_and_its_rollback(capsys: pytest.CaptureFixture[str]) -> None:
    assert release.main(["green", NEW]) == 0
    assert release._load()[0] == NEW
    assert traffic() == [(OLD, 100, "current"), (NEW, 0, "green")]
    assert release.main(["shift", "10"]) == 0
    assert traffic() == [(OLD, 90, "current"), (NEW, 10, "green")]
    assert release.main(["shift", "50"]) == 0
    assert release.main(["promote"]) == 0
    assert traffic() == [(NEW, 100, "current"), (OLD, 0, "previous")]
    assert release.main(["rollback"]) == 0
    assert traffic() == [(OLD, 100, "current"), (NEW, 0, "previous")]
    assert "100 %  rag-query-20261127-081500-3f2a9c1d  tag current" in capsys.readouterr().out


def test_init_pins_the_first_index_in_place_of_the_example() -> None:
    assert release.main(["init", NEW]) == 0
    assert release._load()[0] == NEW
    assert traffic() == [(NEW, 100, "current")]
    assert release.main(["init", NEW]) == 0  # again: nothing is dropped
    assert traffic() == [(NEW, 100, "current")]


def test_rollback_before_promotion_drops_green_to_zero() -> None:
    release.main(["green", NEW])
    release.main(["shift", "50"])
    assert release.main(["rollback"]) == 0
    assert traffic() == [(OLD, 100, "current"), (NEW, 0, "green")]


def test_init_force_starts_over_from_any_release() -> None:
    assert release.main(["green", NEW]) == 0
    assert release.main(["promote"]) == 0
    assert release.main(["green", THIRD]) == 0
    assert release.main(["init", THIRD, "--force"]) == 0
    assert release._load()[0] == THIRD
    assert traffic() == [(THIRD, 100, "current")]


def test_a_new_green_keeps_the_rollback_target() -> None:
    assert release.main(["green", NEW]) == 0
    assert release.main(["promote"]) == 0
    assert release.main(["green", THIRD]) == 0
    assert traffic() == [(NEW, 100, "current"), (THIRD, 0, "green"), (OLD, 0, "previous")]
    assert release.main(["shift", "20"]) == 0
    assert traffic() == [(NEW, 80, "current"), (THIRD, 20, "green"), (OLD, 0, "previous")]


def test_a_green_at_zero_may_be_replaced() -> None:
    assert release.main(["green", NEW]) == 0
    assert release.main(["green", THIRD]) == 0
    assert release._load()[0] == THIRD
    assert traffic() == [(OLD, 100, "current"), (THIRD, 0, "green")]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            [["green", NEW], ["promote"], ["rollback"], ["rollback"]],
            [(NEW, 100, "current"), (OLD, 0, "previous")],
        ),
        (
            [["green", NEW], ["promote"], ["green", THIRD], ["shift", "50"], ["rollback"]],
            [(NEW, 100, "current"), (THIRD, 0, "green"), (OLD, 0, "previous")],
        ),
        (
            [["green", NEW], ["promote"], ["green", THIRD], ["rollback"]],
            [(OLD, 100, "current"), (THIRD, 0, "green"), (NEW, 0, "previous")],
        ),
    ],
    ids=["twice-swaps-back", "green-traffic-first", "green-at-zero-then-previous"],
)
def test_rollback_undoes_the_last_move_of_traffic(
    steps: list[list[str]], expected: list[tuple[str, int, str]]
) -> None:
    for args in steps:
        assert release.main(args) == 0, args
    assert traffic() == expected


@pytest.mark.parametrize(
    ("steps", "last", "reason"),
    [
        ([], ["green", "not-an-id"], f"green needs one index id, like {OLD}"),
        ([], ["green"], f"green needs one index id, like {OLD}"),
        (
            [],
            ["green", OLD],
            f"{OLD} is the current revision, already serving; nothing to roll out",
        ),
        (
            [["green", NEW], ["promote"]],
            ["green", NEW],
            f"{NEW} is the current revision, already serving; nothing to roll out",
        ),
        (
            [["green", NEW], ["promote"]],
            ["green", OLD],
            f"{OLD} is the previous revision: use rollback instead",
        ),
        (
            [["green", NEW], ["shift", "10"]],
            ["green", THIRD],
            "green already takes traffic: promote or roll back first",
        ),
        (
            [["green", NEW], ["shift", "10"]],
            ["green", NEW],
            "green already takes traffic: promote or roll back first",
        ),
        ([], ["shift", "10", "--force"], "--force is for init and green only"),
        ([], ["shift", "10"], "shift needs a green revision: deploy one with green <index id>"),
        ([["green", NEW]], ["shift", "150"], "shift needs one percent 0..100, like shift 10"),
        ([["green", NEW]], ["shift", "-5"], "shift needs one percent 0..100, like shift 10"),
        ([["green", NEW]], ["shift", "ten"], "shift needs one percent 0..100, like shift 10"),
        ([["green", NEW]], ["shift"], "shift needs one percent 0..100, like shift 10"),
        ([], ["promote"], "nothing to promote: deploy a green revision first"),
        (
            [["green", NEW], ["promote"]],
            ["promote"],
            "nothing to promote: deploy a green revision first",
        ),
        ([["green", NEW]], ["promote", NEW], "promote takes no arguments"),
        (
            [],
            ["rollback"],
            "nothing to roll back to: no green takes traffic and no previous revision is kept",
        ),
        (
            [["green", NEW]],
            ["rollback"],
            "nothing to roll back to: no green takes traffic and no previous revision is kept",
        ),
        (
            [["green", NEW]],
            ["init", THIRD],
            f"init would drop green rag-query-{NEW}: pass --force to start over",
        ),
        (
            [["green", NEW], ["promote"]],
            ["init", THIRD],
            f"init would drop current rag-query-{NEW}, previous rag-query-{OLD}:"
            " pass --force to start over",
        ),
        (
            [["green", NEW], ["promote"], ["green", THIRD]],
            ["init", THIRD],
            f"init would drop current rag-query-{NEW}, green rag-query-{THIRD},"
            f" previous rag-query-{OLD}: pass --force to start over",
        ),
        (
            [["init", NEW]],
            ["init", THIRD],
            f"init would drop current rag-query-{NEW}: pass --force to start over",
        ),
        ([], ["init", "stable"], f"init needs one index id, like {OLD}"),
        (
            [],
            ["deploy"],
            "unknown step 'deploy': status, init, green, shift, promote or rollback",
        ),
        ([], ["status", "now"], "status takes no arguments"),
    ],
    ids=[
        "green-bad-id",
        "green-no-id",
        "green-current",
        "green-current-after-promote",
        "green-previous",
        "green-while-green-takes-traffic",
        "green-same-while-it-takes-traffic",
        "shift-force",
        "shift-no-green",
        "shift-over-100",
        "shift-negative",
        "shift-not-a-number",
        "shift-no-percent",
        "promote-no-green",
        "promote-twice",
        "promote-argument",
        "rollback-nothing",
        "rollback-green-at-zero",
        "init-over-green",
        "init-over-previous",
        "init-over-green-and-previous",
        "init-over-a-real-index",
        "init-bad-id",
        "unknown-step",
        "status-argument",
    ],
)
def test_a_refused_step_says_why_and_leaves_the_release_unchanged(
    overlay: Path,
    capsys: pytest.CaptureFixture[str],
    steps: list[list[str]],
    last: list[str],
    reason: str,
) -> None:
    for args in steps:
        assert release.main(args) == 0, args
    before = overlay.read_bytes()
    capsys.readouterr()
    assert release.main(last) == 1
    assert capsys.readouterr() == ("", f"refused: {reason}\n")
    assert overlay.read_bytes() == before


@pytest.mark.parametrize(
    "args",
    [["green", THIRD], ["shift", "10"], ["promote"], ["rollback"], ["init", THIRD]],
    ids=["green", "shift", "promote", "rollback", "init"],
)
def test_a_traffic_block_naming_one_revision_twice_is_refused(
    overlay: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    overlay.write_text(
        release._dump(
            NEW, [release._entry(OLD, 100, "current"), release._entry(OLD, 0, "previous")]
        )
    )
    before = overlay.read_bytes()
    assert release.main(args) == 1
    assert capsys.readouterr().err == (
        f"refused: release.yaml names rag-query-{OLD} in more than one traffic entry:"
        " fix it, or start over with init <index id> --force\n"
    )
    assert overlay.read_bytes() == before
    assert release.main(["init", THIRD, "--force"]) == 0
    assert traffic() == [(THIRD, 100, "current")]


def test_a_step_the_webhook_would_reject_is_refused(
    overlay: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = overlay.read_bytes()
    monkeypatch.setattr(
        release, "SERVICE", "other"
    )  # revision names no longer start with rag-query-
    assert release.main(["green", NEW]) == 1
    assert capsys.readouterr().err == (
        f"refused: rag-query: revision name 'other-{NEW}' must start with 'rag-query-';"
        f" rag-query: revision 'other-{NEW}' is not one of this service's\n"
    )
    assert overlay.read_bytes() == before


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A folder store with two real indexes: all of docs/, and docs/ with every other document
    replaced by unrelated text (the questions about those find nothing). Both are built on one
    channel so that the second reuses the first's vectors of the documents it keeps."""
    from functions.embeddings import LocalEmbedder
    from functions.storage import open_store
    from index_builder.job import run_build

    embedder = LocalEmbedder()
    store_uri = str(tmp_path_factory.mktemp("store"))
    store = open_store(store_uri)
    full = run_build(
        store, str(ROOT / "docs"), embedder, channel="test", create_channel=True
    ).index_id
    worse = tmp_path_factory.mktemp("worse")
    for n, doc in enumerate(sorted((ROOT / "docs").glob("*.md"))):
        if n % 2:
            (worse / f"unrelated-{n:02d}.md").write_text(f"# Notes\n\n{UNRELATED[n // 2]}\n")
        else:
            shutil.copy(doc, worse / doc.name)
    degraded = run_build(store, str(worse), embedder, channel="test").index_id
    return store_uri, full, degraded


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch, indexes: tuple[str, str, str]) -> tuple[str, str]:
    """The question set gates green, with the gate's defaults; the full and the worse index."""
    store_uri, full, degraded = indexes
    for name in ("RAG_BACKEND", "RAG_EVAL_K", "RAG_EVAL_METRIC", "RAG_EVAL_TOLERANCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RAG_EVAL_FLOOR", raising=False)
    monkeypatch.setenv("RAG_EVAL_QUESTIONS", str(QUESTIONS))
    monkeypatch.setenv("RAG_STORE_URI", store_uri)
    return full, degraded


def figures(err: str, label: str, index_id: str) -> tuple[float, float]:
    """The hit rate and MRR the gate's table prints for one index."""
    found = re.search(rf"^  {label} +{index_id} +([\d.]+) +([\d.]+)$", err, re.MULTILINE)
    assert found, err
    return float(found[1]), float(found[2])


@pytest.mark.semantic
def test_green_refuses_a_worse_candidate_and_shows_both_figures(
    overlay: Path, gated: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    full, degraded = gated
    assert release.main(["init", full]) == 0
    before = overlay.read_bytes()
    capsys.readouterr()
    assert release.main(["green", degraded]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    serving, candidate = figures(err, "serving", full), figures(err, "candidate", degraded)
    assert candidate[0] < serving[0]  # hit rate
    assert candidate[1] < serving[1] - 0.1  # MRR, well past the tolerance
    assert "REFUSED" in err
    last = err.splitlines()[-1]
    assert last.startswith("refused: mrr ")
    assert "below the serving index's" in last
    assert last.endswith(": pass --force to deploy it anyway")
    assert overlay.read_bytes() == before


@pytest.mark.semantic
def test_green_force_deploys_a_worse_candidate_and_says_so(
    gated: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    full, degraded = gated
    assert release.main(["init", full]) == 0
    capsys.readouterr()
    assert release.main(["green", degraded, "--force"]) == 0
    out, err = capsys.readouterr()
    assert traffic() == [(full, 100, "current"), (degraded, 0, "green")]
    assert f"100 %  rag-query-{full}  tag current" in out
    figures(err, "serving", full)
    figures(err, "candidate", degraded)
    assert "REFUSED" in err
    assert f"quality gate overridden by --force: deploying {degraded}" in err


@pytest.mark.semantic
def test_green_passes_a_candidate_no_worse(
    gated: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    full, degraded = gated
    assert release.main(["init", degraded]) == 0
    capsys.readouterr()
    assert release.main(["green", full]) == 0
    err = capsys.readouterr().err
    assert traffic() == [(degraded, 100, "current"), (full, 0, "green")]
    assert figures(err, "candidate", full)[1] >= figures(err, "serving", degraded)[1]
    assert "): passed: mrr " in err
    assert "refused" not in err


@pytest.mark.semantic
def test_green_over_the_shipped_example_has_no_serving_index(
    monkeypatch: pytest.MonkeyPatch, gated: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, degraded = gated
    assert release.main(["green", degraded]) == 0
    err = capsys.readouterr().err
    assert "passed: no serving index to compare with" in err
    assert "  serving " not in err
    figures(err, "candidate", degraded)
    # The floor still holds where there is nothing to compare with.
    monkeypatch.setenv("RAG_EVAL_FLOOR", "0.9")
    assert release.main(["green", degraded]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("refused: mrr ")


@pytest.mark.semantic
def test_green_of_an_index_missing_from_the_store_is_refused(
    overlay: Path, gated: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = overlay.read_bytes()
    assert release.main(["green", NEW]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("refused: ")
    assert err.count("\n") == 1
    assert NEW in err
    assert overlay.read_bytes() == before


def test_green_without_a_question_set_is_not_gated(capsys: pytest.CaptureFixture[str]) -> None:
    assert release.main(["green", NEW, "--force"]) == 0
    assert traffic() == [(OLD, 100, "current"), (NEW, 0, "green")]
    assert capsys.readouterr().err == UNGATED


def test_a_question_set_without_a_store_is_refused(
    overlay: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAG_EVAL_QUESTIONS", str(QUESTIONS))
    monkeypatch.delenv("RAG_STORE_URI", raising=False)
    before = overlay.read_bytes()
    assert release.main(["green", NEW]) == 1
    assert capsys.readouterr() == (
        "",
        "refused: RAG_EVAL_QUESTIONS is set but RAG_STORE_URI is not: the quality gate reads"
        " both indexes from the store (set it, or unset RAG_EVAL_QUESTIONS to deploy ungated)\n",
    )
    assert overlay.read_bytes() == before


def test_a_green_refused_by_its_checks_evaluates_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A question set that cannot be read: the step's own refusal comes first, and alone.
    monkeypatch.setenv("RAG_EVAL_QUESTIONS", str(ROOT / "no-such-questions.json"))
    monkeypatch.setenv("RAG_STORE_URI", str(ROOT / "no-such-store"))
    assert release.main(["green", OLD]) == 1
    assert capsys.readouterr() == (
        "",
        f"refused: {OLD} is the current revision, already serving; nothing to roll out\n",
    )

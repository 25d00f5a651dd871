from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scripts import release

ROOT = Path(__file__).resolve().parent.parent
OLD, NEW, THIRD = "20261127-081500-3f2a9c1d", "20261128-060000-aaaabbbb", "20261129-060000-ccccdddd"

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl renders the overlay"
)


@pytest.fixture(autouse=True)
def overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(ROOT / "knative", tmp_path / "knative")
    path = tmp_path / "knative" / "overlays" / "prod" / "release.yaml"
    monkeypatch.setattr(release, "RELEASE", path)
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
        ([], ["green", NEW, "--force"], "--force is for init only"),
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
        "green-force",
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

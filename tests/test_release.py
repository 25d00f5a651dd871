from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scripts import release

ROOT = Path(__file__).resolve().parent.parent
OLD, NEW = "20261127-081500-3f2a9c1d", "20261128-060000-aaaabbbb"

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


def test_init_pins_the_first_index() -> None:
    assert release.main(["init", NEW]) == 0
    assert release._load()[0] == NEW
    assert traffic() == [(NEW, 100, "current")]


def test_rollback_before_promotion_drops_green_to_zero() -> None:
    release.main(["green", NEW])
    release.main(["shift", "50"])
    assert release.main(["rollback"]) == 0
    assert traffic() == [(OLD, 100, "current"), (NEW, 0, "green")]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([["green", "not-an-id"]], "needs one index id"),
        ([["shift", "10"]], "needs a green revision"),
        ([["green", NEW], ["shift", "150"]], "percent 0..100"),
        ([["green", NEW], ["shift", "10"], ["green", NEW]], "already takes traffic"),
        ([["promote"]], "nothing to promote"),
        ([["rollback"]], "nothing to roll back"),
    ],
    ids=["bad-id", "no-green", "percent", "green-twice", "promote", "rollback"],
)
def test_refused_steps_leave_the_release_unchanged(
    overlay: Path, steps: list[list[str]], message: str
) -> None:
    *setup, last = steps
    for args in setup:
        assert release.main(args) == 0
    before = overlay.read_text()
    with pytest.raises(SystemExit, match=message):
        release.main(last)
    assert overlay.read_text() == before


def test_a_step_the_webhook_would_reject_is_refused(
    overlay: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = overlay.read_text()
    monkeypatch.setattr(
        release, "SERVICE", "other"
    )  # revision names no longer start with rag-query-
    assert release.main(["green", NEW]) == 1
    assert "must start with 'rag-query-'" in capsys.readouterr().err
    assert overlay.read_text() == before

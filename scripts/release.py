"""Blue-green between index versions: render the prod overlay's next revision and traffic block.

    python -m scripts.release status
    python -m scripts.release init <index id>    # the first deployment: that index at 100 %
    python -m scripts.release init <index id> --force   # start over: drop every other revision
    python -m scripts.release green <index id>   # the new index's revision at 0 %, tag green
    python -m scripts.release green <index id> --force  # deploy it whatever the quality gate says
    python -m scripts.release shift <percent>    # send <percent> of requests to green
    python -m scripts.release promote            # green takes 100 %; the old one stays, tagged
    python -m scripts.release rollback           # undo the last move of traffic (see below)

The traffic block names at most three revisions, each once: ``current``, ``green`` (the candidate)
and ``previous`` (the rollback target, kept at 0 % so Knative keeps it). ``rollback`` takes the
traffic back from a green that has some; otherwise it swaps current and previous.

Each step rewrites knative/overlays/prod/release.yaml, renders the overlay with kubectl kustomize,
and refuses anything Knative's webhook would reject. It also refuses a step that would drop a
revision taking traffic or the rollback target, name one revision twice, or has nothing to act
on: ``green`` of the revision already serving or of the previous one (use ``rollback``), a second
``green`` while the first takes traffic, ``shift`` or ``promote`` with no green, ``rollback`` with
nothing to go back to, and ``init`` once a revision of a real index (not the shipped example) is
current, or a green or previous one exists, unless ``--force`` says to drop them. A refusal is one
line ``refused: <reason>`` on stderr, exit status 1, and release.yaml byte for byte as it was.
Apply with ``kubectl apply -k knative/overlays/prod``.

``green`` is gated on retrieval quality where RAG_EVAL_QUESTIONS names a question set (the
builder's: index_builder.quality). Once the step passes the checks above and before release.yaml
is written, it evaluates the candidate and the index the revision tagged ``current`` serves (none
for the shipped example), both read from RAG_STORE_URI through RAG_BACKEND (results are stored
beside each index), prints both indexes' hit rate and MRR and the gate's decision on stderr, and
refuses a candidate that fails the gate (RAG_EVAL_METRIC, RAG_EVAL_TOLERANCE, RAG_EVAL_FLOOR)
unless ``--force`` says to deploy it anyway. An index that cannot be evaluated is refused, forced
or not. Without RAG_EVAL_QUESTIONS, green is not gated, and says so on stderr once it is done.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from functions.catalog import is_index_id

from .knative_rules import violations

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "knative" / "overlays" / "prod" / "release.yaml"
SERVICE = "rag-query"
HEADER = """\
# The index this service serves, written by `python -m scripts.release` (see the README): the
# revision is named after the index id and pins it in RAG_INDEX (the first env entry of the
# base), and `traffic` says how requests split between index versions.
"""
TAGS = ("current", "green", "previous")
EXAMPLE_ID = "20261127-081500-3f2a9c1d"

Roles = dict[str, dict[str, Any]]


class Refused(Exception):
    """A step release.py will not take; the message says why."""


def _load() -> tuple[str, list[dict[str, Any]]]:
    try:
        ops = yaml.safe_load(RELEASE.read_text())
        template = next(op["value"] for op in ops if op["path"] == "/spec/template/metadata/name")
        traffic = next(op["value"] for op in ops if op["path"] == "/spec/traffic")
    except (yaml.YAMLError, StopIteration, KeyError, TypeError) as exc:
        raise Refused(f"{RELEASE.name} is not one this script writes ({exc!r})") from exc
    return str(template).removeprefix(f"{SERVICE}-"), traffic


def _dump(index_id: str, traffic: list[dict[str, Any]]) -> str:
    ops = [
        {"op": "add", "path": "/spec/template/metadata/name", "value": f"{SERVICE}-{index_id}"},
        {
            "op": "replace",
            "path": "/spec/template/spec/containers/0/env/0",
            "value": {"name": "RAG_INDEX", "value": index_id},
        },
        {"op": "add", "path": "/spec/traffic", "value": traffic},
    ]
    return HEADER + str(yaml.safe_dump(ops, sort_keys=False))


def _entry(index_id: str, percent: int, tag: str) -> dict[str, Any]:
    return {"revisionName": f"{SERVICE}-{index_id}", "percent": percent, "tag": tag}


def _roles(traffic: list[dict[str, Any]], where: str) -> Roles:
    """The traffic block by tag, refused unless it names each revision once, in a known role."""
    if any("revisionName" not in entry for entry in traffic):
        raise Refused(f"{where} has a traffic entry without a revisionName")
    revisions = [str(entry["revisionName"]) for entry in traffic]
    twice = sorted({name for name in revisions if revisions.count(name) > 1})
    if twice:
        raise Refused(f"{where} names {', '.join(twice)} in more than one traffic entry")
    tags = [entry.get("tag") for entry in traffic]
    if len(set(tags)) != len(tags) or not set(tags) <= set(TAGS):
        raise Refused(f"{where} has tags {tags}: each of current, green, previous at most once")
    roles = {entry["tag"]: entry for entry in traffic}
    if "current" not in roles:
        raise Refused(f"{where} has no revision tagged current")
    return roles


def _released() -> tuple[str, Roles]:
    """The template's index id and the traffic block by tag, as release.yaml has them now."""
    index_id, traffic = _load()
    try:
        return index_id, _roles(traffic, RELEASE.name)
    except Refused as exc:
        raise Refused(f"{exc}: fix it, or start over with init <index id> --force") from exc


def _index_id(command: str, args: list[str]) -> str:
    if len(args) != 1 or not is_index_id(args[0]):
        raise Refused(f"{command} needs one index id, like {EXAMPLE_ID}")
    return args[0]


def _init(args: list[str]) -> tuple[str, list[dict[str, Any]]]:
    force = "--force" in args
    index_id = _index_id("init", [arg for arg in args if arg != "--force"])
    if not force:
        # Read (and so check) what is there only to refuse dropping it; --force needs neither.
        roles = _released()[1]
        # The shipped example revision exists on no cluster: replacing it is the first deployment.
        spare = {f"{SERVICE}-{index_id}", f"{SERVICE}-{EXAMPLE_ID}"}
        dropped = [
            f"{tag} {entry['revisionName']}"
            for tag, entry in roles.items()
            if tag != "current" or entry["revisionName"] not in spare
        ]
        if dropped:
            raise Refused(f"init would drop {', '.join(dropped)}: pass --force to start over")
    return index_id, [_entry(index_id, 100, "current")]


def _green(roles: Roles, args: list[str]) -> tuple[str, Roles]:
    index_id = _index_id("green", [arg for arg in args if arg != "--force"])
    revision = f"{SERVICE}-{index_id}"
    current, green, previous = roles["current"], roles.get("green"), roles.get("previous")
    if revision == current["revisionName"]:
        raise Refused(f"{index_id} is the current revision, already serving; nothing to roll out")
    if previous is not None and revision == previous["revisionName"]:
        raise Refused(f"{index_id} is the previous revision: use rollback instead")
    if green is not None and green.get("percent", 0):
        raise Refused("green already takes traffic: promote or roll back first")
    # A green at 0 % may be replaced (it serves nobody); previous stays: it is still the way back.
    return index_id, {
        **roles,
        "current": {**current, "percent": 100},
        "green": _entry(index_id, 0, "green"),
    }


def _shift(roles: Roles, args: list[str]) -> Roles:
    green = roles.get("green")
    if green is None:
        raise Refused("shift needs a green revision: deploy one with green <index id>")
    if len(args) != 1 or not (args[0].isascii() and args[0].isdigit()) or int(args[0]) > 100:
        raise Refused("shift needs one percent 0..100, like shift 10")
    percent = int(args[0])
    return {
        **roles,
        "current": {**roles["current"], "percent": 100 - percent},
        "green": {**green, "percent": percent},
    }


def _promote(roles: Roles) -> Roles:
    green = roles.get("green")
    if green is None:
        raise Refused("nothing to promote: deploy a green revision first")
    # The old previous is dropped: the revision that served until now is the way back.
    return {
        "current": {**green, "percent": 100, "tag": "current"},
        "previous": {**roles["current"], "percent": 0, "tag": "previous"},
    }


def _rollback(roles: Roles) -> Roles:
    current, green, previous = roles["current"], roles.get("green"), roles.get("previous")
    if green is not None and green.get("percent", 0):
        return {**roles, "current": {**current, "percent": 100}, "green": {**green, "percent": 0}}
    if previous is not None:
        # A second rollback in a row swaps back. Both revisions stay in the block, so nothing is
        # lost, and it is the only way back to the newer one: green refuses the previous revision.
        return {
            **roles,
            "current": {**previous, "percent": 100, "tag": "current"},
            "previous": {**current, "percent": 0, "tag": "previous"},
        }
    raise Refused(
        "nothing to roll back to: no green takes traffic and no previous revision is kept"
    )


def step(command: str, args: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """The template's index id and the traffic block after one blue-green step."""
    if command == "init":
        return _init(args)
    if command not in ("green", "shift", "promote", "rollback"):
        raise Refused(f"unknown step {command!r}: status, init, green, shift, promote or rollback")
    if "--force" in args and command != "green":
        raise Refused("--force is for init and green only")
    if args and command in ("promote", "rollback"):
        raise Refused(f"{command} takes no arguments")
    index_id, roles = _released()
    if command == "green":
        index_id, roles = _green(roles, args)
    elif command == "shift":
        roles = _shift(roles, args)
    elif command == "promote":
        roles = _promote(roles)
    else:
        roles = _rollback(roles)
    after = [roles[tag] for tag in TAGS if tag in roles]
    _roles(after, "the new traffic block")  # each revision once, in one role
    return index_id, after


def _gate(index_id: str, current: str, *, force: bool) -> bool:
    """Refuse the candidate ``index_id`` where the question set's gate does not pass it against
    the index of the ``current`` revision (unless ``force``); the figures go to stderr. False
    where no question set is given: nothing is gated."""
    from pydantic import ValidationError

    from functions.errors import RagError
    from functions.logs import redact
    from functions.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(part) for part in first["loc"])
        raise Refused(f"the settings are invalid: {at}: {first['msg']}") from None
    if not settings.eval_questions:
        return False
    if not settings.store_uri:
        raise Refused(
            "RAG_EVAL_QUESTIONS is set but RAG_STORE_URI is not: the quality gate reads both "
            "indexes from the store (set it, or unset RAG_EVAL_QUESTIONS to deploy ungated)"
        )
    from functions.errors import ObjectNotFound
    from functions.storage import open_store
    from index_builder.quality import Gate, decide, figures, make_evaluator, read_questions

    gate = Gate(
        metric=settings.eval_metric, tolerance=settings.eval_tolerance, floor=settings.eval_floor
    )
    serving = current.removeprefix(f"{SERVICE}-")
    try:
        evaluator = make_evaluator(
            settings, open_store(settings.store_uri), read_questions(settings.eval_questions)
        )
        if evaluator.questions.generated is not None:
            print(
                f"warning: question set {settings.eval_questions} was generated by "
                f"{evaluator.questions.generated.by} and gates this release: review it",
                file=sys.stderr,
            )
        try:
            candidate = evaluator.evaluate(index_id)
            now = None  # the shipped example exists in no store: green has nothing to beat
            if is_index_id(serving) and serving != EXAMPLE_ID:
                try:
                    now = evaluator.evaluate(serving)
                except ObjectNotFound:
                    # gc keeps what channels name, not what revisions pin: gone from the store,
                    # there is nothing to compare with. In the store but not loaded into
                    # Elasticsearch or PostgreSQL, it can be loaded: refused below.
                    if _in_store(evaluator.store, serving):
                        raise
                    print(
                        f"the current revision's index {serving} is no longer in the store: "
                        "the candidate is compared with nothing (only RAG_EVAL_FLOOR can refuse)",
                        file=sys.stderr,
                    )
        finally:
            evaluator.close()
    except RagError as exc:
        raise Refused(redact(exc.message)) from exc
    decision = decide(gate, candidate, now)
    print(figures(decision), file=sys.stderr)
    if not decision.passed:
        if not force:
            raise Refused(f"{decision.reason}: pass --force to deploy it anyway")
        print(f"quality gate overridden by --force: deploying {index_id}", file=sys.stderr)
    return True


def _in_store(store: Any, index_id: str) -> bool:
    """Whether the store holds the index (its manifest)."""
    from functions.catalog import index_key
    from functions.errors import ObjectNotFound

    try:
        store.get(index_key(index_id))
    except ObjectNotFound:
        return False
    return True


def _apply(command: str, args: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """Take one step; restore release.yaml byte for byte if the rendered overlay breaks a rule."""
    index_id, traffic = step(command, args)
    gated = False
    if command == "green":
        current = next(entry for entry in traffic if entry.get("tag") == "current")
        gated = _gate(index_id, str(current["revisionName"]), force="--force" in args)
    before = RELEASE.read_bytes()
    RELEASE.write_text(_dump(index_id, traffic))
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(RELEASE.parent)],
        capture_output=True,
        text=True,
        check=False,
    )
    problems = (
        violations(list(yaml.safe_load_all(rendered.stdout)))
        if rendered.returncode == 0
        else [" ".join(rendered.stderr.split())]
    )
    if problems:
        RELEASE.write_bytes(before)
        raise Refused("; ".join(problems))
    if command == "green" and not gated:  # said once it is done, so a refusal stays one line
        print("no question set (RAG_EVAL_QUESTIONS): green is not gated", file=sys.stderr)
    return index_id, traffic


def main(argv: list[str]) -> int:
    """Run one step; print the resulting traffic, or why the step is refused (exit status 1)."""
    try:
        if not argv or argv[0] == "status":
            if argv[1:]:
                raise Refused("status takes no arguments")
            index_id, traffic = _load()
        else:
            index_id, traffic = _apply(argv[0], argv[1:])
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(f"template: {SERVICE}-{index_id}")
    for entry in traffic:
        print(f"  {entry['percent']:3d} %  {entry['revisionName']}  tag {entry.get('tag', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

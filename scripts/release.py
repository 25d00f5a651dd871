"""Blue-green between index versions: render the prod overlay's next revision and traffic block.

    python -m scripts.release status
    python -m scripts.release init <index id>    # the first deployment: that index at 100 %
    python -m scripts.release green <index id>   # the new index's revision at 0 %, tag green
    python -m scripts.release shift <percent>    # send <percent> of requests to green
    python -m scripts.release promote            # green takes 100 %; the old one stays, tagged
    python -m scripts.release rollback           # all traffic back to the other revision

Each step rewrites knative/overlays/prod/release.yaml, renders the overlay with kubectl kustomize,
and refuses (restoring the file, exit 1) anything Knative's webhook would reject. Apply with
``kubectl apply -k knative/overlays/prod``.
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


def _load() -> tuple[str, list[dict[str, Any]]]:
    ops = yaml.safe_load(RELEASE.read_text())
    template = next(op["value"] for op in ops if op["path"] == "/spec/template/metadata/name")
    traffic = next(op["value"] for op in ops if op["path"] == "/spec/traffic")
    return template.removeprefix(f"{SERVICE}-"), traffic


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
    return HEADER + yaml.safe_dump(ops, sort_keys=False)


def _entry(index_id: str, percent: int, tag: str) -> dict[str, Any]:
    return {"revisionName": f"{SERVICE}-{index_id}", "percent": percent, "tag": tag}


def _tagged(traffic: list[dict[str, Any]], tag: str) -> dict[str, Any] | None:
    return next((entry for entry in traffic if entry.get("tag") == tag), None)


def step(command: str, args: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """The template's index id and the traffic block after one blue-green step."""
    index_id, traffic = _load()
    current, green, previous = (_tagged(traffic, t) for t in ("current", "green", "previous"))
    if current is None:
        raise SystemExit("release.yaml has no revision tagged current")
    if command == "init":
        if len(args) != 1 or not is_index_id(args[0]):
            raise SystemExit("init needs one index id, like 20261127-081500-3f2a9c1d")
        return args[0], [_entry(args[0], 100, "current")]
    if command == "green":
        if len(args) != 1 or not is_index_id(args[0]):
            raise SystemExit("green needs one index id, like 20261127-081500-3f2a9c1d")
        if green is not None and green["percent"]:
            raise SystemExit("green already takes traffic: promote or roll back first")
        index_id = args[0]
        return index_id, [{**current, "percent": 100}, _entry(index_id, 0, "green")]
    if command == "shift":
        if green is None or len(args) != 1 or not args[0].isdigit() or not 0 <= int(args[0]) <= 100:
            raise SystemExit("shift needs a green revision and a percent 0..100")
        percent = int(args[0])
        return index_id, [{**current, "percent": 100 - percent}, {**green, "percent": percent}]
    if command == "promote":
        if green is None:
            raise SystemExit("nothing to promote: deploy a green revision first")
        return index_id, [
            {**green, "percent": 100, "tag": "current"},
            {**current, "percent": 0, "tag": "previous"},
        ]
    if command == "rollback":
        if green is not None:
            return index_id, [{**current, "percent": 100}, {**green, "percent": 0}]
        if previous is not None:
            return index_id, [
                {**previous, "percent": 100, "tag": "current"},
                {**current, "percent": 0, "tag": "previous"},
            ]
        raise SystemExit("nothing to roll back to")
    raise SystemExit(f"unknown step {command!r}: status, init, green, shift, promote or rollback")


def main(argv: list[str]) -> int:
    """Run one step; print the resulting traffic."""
    if not argv or argv[0] == "status":
        index_id, traffic = _load()
    else:
        before = RELEASE.read_text()
        index_id, traffic = step(argv[0], argv[1:])
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
            else [rendered.stderr]
        )
        if problems:
            RELEASE.write_text(before)
            print("refused:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
    print(f"template: {SERVICE}-{index_id}")
    for entry in traffic:
        print(f"  {entry['percent']:3d} %  {entry['revisionName']}  tag {entry.get('tag', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The quality-gate kustomize Component (the scheduled rebuild moves `stable` only past the gate,
on a question set from a ConfigMap), added to each overlay as a user would, then rendered and
validated; and the base's podFailurePolicy, which ends a Job the gate refused without retries."""

from __future__ import annotations

import copy
import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from functions.events import INDEX_PROMOTION_REFUSED
from functions.settings import Settings
from index_builder.__main__ import EXIT_CONFLICT, EXIT_FAILED
from index_builder.quality import EXIT_REFUSED, parse_questions, read_questions
from scripts.knative_rules import violations

from .test_elasticsearch_component import _pod, _pod_spec_violations, _service_pod
from .test_knative import (
    KUBERNETES,
    ROOT,
    SCHEMAS,
    _containers,
    _is_knative,
    _settings_variables,
    render,
    render_with,
)

COMPONENT = "../../components/quality-gate"
FOLDER = ROOT / "knative" / "components" / "quality-gate"
HEADER = (FOLDER / "kustomization.yaml").read_text()
CONFIGMAP = "rag-eval-questions"
MOUNT = "eval-questions"
EVAL_FOLDER = "/etc/knative-rag/eval"
QUESTIONS = f"{EVAL_FOLDER}/questions.json"
ENV = [
    {"name": "RAG_EVAL_QUESTIONS", "value": QUESTIONS},
    {"name": "RAG_EVAL_METRIC", "value": "mrr"},
    {"name": "RAG_EVAL_TOLERANCE", "value": "0.02"},
]
QUESTIONS_MOUNT = {"name": MOUNT, "mountPath": EVAL_FOLDER, "readOnly": True}
# The builder's exits a rerun would only repeat: a lost compare-and-swap, a refused gate.
FINAL_EXITS = [EXIT_CONFLICT, EXIT_REFUSED]
POLICY = {
    "rules": [
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": "index-builder",
                "operator": "In",
                "values": FINAL_EXITS,
            },
        },
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
}


@dataclass(frozen=True)
class Rendered:
    """An overlay rendered as shipped, and again with the component added."""

    plain: list[dict[str, Any]]
    with_gate: list[dict[str, Any]]


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    overlay = f"overlays/{request.param}"
    root = tmp_path_factory.mktemp(f"knative-gate-{request.param}")
    return Rendered(render(overlay), render_with(overlay, COMPONENT, root))


def _namespace(objects: list[dict[str, Any]]) -> str:
    name: str = next(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace")
    return name


def _configmap(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [found] = [o for o in objects if o["metadata"]["name"].startswith(f"{CONFIGMAP}-")]
    return found


def _volume(pod: dict[str, Any]) -> dict[str, Any]:
    [volume] = [v for v in pod["volumes"] if v["name"] == MOUNT]
    found: dict[str, Any] = volume
    return found


def test_the_builder_gets_the_gate_s_settings_and_the_question_set_read_only(
    rendered: Rendered,
) -> None:
    pod = _pod(rendered.with_gate)
    container = pod["containers"][0]
    assert container["env"] == ENV  # the base gives the builder no env of its own
    assert [m for m in container["volumeMounts"] if m["name"] == MOUNT] == [QUESTIONS_MOUNT]
    assert _volume(pod) == {
        "name": MOUNT,
        "configMap": {
            # The generator's name, content hash and all: a changed set is a new ConfigMap,
            # which the next Job mounts.
            "name": _configmap(rendered.with_gate)["metadata"]["name"],
            "items": [{"key": "questions.json", "path": "questions.json"}],
        },
    }
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_question_set_is_a_configmap_in_the_overlay_s_namespace(rendered: Rendered) -> None:
    configmap = _configmap(rendered.with_gate)
    assert re.fullmatch(rf"{CONFIGMAP}-[a-z0-9]{{10}}", configmap["metadata"]["name"])
    assert configmap["metadata"]["namespace"] == _namespace(rendered.plain)
    assert configmap["metadata"]["labels"] == {"app.kubernetes.io/part-of": "knative-rag"}
    assert set(configmap["data"]) == {"questions.json"}
    assert "binaryData" not in configmap
    shipped = json.loads(configmap["data"]["questions.json"])
    assert isinstance(shipped["questions"], list)
    assert shipped["questions"] != []
    for question in shipped["questions"]:
        assert isinstance(question["question"], str)
        assert question["question"].strip() != ""
        assert isinstance(question["sources"], list)
        assert question["sources"] != []


def test_the_builder_reads_the_set_where_the_mount_puts_it(
    rendered: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RAG_EVAL_QUESTIONS names the file the volume's item lands on, and the builder's own reader
    and settings take what the component sets."""
    pod = _pod(rendered.with_gate)
    [item] = _volume(pod)["configMap"]["items"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == MOUNT]
    assert posixpath.join(mount["mountPath"], item["path"]) == QUESTIONS
    # The kubelet's view of the volume: each item's key's data at its path.
    data = _configmap(rendered.with_gate)["data"]
    (tmp_path / item["path"]).write_text(data[item["key"]])
    questions = read_questions(str(tmp_path / item["path"]))
    assert len(questions.questions) == len(json.loads(data["questions.json"])["questions"])
    for variable in pod["containers"][0]["env"]:
        monkeypatch.setenv(variable["name"], variable["value"])
    settings = Settings()
    assert (settings.eval_questions, settings.eval_metric, settings.eval_tolerance) == (
        QUESTIONS,
        "mrr",
        0.02,
    )
    assert (settings.eval_k, settings.eval_floor) == (10, None)  # left at their defaults


def test_the_shipped_set_is_the_repository_s_own_about_docs() -> None:
    """A copy of tests/data/questions.json, every source a file in docs/ (so an index built from
    docs/ can answer each question)."""
    shipped = parse_questions((FOLDER / "questions.json").read_bytes(), "the component's")
    own = parse_questions((ROOT / "tests" / "data" / "questions.json").read_bytes(), "the tests'")
    assert shipped.sha256 == own.sha256, "copy tests/data/questions.json to the component"
    assert shipped.generated is None  # a reviewed set, not an LLM's draft
    sources = {source for question in shipped.questions for source in question.sources}
    assert {source for source in sources if not (ROOT / "docs" / source).is_file()} == set()


def test_the_variables_it_sets_and_names_are_settings(rendered: Rendered) -> None:
    builder = _containers(rendered.with_gate)["builder"]
    text = "\n".join(path.read_text() for path in sorted(FOLDER.glob("*.yaml")))
    named = set(re.findall(r"\bRAG_[A-Z0-9_]+\b", text)) | {e["name"] for e in builder["env"]}
    assert named - _settings_variables() == set()
    gate = {"RAG_EVAL_QUESTIONS", "RAG_EVAL_K", "RAG_EVAL_METRIC", "RAG_EVAL_TOLERANCE"}
    assert named >= gate | {"RAG_EVAL_FLOOR"}  # the header names every gate setting


def _action(policy: dict[str, Any], exit_code: int, conditions: tuple[str, ...] = ()) -> str:
    """What the Job controller does with a failed pod of the builder: the first rule that
    matches (Kubernetes' order), else count it against backoffLimit."""
    for rule in policy["rules"]:
        on_exit = rule.get("onExitCodes")
        if on_exit is not None:
            inside = exit_code in on_exit["values"]
            if (on_exit["operator"] == "In") == inside:
                return str(rule["action"])
        for pattern in rule.get("onPodConditions", []):
            if pattern["type"] in conditions and pattern.get("status", "True") == "True":
                return str(rule["action"])
    return "Count"


@pytest.mark.parametrize("overlay", ["base", "overlays/dev", "overlays/prod"])
def test_a_lost_race_or_a_refused_gate_fails_the_job_at_once(overlay: str) -> None:
    cronjob = next(o for o in render(overlay) if o["kind"] == "CronJob")
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["podFailurePolicy"] == POLICY
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # what a podFailurePolicy requires
    assert [c["name"] for c in pod["containers"]] == ["index-builder"]  # the rule's containerName
    assert job["backoffLimit"] >= 1  # other failures are still retried
    policy = job["podFailurePolicy"]
    assert _action(policy, EXIT_CONFLICT) == "FailJob"
    assert _action(policy, EXIT_REFUSED) == "FailJob"
    assert _action(policy, EXIT_FAILED) == "Count"  # the store, Ollama or the network: retried
    assert _action(policy, 137, ("DisruptionTarget",)) == "Ignore"  # evicted: not counted
    assert "podFailurePolicy" in (ROOT / "knative" / "base" / "cronjob.yaml").read_text()


def test_the_policy_is_what_the_kubernetes_schema_accepts(rendered: Rendered) -> None:
    cronjob = next(o for o in rendered.with_gate if o["kind"] == "CronJob")
    kubernetes_validate.validate(cronjob, KUBERNETES, strict=True)
    typo = copy.deepcopy(cronjob)
    typo["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"][0]["onExitCode"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="onExitCode"):
        kubernetes_validate.validate(typo, KUBERNETES, strict=True)


def _example_trigger() -> dict[str, Any]:
    """The Trigger the header suggests, as a user would paste it (their subscriber named)."""
    lines = HEADER.splitlines()
    start = lines.index("#   apiVersion: eventing.knative.dev/v1")
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line.removeprefix("#   "))
    trigger: dict[str, Any] = yaml.safe_load("\n".join(block).replace("<your-notifier>", "pager"))
    return trigger


def test_the_refused_event_has_no_trigger_but_the_header_s_example_is_valid(
    rendered: Rendered,
) -> None:
    """Nothing here acts on a refusal, so no Trigger is rendered; the example in the header
    filters the builder's own event type and source and is a Trigger the CRD accepts."""
    types = {
        o["spec"]["filter"]["attributes"]["type"]
        for o in rendered.with_gate
        if o["kind"] == "Trigger"
    }
    assert INDEX_PROMOTION_REFUSED not in types
    trigger = _example_trigger()
    jsonschema.validate(trigger, SCHEMAS[("eventing.knative.dev", "v1", "Trigger")])
    assert trigger["kind"] == "Trigger"
    assert trigger["spec"]["broker"] == "default"
    assert trigger["spec"]["filter"]["attributes"] == {
        "type": INDEX_PROMOTION_REFUSED,
        "source": "knative-rag/index-builder",
    }
    dead_letters = trigger["spec"]["delivery"]["deadLetterSink"]["ref"]["name"]
    assert dead_letters in {o["metadata"]["name"] for o in rendered.plain if o["kind"] == "Service"}


def _without_gate(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``objects`` less exactly what the component adds, each item as it adds it."""
    objects = copy.deepcopy(
        [o for o in objects if not o["metadata"]["name"].startswith(f"{CONFIGMAP}-")]
    )
    pod = _pod(objects)
    container = pod["containers"][0]
    container["env"] = [e for e in container["env"] if e not in ENV]
    if not container["env"]:
        del container["env"]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m != QUESTIONS_MOUNT]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != MOUNT]
    return objects


def test_it_changes_nothing_else(rendered: Rendered) -> None:
    assert _without_gate(rendered.with_gate) == rendered.plain


def test_the_objects_still_validate(rendered: Rendered) -> None:
    for obj in rendered.with_gate:
        if _is_knative(obj):
            group, version = obj["apiVersion"].split("/")
            jsonschema.validate(obj, SCHEMAS[(group, version, obj["kind"])])
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    assert violations(rendered.with_gate) == []
    # The Job's pod spec, by the rules the other components' volumes keep as well.
    assert _pod_spec_violations(_pod(rendered.with_gate)) == []


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_overlay_s_commented_lines_enable_it_when_uncommented(
    overlay: str, tmp_path: Path
) -> None:
    """Each overlay ships the component commented out (its question set is about this
    repository's docs/, not a user's corpus); removing the comment marks adds it."""
    path = ROOT / "knative" / "overlays" / overlay / "kustomization.yaml"
    text = path.read_text()
    assert "components" not in (yaml.safe_load(text) or {})
    commented = "# components:\n#   - ../../components/quality-gate\n"
    assert commented in text
    copied = render_with(f"overlays/{overlay}", COMPONENT, tmp_path / "as-the-tests-add-it")
    edited = tmp_path / "as-a-user-edits-it"
    render_with(f"overlays/{overlay}", COMPONENT, edited)  # a copy of knative/ to edit
    uncommented = text.replace(commented, "components:\n  - ../../components/quality-gate\n")
    (edited / "knative" / "overlays" / overlay / "kustomization.yaml").write_text(uncommented)
    assert render(f"overlays/{overlay}", root=edited) == copied


def test_it_adds_up_with_the_postgres_and_eventing_oidc_components(tmp_path: Path) -> None:
    render_with("overlays/dev", COMPONENT, tmp_path)
    path = tmp_path / "knative" / "overlays" / "dev" / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    kustomization["components"] += ["../../components/postgres", "../../components/eventing-oidc"]
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    objects = render("overlays/dev", root=tmp_path)
    pod = _pod(objects)
    container = pod["containers"][0]
    assert container["env"] == ENV
    assert container["envFrom"][-1] == {"secretRef": {"name": "rag-postgres"}}
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "postgres-ca", MOUNT}
    assert _pod_spec_violations(pod) == []
    assert _pod_spec_violations(_service_pod(objects)) == []
    assert violations(objects) == []

"""The elasticsearch kustomize Component (the scheduled rebuild loads into Elasticsearch, the query
function searches there), added to each overlay as a user would, then rendered and validated."""

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

from functions.settings import Settings
from scripts.knative_rules import violations

from .test_knative import (
    KUBERNETES,
    ROOT,
    SCHEMAS,
    _containers,
    _is_knative,
    _rag_query,
    _settings_variables,
    render,
    render_with,
)

COMPONENT = "../../components/elasticsearch"
HEADER = (ROOT / "knative" / "components" / "elasticsearch" / "kustomization.yaml").read_text()
MOUNT = "elasticsearch-ca"
CA_FOLDER = "/var/run/secrets/knative-rag/elasticsearch"
CA_MOUNT = {"name": MOUNT, "mountPath": CA_FOLDER, "readOnly": True}
CA_VOLUME = {
    "name": MOUNT,
    "secret": {
        "secretName": "rag-elasticsearch-ca",
        "optional": True,  # a cluster with a public CA needs none
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    },
}
SECRET = {"secretRef": {"name": "rag-elasticsearch"}}  # the builder's: manage, write, read
QUERY_SECRET = {"secretRef": {"name": "rag-elasticsearch-query"}}  # the function's: read only
BACKEND = {"name": "RAG_BACKEND", "value": "elasticsearch"}
POLICY = "knative-rag-elasticsearch"
URL = "https://quickstart-es-http.elastic-system.svc:9200"


@dataclass(frozen=True)
class Rendered:
    """An overlay rendered as shipped, and again with the component added."""

    plain: list[dict[str, Any]]
    with_elasticsearch: list[dict[str, Any]]


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    overlay = f"overlays/{request.param}"
    root = tmp_path_factory.mktemp(f"knative-es-{request.param}")
    return Rendered(render(overlay), render_with(overlay, COMPONENT, root))


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    cronjob = next(o for o in objects if o["kind"] == "CronJob")
    pod: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pod


def _service_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = _rag_query(objects)["spec"]["template"]["spec"]
    return pod


def test_the_builder_gets_its_secret_only_and_the_ca_read_only(rendered: Rendered) -> None:
    pod = _pod(rendered.with_elasticsearch)
    container = pod["containers"][0]
    assert container["envFrom"][-1] == SECRET  # required: a missing Secret stops the Job
    assert QUERY_SECRET not in container["envFrom"]
    assert [m for m in container["volumeMounts"] if m["name"] == MOUNT] == [CA_MOUNT]
    assert [v for v in pod["volumes"] if v["name"] == MOUNT] == [CA_VOLUME]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_function_gets_the_backend_its_own_secret_and_the_ca_read_only(
    rendered: Rendered,
) -> None:
    pod = _service_pod(rendered.with_elasticsearch)
    container = pod["containers"][0]
    assert container["env"][-1] == BACKEND
    # Required: without its key the revision never gets ready, rather than serving from the
    # object store; the builder's write key is not the function's.
    assert container["envFrom"][-1] == QUERY_SECRET
    assert SECRET not in container["envFrom"]
    assert [m for m in container["volumeMounts"] if m["name"] == MOUNT] == [CA_MOUNT]
    assert [v for v in pod["volumes"] if v["name"] == MOUNT] == [CA_VOLUME]


def _documented(secret: str) -> dict[str, str]:
    """The variables the header's `kubectl create secret generic <secret>` command sets."""
    command = re.search(rf"create secret generic {secret} ((?:.*\\\n)*.*)", HEADER)
    assert command is not None, secret
    return dict(re.findall(r"--from-literal=(\w+)=(\S+)", command.group(1)))


def test_the_variables_it_sets_and_names_are_settings(rendered: Rendered) -> None:
    """Every variable the component sets on the function or its header names is a field of
    Settings, the function's backend settings among them."""
    service = _containers(rendered.with_elasticsearch)["service"]
    named = set(re.findall(r"\bRAG_[A-Z0-9_]+\b", HEADER)) | {e["name"] for e in service["env"]}
    assert named - _settings_variables() == set()
    assert named >= {"RAG_BACKEND", "RAG_RETRIEVAL", "RAG_ELASTICSEARCH_NUM_CANDIDATES"}


@pytest.mark.parametrize("secret", ["rag-elasticsearch", "rag-elasticsearch-query"])
def test_the_documented_secrets_are_what_each_side_reads(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each Secret as the header creates it: settings, the CA path where the volume puts the
    certificate, and the function's without the builder's replicas."""
    variables = _documented(secret)
    expected = {"RAG_ELASTICSEARCH_URL", "RAG_ELASTICSEARCH_API_KEY", "RAG_ELASTICSEARCH_CA_FILE"}
    if secret == "rag-elasticsearch":
        expected.add("RAG_ELASTICSEARCH_REPLICAS")
    assert set(variables) == expected
    for name, value in variables.items():
        monkeypatch.setenv(name, "a2V5LWlkOmtleQ==" if value.startswith("<") else value)
    settings = Settings()
    assert settings.elasticsearch_url == URL
    assert settings.elasticsearch_api_key is not None
    assert settings.elasticsearch_ca_file == Path(f"{CA_FOLDER}/ca.crt")


def test_the_function_s_backend_settings_take_the_values_it_sets_and_documents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "RAG_RETRIEVAL=hybrid" in HEADER
    monkeypatch.setenv(BACKEND["name"], BACKEND["value"])
    monkeypatch.setenv("RAG_RETRIEVAL", "hybrid")
    monkeypatch.setenv("RAG_ELASTICSEARCH_NUM_CANDIDATES", "1000")
    settings = Settings()
    assert (settings.backend, settings.retrieval, settings.elasticsearch_num_candidates) == (
        "elasticsearch",
        "hybrid",
        1000,
    )


def _api_keys() -> dict[str, Any]:
    """The role_descriptors of each `POST /_security/api_key` body in the header, by key name."""
    text = "\n".join(line.removeprefix("#") for line in HEADER.splitlines())
    keys = {}
    for match in re.finditer(r"POST /_security/api_key\s*", text):
        body, _ = json.JSONDecoder().raw_decode(text, match.end())
        keys[body["name"]] = body["role_descriptors"]
    return keys


def test_each_side_s_api_key_has_only_the_privileges_it_needs() -> None:
    def role(*privileges: str) -> dict[str, Any]:
        return {
            "cluster": [],
            "indices": [{"names": ["knative-rag-*"], "privileges": [*privileges]}],
        }

    assert _api_keys() == {
        "knative-rag-builder": {"knative-rag-builder": role("manage", "write", "read")},
        "knative-rag-query": {"knative-rag-query": role("read", "view_index_metadata")},
    }


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    matches = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        matches = matches and labels.get(expression["key"]) in expression["values"]
    return matches


def _pod_labels(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Each workload's pod labels: a revision's pods carry its template's and Knative's own."""
    labels = {}
    for obj in objects:
        if obj["kind"] == "Service":
            name = obj["metadata"]["name"]
            own = obj["spec"]["template"].get("metadata", {}).get("labels", {})
            labels[name] = {**own, "serving.knative.dev/service": name}
        if obj["kind"] == "CronJob":
            template = obj["spec"]["jobTemplate"]["spec"]["template"]
            labels[obj["metadata"]["name"]] = template["metadata"]["labels"]
    return labels


def test_egress_to_elasticsearch_s_http_port_is_for_the_builder_and_the_function_only(
    rendered: Rendered,
) -> None:
    [policy] = [o for o in rendered.with_elasticsearch if o["metadata"]["name"] == POLICY]
    namespace = next(o["metadata"]["name"] for o in rendered.plain if o["kind"] == "Namespace")
    assert policy["metadata"]["namespace"] == namespace
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert policy["spec"]["egress"] == [
        {"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 9200}]}
    ]
    selected = {
        name
        for name, labels in _pod_labels(rendered.with_elasticsearch).items()
        if _selects(policy["spec"]["podSelector"], labels)
    }
    assert selected == {"rag-index-builder", "rag-query"}  # not rag-dead-letters


def _without_component(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    objects = copy.deepcopy([o for o in objects if o["metadata"]["name"] != POLICY])
    service = _service_pod(objects)["containers"][0]
    service["env"] = [e for e in service["env"] if e != BACKEND]
    for pod, secret in ((_pod(objects), SECRET), (_service_pod(objects), QUERY_SECRET)):
        container = pod["containers"][0]
        container["envFrom"] = [s for s in container["envFrom"] if s != secret]
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != MOUNT]
        pod["volumes"] = [v for v in pod["volumes"] if v["name"] != MOUNT]
    return objects


def test_it_changes_nothing_else(rendered: Rendered) -> None:
    assert _without_component(rendered.with_elasticsearch) == rendered.plain


# What Knative Serving's webhook checks in a revision's pod spec (pkg/apis/serving/
# k8s_validation.go), beyond scripts/knative_rules.py: volumes of the allowed types, each mounted,
# a Secret, ConfigMap or projected volume mounted read-only, no reserved or repeated mount path.
_VOLUME_FIELDS = {
    "secret": {"secretName", "items", "defaultMode", "optional"},
    "configMap": {"name", "items", "defaultMode", "optional"},
    "projected": {"sources", "defaultMode"},
    "emptyDir": {"medium", "sizeLimit"},
}


def _pod_spec_violations(pod: dict[str, Any]) -> list[str]:
    problems = []
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounted = set()
    for container in pod["containers"]:
        for source in container.get("envFrom", []):
            if len(set(source) & {"configMapRef", "secretRef"}) != 1 or set(source) - {
                "prefix",
                "configMapRef",
                "secretRef",
            }:
                problems.append(f"envFrom {source}: one of configMapRef or secretRef")
        paths = set()
        for mount in container.get("volumeMounts", []):
            name, path = mount["name"], posixpath.normpath(mount["mountPath"])
            mounted.add(name)
            if name not in volumes:
                problems.append(f"volumeMount {name}: no matching volume")
            elif "emptyDir" not in volumes[name] and mount.get("readOnly") is not True:
                problems.append(f"volumeMount {name}: should be readOnly for this type of volume")
            if path in {"/", "/dev", "/dev/log"} or not path.startswith("/") or path in paths:
                problems.append(f"volumeMount {name}: mountPath {path} is reserved or repeated")
            paths.add(path)
    for name, volume in volumes.items():
        if name not in mounted:
            problems.append(f"volume {name}: not mounted")
        kinds = set(volume) - {"name"}
        if len(kinds) != 1:
            problems.append(f"volume {name}: exactly one of {sorted(_VOLUME_FIELDS)}")
        for kind in kinds:
            if kind not in _VOLUME_FIELDS or set(volume[kind] or {}) - _VOLUME_FIELDS[kind]:
                problems.append(f"volume {name}: {kind} {volume[kind]} is not allowed")
    return problems


def test_the_objects_still_validate(rendered: Rendered) -> None:
    for obj in rendered.with_elasticsearch:
        if _is_knative(obj):
            group, version = obj["apiVersion"].split("/")
            jsonschema.validate(obj, SCHEMAS[(group, version, obj["kind"])])
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    assert violations(rendered.with_elasticsearch) == []
    for obj in rendered.with_elasticsearch:
        if obj["apiVersion"] == "serving.knative.dev/v1" and obj["kind"] == "Service":
            assert _pod_spec_violations(obj["spec"]["template"]["spec"]) == []


@pytest.fixture(scope="module")
def base_pod(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The base's rag-query pod spec with the component."""
    return _service_pod(
        render_with("base", "../components/elasticsearch", tmp_path_factory.mktemp("es"))
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda pod: pod["containers"][0]["volumeMounts"][-1].pop("readOnly"), "readOnly"),
        (lambda pod: pod["containers"][0]["volumeMounts"].pop(), "not mounted"),
        (lambda pod: pod["volumes"][-1].update(secret={"hostPath": "/"}), "not allowed"),
        (lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        (lambda pod: pod["containers"][0]["volumeMounts"][-1].update(mountPath="/dev"), "reserved"),
        (lambda pod: pod["containers"][0]["envFrom"][-1].update(configMapRef={}), "one of"),
    ],
    ids=["read-write-secret", "unmounted", "secret-field", "host-path", "dev", "two-refs"],
)
def test_the_pod_spec_rules_catch_what_the_webhook_rejects(
    base_pod: dict[str, Any], change: Any, problem: str
) -> None:
    pod = copy.deepcopy(base_pod)
    assert _pod_spec_violations(pod) == []
    change(pod)
    assert any(problem in line for line in _pod_spec_violations(pod)), _pod_spec_violations(pod)


def test_it_adds_up_with_the_eventing_oidc_component(tmp_path: Path) -> None:
    render_with("overlays/dev", COMPONENT, tmp_path)
    path = tmp_path / "knative" / "overlays" / "dev" / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    kustomization["components"].append("../../components/eventing-oidc")
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    objects = render("overlays/dev", root=tmp_path)
    pod = _service_pod(objects)
    assert {v["name"] for v in pod["volumes"]} == {"tmp", MOUNT, "kube-api"}
    assert _pod_spec_violations(pod) == []
    assert violations(objects) == []

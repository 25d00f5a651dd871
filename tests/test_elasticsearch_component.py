"""The elasticsearch kustomize Component (the scheduled rebuild loads into Elasticsearch), added
to each overlay as a user would, then rendered and validated."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from functions.settings import Settings
from scripts.knative_rules import violations

from .test_knative import KUBERNETES, SCHEMAS, _containers, _is_knative, render, render_with

COMPONENT = "../../components/elasticsearch"
MOUNT = "elasticsearch-ca"
CA_FOLDER = "/var/run/secrets/knative-rag/elasticsearch"
SECRET = {"secretRef": {"name": "rag-elasticsearch"}}


@dataclass(frozen=True)
class Rendered:
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


def test_the_builder_gets_the_secret_and_the_ca_read_only(rendered: Rendered) -> None:
    pod = _pod(rendered.with_elasticsearch)
    container = pod["containers"][0]
    assert container["envFrom"][-1] == SECRET  # required: a missing Secret stops the Job
    [mount] = [m for m in container["volumeMounts"] if m["name"] == MOUNT]
    [volume] = [v for v in pod["volumes"] if v["name"] == MOUNT]
    assert mount == {"name": MOUNT, "mountPath": CA_FOLDER, "readOnly": True}
    assert volume == {
        "name": MOUNT,
        "secret": {
            "secretName": "rag-elasticsearch-ca",
            "optional": True,  # a cluster with a public CA needs none
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        },
    }
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_documented_secret_is_what_the_builder_reads(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variables the component's comment tells a user to put in the Secret are settings,
    and the CA path it names is where the volume puts the certificate."""
    comment = Path(__file__).resolve().parent.parent / "knative" / "components" / "elasticsearch"
    text = (comment / "kustomization.yaml").read_text()
    ca_file = f"{CA_FOLDER}/ca.crt"
    assert f"RAG_ELASTICSEARCH_CA_FILE={ca_file}" in text
    for name, value in {
        "RAG_ELASTICSEARCH_URL": "https://quickstart-es-http.elastic-system.svc:9200",
        "RAG_ELASTICSEARCH_API_KEY": "a2V5LWlkOmtleQ==",
        "RAG_ELASTICSEARCH_CA_FILE": ca_file,
        "RAG_ELASTICSEARCH_REPLICAS": "0",
    }.items():
        assert name in text
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.elasticsearch_url == "https://quickstart-es-http.elastic-system.svc:9200"
    assert settings.elasticsearch_ca_file == Path(ca_file)
    assert settings.elasticsearch_replicas == 0
    # The function is untouched: it still serves from the object store.
    assert (
        _containers(rendered.with_elasticsearch)["service"]
        == _containers(rendered.plain)["service"]
    )


def test_egress_reaches_elasticsearch_s_http_port(rendered: Rendered) -> None:
    policy = next(o for o in rendered.with_elasticsearch if o["kind"] == "NetworkPolicy")
    assert policy["spec"]["egress"][-1] == {
        "to": [{"namespaceSelector": {}}],
        "ports": [{"protocol": "TCP", "port": 9200}],
    }


def _without_component(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    objects = copy.deepcopy(objects)
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    policy["spec"]["egress"] = policy["spec"]["egress"][:-1]
    pod = _pod(objects)
    container = pod["containers"][0]
    container["envFrom"] = [s for s in container["envFrom"] if s != SECRET]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != MOUNT]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != MOUNT]
    return objects


def test_it_changes_nothing_else(rendered: Rendered) -> None:
    assert _without_component(rendered.with_elasticsearch) == rendered.plain


def test_the_objects_still_validate(rendered: Rendered) -> None:
    for obj in rendered.with_elasticsearch:
        if _is_knative(obj):
            group, version = obj["apiVersion"].split("/")
            jsonschema.validate(obj, SCHEMAS[(group, version, obj["kind"])])
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    assert violations(rendered.with_elasticsearch) == []

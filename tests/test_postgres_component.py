"""The postgres kustomize Component (the scheduled rebuild loads into PostgreSQL with pgvector,
the query function searches there), added to each overlay as a user would, then rendered and
validated."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from scripts.knative_rules import violations

from .test_elasticsearch_component import (
    _pod,
    _pod_labels,
    _pod_spec_violations,
    _selects,
    _service_pod,
)
from .test_knative import (
    KUBERNETES,
    ROOT,
    SCHEMAS,
    _containers,
    _is_knative,
    render,
    render_with,
)

COMPONENT = "../../components/postgres"
FOLDER = ROOT / "knative" / "components" / "postgres"
HEADER = (FOLDER / "kustomization.yaml").read_text()
MOUNT = "postgres-ca"
CA_FOLDER = "/var/run/secrets/knative-rag/postgres"
CA_MOUNT = {"name": MOUNT, "mountPath": CA_FOLDER, "readOnly": True}
CA_VOLUME = {
    "name": MOUNT,
    "secret": {
        "secretName": "rag-postgres-ca",
        "optional": True,  # a database with a public CA needs none
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    },
}
SECRET = {"secretRef": {"name": "rag-postgres"}}  # the builder's: CREATE in the schema
QUERY_SECRET = {"secretRef": {"name": "rag-postgres-query"}}  # the function's: read only
BACKEND = {"name": "RAG_BACKEND", "value": "postgres"}
POLICY = "knative-rag-postgres"
DSN = "postgresql://cluster-example-rw.databases.svc:5432/app"
# The settings of the PostgreSQL backend, the builder's and the function's.
SETTINGS = {
    "RAG_BACKEND",
    "RAG_POSTGRES_DSN",
    "RAG_POSTGRES_SCHEMA",
    "RAG_POSTGRES_POOL_SIZE",
    "RAG_POSTGRES_TIMEOUT_S",
    "RAG_POSTGRES_EF_SEARCH",
}
# libpq's own variables, which it reads when the DSN leaves them out (the code never names them).
LIBPQ = {
    "PGHOST",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGSSLMODE",
    "PGSSLROOTCERT",
}


@dataclass(frozen=True)
class Rendered:
    """An overlay rendered as shipped, and again with the component added."""

    plain: list[dict[str, Any]]
    with_postgres: list[dict[str, Any]]


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    overlay = f"overlays/{request.param}"
    root = tmp_path_factory.mktemp(f"knative-pg-{request.param}")
    return Rendered(render(overlay), render_with(overlay, COMPONENT, root))


def test_the_builder_gets_its_secret_only_and_the_ca_read_only(rendered: Rendered) -> None:
    pod = _pod(rendered.with_postgres)
    container = pod["containers"][0]
    assert container["envFrom"][-1] == SECRET  # required: a missing Secret stops the Job
    assert QUERY_SECRET not in container["envFrom"]
    assert "env" not in container  # the builder has no backend to choose
    assert [m for m in container["volumeMounts"] if m["name"] == MOUNT] == [CA_MOUNT]
    assert [v for v in pod["volumes"] if v["name"] == MOUNT] == [CA_VOLUME]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_function_gets_the_backend_its_own_secret_and_the_ca_read_only(
    rendered: Rendered,
) -> None:
    pod = _service_pod(rendered.with_postgres)
    container = pod["containers"][0]
    assert container["env"][-1] == BACKEND
    # Required: without its role the revision never gets ready, rather than serving from the
    # object store; the builder's role, which may CREATE, is not the function's.
    assert container["envFrom"][-1] == QUERY_SECRET
    assert SECRET not in container["envFrom"]
    assert [m for m in container["volumeMounts"] if m["name"] == MOUNT] == [CA_MOUNT]
    assert [v for v in pod["volumes"] if v["name"] == MOUNT] == [CA_VOLUME]


def test_every_variable_it_names_is_a_backend_setting_or_libpq_s() -> None:
    """The header and the patches name no variable but the backend's settings and libpq's own,
    and the header documents every one of the settings."""
    text = "\n".join(path.read_text() for path in sorted(FOLDER.glob("*.yaml")))
    named = set(re.findall(r"\b(?:RAG_[A-Z0-9_]+|PG[A-Z]+)\b", text))
    assert named - (SETTINGS | LIBPQ) == set()
    assert named >= SETTINGS


def _documented(secret: str) -> dict[str, str]:
    """The variables the header's `kubectl create secret generic <secret>` command sets."""
    command = re.search(rf"create secret generic {secret} ((?:.*\\\n)*.*)", HEADER)
    assert command is not None, secret
    return dict(re.findall(r"--from-literal=(\w+)=(\S+)", command.group(1)))


@pytest.mark.parametrize(
    ("secret", "side"),
    [("rag-postgres", "builder"), ("rag-postgres-query", "query")],
    ids=["builder", "function"],
)
def test_the_documented_secrets_are_what_each_side_reads(secret: str, side: str) -> None:
    """Each Secret as the header creates it: the same database, its own role, and the CA path
    where the volume puts the certificate, checked in full."""
    assert _documented(secret) == {
        "RAG_POSTGRES_DSN": DSN,
        "PGUSER": f"knative_rag_{side}",
        "PGPASSWORD": f"<{side}-password>",
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": f"{CA_FOLDER}/ca.crt",
    }
    # CloudNativePG's primary, no credentials in the URI: they stay in PGUSER and PGPASSWORD.
    dsn = urlsplit(DSN)
    assert (dsn.scheme, dsn.hostname, dsn.port, dsn.path) == (
        "postgresql",
        "cluster-example-rw.databases.svc",
        5432,
        "/app",
    )
    assert (dsn.username, dsn.password) == (None, None)
    assert "get secret cluster-example-ca" in HEADER  # the CA that signed that host's certificate


def _statements() -> list[str]:
    """The SQL statements in the header's indented command blocks, white space folded."""
    block = " ".join(line[4:] for line in HEADER.splitlines() if line.startswith("#   "))
    found = re.findall(r"\b(?:CREATE|GRANT|ALTER|REVOKE)\b[^;]*(?=;)", block)
    return [" ".join(statement.split()) for statement in found]


def test_each_side_s_role_has_only_the_privileges_it_needs() -> None:
    """The builder owns the schema (so it may CREATE there); the function may use the schema
    and read the tables the builder creates, nothing more."""
    assert _statements() == [
        "CREATE EXTENSION IF NOT EXISTS vector",
        "CREATE ROLE knative_rag_builder LOGIN PASSWORD '<builder-password>'",
        "CREATE SCHEMA knative_rag AUTHORIZATION knative_rag_builder",
        "CREATE ROLE knative_rag_query LOGIN PASSWORD '<query-password>'",
        "GRANT USAGE ON SCHEMA knative_rag TO knative_rag_query",
        "ALTER DEFAULT PRIVILEGES FOR ROLE knative_rag_builder IN SCHEMA knative_rag"
        " GRANT SELECT ON TABLES TO knative_rag_query",
    ]


def test_egress_to_postgres_s_port_is_for_the_builder_and_the_function_only(
    rendered: Rendered,
) -> None:
    [policy] = [o for o in rendered.with_postgres if o["metadata"]["name"] == POLICY]
    namespace = next(o["metadata"]["name"] for o in rendered.plain if o["kind"] == "Namespace")
    assert policy["metadata"]["namespace"] == namespace
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert policy["spec"]["egress"] == [
        {"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 5432}]}
    ]
    selected = {
        name
        for name, labels in _pod_labels(rendered.with_postgres).items()
        if _selects(policy["spec"]["podSelector"], labels)
    }
    assert selected == {"rag-index-builder", "rag-query"}  # not rag-dead-letters


def test_the_credentials_are_referenced_never_inlined(rendered: Rendered) -> None:
    """No Secret is rendered and no connection setting is written into a manifest: each side
    reads them from its Secret, which the cluster's operator creates."""
    objects = rendered.with_postgres
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Secret"] == []
    [config] = [o["data"] for o in objects if o["kind"] == "ConfigMap"]
    connection = LIBPQ | {"RAG_POSTGRES_DSN"}
    assert set(config) & connection == set()
    for role, container in _containers(objects).items():
        assert {e["name"] for e in container.get("env", [])} & connection == set(), role


def _without_postgres(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``objects`` less exactly what the component adds, each item as it adds it."""
    objects = copy.deepcopy([o for o in objects if o["metadata"]["name"] != POLICY])
    added = [BACKEND, SECRET, QUERY_SECRET, CA_MOUNT, CA_VOLUME]
    for pod in (_pod(objects), _service_pod(objects)):
        container = pod["containers"][0]
        for key in ("env", "envFrom", "volumeMounts"):
            if key in container:
                container[key] = [item for item in container[key] if item not in added]
        pod["volumes"] = [v for v in pod["volumes"] if v not in added]
    return objects


def test_it_changes_nothing_else(rendered: Rendered) -> None:
    assert _without_postgres(rendered.with_postgres) == rendered.plain


def test_the_objects_still_validate(rendered: Rendered) -> None:
    for obj in rendered.with_postgres:
        if _is_knative(obj):
            group, version = obj["apiVersion"].split("/")
            jsonschema.validate(obj, SCHEMAS[(group, version, obj["kind"])])
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    assert violations(rendered.with_postgres) == []
    for obj in rendered.with_postgres:
        if obj["apiVersion"] == "serving.knative.dev/v1" and obj["kind"] == "Service":
            assert _pod_spec_violations(obj["spec"]["template"]["spec"]) == []


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

"""The eventing-oidc kustomize Component, added to each overlay as a user would, then rendered."""

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

from .test_knative import (
    KUBERNETES,
    SCHEMAS,
    _containers,
    _is_knative,
    _rag_query,
    _settings_variables,
    render,
    render_with,
)

COMPONENT = "../../components/eventing-oidc"
ADDED = {
    "RAG_OIDC_ISSUER",
    "RAG_OIDC_AUDIENCE",
    "RAG_OIDC_JWKS_URL",
    "RAG_OIDC_CA_FILE",
    "RAG_OIDC_TOKEN_FILE",
}
MOUNT = "kube-api"


@dataclass(frozen=True)
class Rendered:
    """An overlay rendered as shipped, and again with the component added."""

    plain: list[dict[str, Any]]
    with_oidc: list[dict[str, Any]]


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    overlay = f"overlays/{request.param}"
    root = tmp_path_factory.mktemp(f"knative-{request.param}")
    return Rendered(render(overlay), render_with(overlay, COMPONENT, root))


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_the_triggers_carry_the_function_s_audience(rendered: Rendered) -> None:
    audience = _env(_containers(rendered.with_oidc)["service"])["RAG_OIDC_AUDIENCE"]
    triggers = {
        o["metadata"]["name"]: o["spec"]["subscriber"].get("audience")
        for o in rendered.with_oidc
        if o["kind"] == "Trigger"
    }
    assert triggers == {"rag-query-request": audience, "rag-index-published": audience}
    assert audience == "knative-rag/rag-query"


def test_the_variables_it_sets_are_settings_the_function_reads(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _env(_containers(rendered.plain)["service"])
    after = _env(_containers(rendered.with_oidc)["service"])
    added = {name: value for name, value in after.items() if name not in before}
    assert set(added) == ADDED
    assert set(added) <= _settings_variables()
    for name, value in added.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (
        settings.oidc_issuer,
        settings.oidc_audience,
        settings.oidc_jwks_url,
        settings.oidc_ca_file,
        settings.oidc_token_file,
    ) == (
        "https://kubernetes.default.svc.cluster.local",
        "knative-rag/rag-query",
        "https://kubernetes.default.svc/openid/v1/jwks",
        Path("/var/run/secrets/knative-rag/kube-api/ca.crt"),
        Path("/var/run/secrets/knative-rag/kube-api/token"),
    )
    # The builder shares the ConfigMap, not these: they are the function's alone.
    assert not set(_env(_containers(rendered.with_oidc)["builder"])) & ADDED


def test_the_token_and_the_ca_are_mounted_read_only_outside_tmp(rendered: Rendered) -> None:
    service = _rag_query(rendered.with_oidc)
    spec = service["spec"]["template"]["spec"]
    container = spec["containers"][0]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == MOUNT]
    [volume] = [v for v in spec["volumes"] if v["name"] == MOUNT]
    assert mount == {
        "name": MOUNT,
        "mountPath": "/var/run/secrets/knative-rag/kube-api",
        "readOnly": True,
    }
    assert not mount["mountPath"].startswith("/tmp")
    assert volume == {
        "name": MOUNT,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
            ]
        },
    }
    env = _env(container)
    assert (env["RAG_OIDC_TOKEN_FILE"], env["RAG_OIDC_CA_FILE"]) == (
        f"{mount['mountPath']}/token",
        f"{mount['mountPath']}/ca.crt",
    )
    account = next(o for o in rendered.with_oidc if o["kind"] == "ServiceAccount")
    assert account["automountServiceAccountToken"] is False  # hence the projected token
    assert spec["serviceAccountName"] == account["metadata"]["name"]


def test_egress_reaches_the_api_server_on_either_port(rendered: Rendered) -> None:
    policy = next(o for o in rendered.with_oidc if o["kind"] == "NetworkPolicy")
    open_ports = [
        port["port"]
        for rule in policy["spec"]["egress"]
        if "to" not in rule
        for port in rule["ports"]
    ]
    assert open_ports == [443, 6443]


def _without_component(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``objects`` with what the component adds taken out again."""
    objects = copy.deepcopy(objects)
    for obj in objects:
        if obj["kind"] == "Trigger":
            obj["spec"]["subscriber"].pop("audience")
        if obj["kind"] == "NetworkPolicy":
            obj["spec"]["egress"] = [
                r
                for r in obj["spec"]["egress"]
                if r.get("ports") != [{"protocol": "TCP", "port": 6443}]
            ]
    spec = _rag_query(objects)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] not in ADDED]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != MOUNT]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != MOUNT]
    return objects


def test_it_changes_nothing_else(rendered: Rendered) -> None:
    assert _without_component(rendered.with_oidc) == rendered.plain


def test_the_objects_still_validate(rendered: Rendered) -> None:
    for obj in rendered.with_oidc:
        if _is_knative(obj):
            group, version = obj["apiVersion"].split("/")
            jsonschema.validate(obj, SCHEMAS[(group, version, obj["kind"])])
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    assert violations(rendered.with_oidc) == []

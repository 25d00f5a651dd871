"""The Knative manifests, rendered with kustomize and checked as the cluster would check them."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from functions.app import create_app
from functions.settings import Settings
from scripts.knative_rules import violations

ROOT = Path(__file__).resolve().parent.parent
CRDS = Path(__file__).resolve().parent / "knative" / "crds"
OVERLAYS = ["base", "overlays/dev", "overlays/prod"]
# The image name the base's workloads use; each overlay's images: block says which image it is.
IMAGE = "knative-rag"
DIGEST = "sha256:" + "0123456789abcdef" * 4
KUBERNETES = "1.32.0"
# Read by boto3 from the environment (the code never names them); everything else must be a setting.
BOTO3_VARIABLES = {
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
}

if shutil.which("kubectl") is None:
    if os.environ.get("REQUIRE_CONTAINER_TESTS"):
        pytest.fail("kubectl is not installed, but CI must render the manifests", pytrace=False)
    pytest.skip("kubectl is not installed: it renders the kustomizations", allow_module_level=True)


def render(overlay: str, root: Path = ROOT) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(root / "knative" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def render_with(overlay: str, component: str, root: Path) -> list[dict[str, Any]]:
    """``overlay`` rendered from a copy of knative/ under ``root``, with ``component`` added to
    its kustomization the way a user adds it: one line under ``components``."""
    shutil.copytree(ROOT / "knative", root / "knative")
    path = root / "knative" / overlay / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    kustomization.setdefault("components", []).append(component)
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return render(overlay, root=root)


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def _strict(schema: Any) -> Any:
    """The structural schema, rejecting unknown fields wherever the CRD does not preserve them."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def _crd_schemas() -> dict[tuple[str, str, str], Any]:
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                # Every object has these; some CRDs (Broker) leave them out of the schema.
                schema.setdefault("properties", {}).update(
                    {"apiVersion": {"type": "string"}, "kind": {"type": "string"}}
                )
                schema["properties"].setdefault("metadata", {"type": "object"})
                schemas[(group, version["name"], kind)] = _strict(schema)
    return schemas


SCHEMAS = _crd_schemas()


def _is_knative(obj: dict[str, Any]) -> bool:
    return ".knative.dev/" in obj["apiVersion"]


def _rag_query(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(
        o
        for o in objects
        if o["apiVersion"] == "serving.knative.dev/v1" and o["metadata"]["name"] == "rag-query"
    )


def test_every_overlay_renders_the_objects_it_should(objects: list[dict[str, Any]]) -> None:
    kinds = sorted(f"{o['apiVersion']}/{o['kind']}" for o in objects)
    assert kinds == [
        "batch/v1/CronJob",
        "eventing.knative.dev/v1/Broker",
        "eventing.knative.dev/v1/Trigger",
        "eventing.knative.dev/v1/Trigger",
        "networking.k8s.io/v1/NetworkPolicy",
        "serving.knative.dev/v1/Service",
        "serving.knative.dev/v1/Service",
        "sources.knative.dev/v1/SinkBinding",
        "v1/ConfigMap",
        "v1/LimitRange",
        "v1/Namespace",
        "v1/ResourceQuota",
        "v1/ServiceAccount",
    ]
    namespace = next(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace")
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        namespace
    }


def test_knative_objects_match_their_crd_schemas(objects: list[dict[str, Any]]) -> None:
    for obj in filter(_is_knative, objects):
        group, version = obj["apiVersion"].split("/")
        jsonschema.validate(obj, SCHEMAS[(group, version, obj["kind"])])


def test_the_strict_crd_schema_rejects_unknown_fields(objects: list[dict[str, Any]]) -> None:
    service = copy.deepcopy(_rag_query(objects))
    service["spec"]["template"]["spec"]["containerConcurency"] = 4  # a typo the cluster would prune
    with pytest.raises(jsonschema.ValidationError, match="containerConcurency"):
        jsonschema.validate(service, SCHEMAS[("serving.knative.dev", "v1", "Service")])


def test_core_objects_match_the_kubernetes_schemas(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if not _is_knative(obj):
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_the_webhook_rules_hold(objects: list[dict[str, Any]]) -> None:
    assert violations(objects) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda s: s["spec"]["template"]["metadata"]["annotations"].update(
                {"autoscaling.knative.dev/min-scale": "-3"}
            ),
            "out of range",
        ),
        (
            lambda s: (
                s["metadata"]
                .setdefault("annotations", {})
                .update({"autoscaling.knative.dev/min-scale": "1"})
            ),
            "belong on spec.template",
        ),
        (
            lambda s: s["spec"].update(traffic=[{"revisionName": "rag-query-a", "percent": 150}]),
            "sum to 100",
        ),
        (
            lambda s: s["spec"].update(
                traffic=[
                    {"latestRevision": True, "percent": 50, "tag": "x"},
                    {"revisionName": "rag-query-a", "percent": 50, "tag": "x"},
                ]
            ),
            "unique",
        ),
        (
            lambda s: s["spec"].update(
                traffic=[{"latestRevision": True, "percent": 100, "tag": "Green"}]
            ),
            "DNS-1035",
        ),
        (
            lambda s: s["spec"]["template"]["metadata"].update(name="other-20261127"),
            "must start with",
        ),
        (
            lambda s: s["spec"]["template"]["spec"]["containers"][0]["env"].append(
                {"name": "PORT", "value": "1"}
            ),
            "reserved",
        ),
        (
            lambda s: s["spec"]["template"]["spec"]["containers"][0]["ports"].append(
                {"containerPort": 9090}
            ),
            "at most one",
        ),
        (
            lambda s: s["spec"]["template"]["spec"]["containers"][0].update(
                startupProbe={"httpGet": {"path": "/readyz"}}
            ),
            "startupProbe",
        ),
    ],
    ids=[
        "min-scale",
        "service-annotation",
        "percent",
        "duplicate-tag",
        "tag-case",
        "revision-prefix",
        "reserved-env",
        "two-ports",
        "startup-probe",
    ],
)
def test_the_rules_catch_what_the_webhook_rejects(change: Any, problem: str) -> None:
    service = copy.deepcopy(_rag_query(render("base")))
    change(service)
    assert any(problem in line for line in violations([service])), violations([service])


def _settings_variables() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias.choices[0] if alias is not None else f"RAG_{name.upper()}")  # type: ignore[union-attr]
    return names


def _environment(container: dict[str, Any], objects: list[dict[str, Any]]) -> set[str]:
    configmaps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    names = {env["name"] for env in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(configmaps[source["configMapRef"]["name"]])
    return names


def _containers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {}
    for obj in objects:
        if obj["kind"] == "Service" and obj["metadata"]["name"] == "rag-query":
            found["service"] = obj["spec"]["template"]["spec"]["containers"][0]
        if obj["kind"] == "CronJob":
            found["builder"] = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][
                0
            ]
    return found


def test_every_variable_is_a_setting_and_the_required_ones_are_set(
    objects: list[dict[str, Any]],
) -> None:
    known = _settings_variables() | BOTO3_VARIABLES
    for role, container in _containers(objects).items():
        names = _environment(container, objects)
        assert names - known == set(), role
        assert "RAG_STORE_URI" in names, role
        assert not names & {"PORT", "K_REVISION", "K_SERVICE", "K_CONFIGURATION"}, role
    assert "RAG_SOURCE_URI" in _environment(_containers(objects)["builder"], objects)


def test_probes_point_at_routes_the_app_serves(objects: list[dict[str, Any]]) -> None:
    routes = {route.path for route in create_app(Settings()).routes}  # type: ignore[attr-defined]
    container = _containers(objects)["service"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "periodSeconds" not in container["readinessProbe"]
    assert {
        container["readinessProbe"]["httpGet"]["path"],
        container["livenessProbe"]["httpGet"]["path"],
    } <= routes


def test_prod_pins_one_index_per_revision() -> None:
    service = _rag_query(render("overlays/prod"))
    template = service["spec"]["template"]
    index = next(
        e["value"] for e in template["spec"]["containers"][0]["env"] if e["name"] == "RAG_INDEX"
    )
    assert template["metadata"]["name"] == f"rag-query-{index}"
    assert service["spec"]["traffic"] == [
        {"revisionName": f"rag-query-{index}", "percent": 100, "tag": "current"}
    ]


def test_triggers_route_the_function_s_event_types_without_loops(
    objects: list[dict[str, Any]],
) -> None:
    from functions.events import INDEX_PUBLISHED, QUERY_REQUEST, QUERY_RESPONSE

    triggers = {
        o["spec"]["filter"]["attributes"]["type"]: o for o in objects if o["kind"] == "Trigger"
    }
    assert set(triggers) == {QUERY_REQUEST, INDEX_PUBLISHED}
    assert QUERY_RESPONSE not in triggers  # a reply goes back to the Broker: it must not match
    routes = {route.path for route in create_app(Settings()).routes}  # type: ignore[attr-defined]
    for trigger in triggers.values():
        subscriber = trigger["spec"]["subscriber"]
        assert (subscriber["ref"]["name"], subscriber["uri"]) == ("rag-query", "/events")
        assert subscriber["uri"] in routes
        assert trigger["spec"]["delivery"]["deadLetterSink"]["ref"]["name"] == "rag-dead-letters"
    binding = next(o for o in objects if o["kind"] == "SinkBinding")
    assert binding["spec"]["subject"] == {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "name": "rag-index-builder",
    }
    assert binding["spec"]["sink"]["ref"]["kind"] == "Broker"


def _images(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {role: container["image"] for role, container in _containers(objects).items()}


def test_the_base_leaves_the_image_to_the_overlays() -> None:
    assert _images(render("base")) == {"service": IMAGE, "builder": IMAGE}


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"], ids=["dev", "prod"])
def test_an_overlay_deploys_the_image_its_images_block_names(overlay: str) -> None:
    kustomization = yaml.safe_load((ROOT / "knative" / overlay / "kustomization.yaml").read_text())
    [entry] = [e for e in kustomization["images"] if e["name"] == IMAGE]
    pin = f"@{entry['digest']}" if "digest" in entry else f":{entry['newTag']}"
    assert _images(render(overlay)) == {
        "service": entry["newName"] + pin,
        "builder": entry["newName"] + pin,
    }


@pytest.mark.parametrize("overlay", ["dev", "prod"])
@pytest.mark.parametrize(
    ("entry", "image"),
    [
        (
            {"newName": "registry.internal:5000/team/knative-rag", "newTag": "1.2.3"},
            "registry.internal:5000/team/knative-rag:1.2.3",
        ),
        (
            {"newName": "registry.internal:5000/team/knative-rag", "digest": DIGEST},
            f"registry.internal:5000/team/knative-rag@{DIGEST}",
        ),
        ({"newName": "ghcr.io/acme/knative-rag"}, "ghcr.io/acme/knative-rag"),
    ],
    ids=["registry-port-tag", "digest", "name-only"],
)
def test_the_image_a_user_sets_in_the_overlay_is_the_one_deployed(
    tmp_path: Path, overlay: str, entry: dict[str, str], image: str
) -> None:
    shutil.copytree(ROOT / "knative", tmp_path / "knative")
    path = tmp_path / "knative" / "overlays" / overlay / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    kustomization["images"] = [{"name": IMAGE, **entry}]
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    assert _images(render(f"overlays/{overlay}", root=tmp_path)) == {
        "service": image,
        "builder": image,
    }

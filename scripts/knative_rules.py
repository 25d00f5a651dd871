"""What Knative's admission webhook rejects, checked offline on rendered manifests.

A digest of Knative Serving 1.23's validation (see ../shared/reference/knative/RULES.md): the
CRD schemas alone admit ``percent: 150`` or ``min-scale: "-3"``; a real cluster refuses them at
``kubectl apply``. ``violations`` returns one line per broken rule, so that a test, or the release
script before it prints anything, can refuse a manifest the cluster would refuse.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["violations"]

_PREFIX = "autoscaling.knative.dev/"
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+s)?$")
_RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
_RESERVED_PORTS = {8012, 8013, 8022, 9090, 9091, 8008}


def _int(value: str, low: int) -> bool:
    return value.isdigit() and int(value) >= low


def _seconds(value: str) -> int | None:
    match = _DURATION.match(value)
    if not value or not match:
        return None
    hours, minutes, seconds = (int(g[:-1]) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _annotation(key: str, value: str) -> str | None:
    name = key.removeprefix(_PREFIX)
    checks: dict[str, Any] = {
        "class": lambda v: v in ("kpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev"),
        "min-scale": lambda v: _int(v, 0),
        "max-scale": lambda v: _int(v, 0),
        "initial-scale": lambda v: _int(v, 0),
        "activation-scale": lambda v: _int(v, 2),
        "target": lambda v: re.fullmatch(r"\d+(\.\d+)?", v) is not None and float(v) >= 0.01,
        "metric": lambda v: v in ("concurrency", "rps", "cpu", "memory"),
        "target-utilization-percentage": lambda v: v.isdigit() and 1 <= int(v) <= 100,
        "panic-window-percentage": lambda v: v.isdigit() and 1 <= int(v) <= 100,
        "panic-threshold-percentage": lambda v: v.isdigit() and 110 <= int(v) <= 1000,
        "window": lambda v: (s := _seconds(v)) is not None and 6 <= s <= 3600 and v.endswith("s"),
        "scale-to-zero-pod-retention-period": lambda v: (
            (s := _seconds(v)) is not None and s <= 3600
        ),
        "scale-down-delay": lambda v: (s := _seconds(v)) is not None and s <= 3600,
    }
    check = checks.get(name)
    if check is None:
        return f"unknown annotation {key}"
    return None if check(str(value)) else f"{key}: {value!r} is out of range"


def _service(obj: dict[str, Any]) -> list[str]:
    problems = []
    name = obj["metadata"]["name"]
    if any(k.startswith(_PREFIX) for k in obj["metadata"].get("annotations", {})):
        problems.append(f"{name}: autoscaling annotations belong on spec.template.metadata")
    template = obj["spec"]["template"]
    annotations = template.get("metadata", {}).get("annotations", {})
    for key, value in annotations.items():
        if key.startswith(_PREFIX) and (problem := _annotation(key, value)):
            problems.append(f"{name}: {problem}")
    low, high = annotations.get(_PREFIX + "min-scale"), annotations.get(_PREFIX + "max-scale")
    if low and high and low.isdigit() and high.isdigit() and int(high) and int(high) < int(low):
        problems.append(f"{name}: max-scale {high} < min-scale {low}")
    revision = template.get("metadata", {}).get("name")
    if revision is not None and not revision.startswith(f"{name}-"):
        problems.append(f"{name}: revision name {revision!r} must start with '{name}-'")
    spec = template["spec"]
    if not 0 <= spec.get("containerConcurrency", 0) <= 1000:
        problems.append(f"{name}: containerConcurrency must be 0..1000")
    if not 0 <= spec.get("timeoutSeconds", 300) <= 600:
        problems.append(f"{name}: timeoutSeconds must be 0..600")
    for container in spec["containers"]:
        ports = container.get("ports", [])
        if len(ports) > 1:
            problems.append(f"{name}: at most one containerPort")
        for port in ports:
            if port.get("containerPort") in _RESERVED_PORTS or "hostPort" in port:
                problems.append(f"{name}: port {port} is reserved or a hostPort")
            if port.get("name", "") not in ("", "http1", "h2c"):
                problems.append(f"{name}: port name must be empty, http1 or h2c")
        for env in container.get("env", []):
            if env["name"] in _RESERVED_ENV:
                problems.append(f"{name}: env {env['name']} is reserved for the platform")
        if "startupProbe" in container:
            problems.append(f"{name}: no startupProbe (it disables the activator's fast path)")
    problems += _traffic(name, obj["spec"].get("traffic"))
    return problems


def _traffic(name: str, traffic: list[dict[str, Any]] | None) -> list[str]:
    if not traffic:
        return []
    problems = []
    if sum(entry.get("percent", 0) for entry in traffic) != 100:
        problems.append(f"{name}: traffic percents must sum to 100")
    tags = [entry["tag"] for entry in traffic if "tag" in entry]
    if len(tags) != len(set(tags)):
        problems.append(f"{name}: traffic tags must be unique")
    for entry in traffic:
        if not 0 <= entry.get("percent", 0) <= 100:
            problems.append(f"{name}: percent {entry['percent']} out of 0..100")
        if "tag" in entry and not _DNS_1035.match(entry["tag"]):
            problems.append(f"{name}: tag {entry['tag']!r} is not a DNS-1035 label")
        if "configurationName" in entry:
            problems.append(f"{name}: configurationName is not allowed in a Service")
        latest, revision = entry.get("latestRevision"), entry.get("revisionName")
        if (latest is True and revision) or (latest is False and not revision):
            problems.append(f"{name}: traffic entry {entry} mixes latestRevision and revisionName")
        if revision and not revision.startswith(f"{name}-"):
            problems.append(f"{name}: revision {revision!r} is not one of this service's")
    return problems


def violations(objects: list[dict[str, Any]]) -> list[str]:
    """Every rule of Knative's webhook that the objects break (empty when they would apply)."""
    problems = []
    for obj in objects:
        if (
            obj.get("apiVersion", "").startswith("serving.knative.dev/")
            and obj["kind"] == "Service"
        ):
            problems += _service(obj)
    return problems

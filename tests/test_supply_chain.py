"""The runtime lock file the image installs, and the SBOM made from it (make lock, make sbom).

``make audit`` (pip-audit over the lock) needs the package index's vulnerability API, which this
project's CI machines cannot reach; what is checked here is what makes that audit meaningful:
every runtime dependency is pinned and hashed, and the SBOM names exactly what ships.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


@dataclass(frozen=True)
class Pin:
    """One locked distribution: its name, exact version, marker (if any) and hashes."""

    name: str
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]


def locked(path: Path = LOCK) -> list[Pin]:
    """Every entry of a hashed requirements file."""
    text = path.read_text().replace("\\\n", " ")
    pins = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split(" --hash=")
        requirement = Requirement(spec.strip())
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", line
        pins.append(
            Pin(
                canonicalize_name(requirement.name),
                specifier.version,
                requirement.marker,
                tuple(option.strip() for option in options),
            )
        )
    return pins


def test_every_runtime_dependency_is_pinned_with_hashes() -> None:
    pins = locked()
    assert len(pins) > 50
    for pin in pins:
        assert pin.hashes, pin.name
        assert all(h.startswith("sha256:") and len(h) == 7 + 64 for h in pin.hashes), pin.name
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    by_name: dict[str, list[Pin]] = {}
    for pin in pins:
        by_name.setdefault(pin.name, []).append(pin)
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        candidates = by_name.get(canonicalize_name(requirement.name), [])
        assert candidates, f"{requirement.name} is not in requirements.lock: run make lock"
        for pin in candidates:
            assert pin.version in requirement.specifier, (
                f"{pin.name}=={pin.version} does not satisfy {dependency}: run make lock"
            )


def test_the_lock_resolves_for_the_image_python() -> None:
    # The image runs Debian bookworm's python3 (3.11) on Linux: one version of each package.
    environment = {
        "python_version": "3.11",
        "python_full_version": "3.11.2",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
    }
    applicable = [p for p in locked() if p.marker is None or p.marker.evaluate(environment)]
    names = [p.name for p in applicable]
    assert len(names) == len(set(names))
    assert {"fastapi", "uvicorn", "boto3", "llama-index-core", "numpy"} <= set(names)


def test_the_sbom_names_exactly_what_is_locked(tmp_path: Path) -> None:
    out = tmp_path / "sbom.cdx.json"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "cyclonedx-py"),
            "requirements",
            str(LOCK),
            "--pyproject",
            str(ROOT / "pyproject.toml"),
            "--output-reproducible",
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    bom = json.loads(out.read_text())
    assert bom["bomFormat"] == "CycloneDX"
    root = bom["metadata"]["component"]
    # knative-rag, under the project name Knative Functions requires (pyproject.toml).
    assert (root["name"], root["version"]) == ("function", "0.1.0")
    components = {(canonicalize_name(c["name"]), c["version"]) for c in bom["components"]}
    assert components == {(p.name, p.version) for p in locked()}
    for component in bom["components"]:
        assert component["purl"].startswith(f"pkg:pypi/{component['name'].lower()}@")
        (reference,) = component["externalReferences"]
        assert reference["hashes"], component["name"]

"""The query function as a Knative Function: served by func's own scaffolding and the real
func-python middleware, and func.yaml checked against func's published schema and against the
kustomize Service.

func v0.50.1 (knative-v1.23.1) comes from the Go module proxy (``go mod download``): its
``templates/python/scaffolding/instanced-http`` is what ``func run``/``func build`` put around a
Python function, and ``schema/func_yaml-schema.json`` is the schema func validates func.yaml
with. The func CLI itself cannot be built here: it needs github.com/buildpacks/pack, which the
module proxy refuses (403), so these tests run what the CLI would run.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from .conftest import Ollama, Published, function_env

ROOT = Path(__file__).resolve().parent.parent
FUNC = "knative.dev/func@v0.50.1"


@pytest.fixture(scope="module")
def func_release() -> Path:
    """func's released source, from the Go module proxy (cached in Go's module cache)."""
    done = subprocess.run(
        ["go", "mod", "download", "-json", FUNC],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd="/",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return Path(json.loads(done.stdout)["Dir"])


def _func_yaml() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "func.yaml").read_text())
    return document


def test_func_yaml_is_valid_by_func_s_schema(func_release: Path) -> None:
    schema = json.loads((func_release / "schema" / "func_yaml-schema.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    document = _func_yaml()
    # YAML reads the timestamp as a datetime; func reads it as the RFC 3339 string it is.
    document["created"] = document["created"].isoformat().replace("+00:00", "Z")
    assert list(validator.iter_errors(document)) == []
    # The schema is strict: a misspelt field is refused, so the check above means something.
    misspelt = {**document, "deploy": {**document["deploy"], "annotation": {}}}
    assert [error.message for error in validator.iter_errors(misspelt)] == [
        "Additional properties are not allowed ('annotation' was unexpected)"
    ]


def test_func_yaml_deploys_what_the_kustomize_service_deploys() -> None:
    service = yaml.safe_load((ROOT / "knative" / "base" / "service.yaml").read_text())
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    container = template["spec"]["containers"][0]
    func = _func_yaml()
    deploy, run = func["deploy"], func["run"]
    scale = deploy["options"]["scale"]
    assert func["name"] == service["metadata"]["name"]
    # func puts deploy.annotations on the Service's metadata too, where Knative refuses the
    # autoscaling ones: the scale goes through func's options, and matches the base's.
    assert not any(
        key.startswith("autoscaling.knative.dev/") for key in deploy.get("annotations", {})
    )
    assert {
        "autoscaling.knative.dev/min-scale": str(scale["min"]),
        "autoscaling.knative.dev/max-scale": str(scale["max"]),
        "autoscaling.knative.dev/metric": scale["metric"],
        "autoscaling.knative.dev/target": str(scale["target"]),
    } == {
        key: value
        for key, value in annotations.items()
        if key.split("/")[1] in ("min-scale", "max-scale", "metric", "target")
    }
    labels = {label["key"]: label["value"] for label in deploy["labels"]}
    assert labels.items() <= template["metadata"]["labels"].items()
    resources = deploy["options"]["resources"]
    assert resources["requests"] == container["resources"]["requests"]
    limits = dict(resources["limits"])
    assert limits.pop("concurrency") == template["spec"]["containerConcurrency"]
    assert limits == container["resources"]["limits"]
    assert deploy["serviceAccountName"] == template["spec"]["serviceAccountName"]
    named = {env["name"]: env["value"] for env in run["envs"] if "name" in env}
    assert named == {env["name"]: env["value"] for env in container["env"]}
    imported = [env["value"] for env in run["envs"] if "name" not in env]
    assert imported == [
        "{{ configMap:" + container["envFrom"][0]["configMapRef"]["name"] + " }}",
        "{{ secret:" + container["envFrom"][1]["secretRef"]["name"] + " }}",
    ]
    (volume,) = run["volumes"]
    (mount,) = container["volumeMounts"]
    assert volume["path"] == mount["mountPath"]
    assert volume["emptyDir"] == template["spec"]["volumes"][0]["emptyDir"]


def test_pip_takes_the_repository_as_the_function_func_installs(tmp_path: Path) -> None:
    """func's scaffolding depends on ``function @ file://<the function's folder>``."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps"),
            *("--no-index", "--no-build-isolation", "--report", str(report)),
            f"function @ {ROOT.as_uri()}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (installed,) = json.loads(report.read_text())["install"]
    assert installed["metadata"]["name"] == "function"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """A function process: func's scaffolding ``service/main.py`` on func-python."""

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def readiness(self, timeout: float = 60) -> list[int]:
        seen: list[int] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = self.client.get("/health/readiness").status_code
            except httpx.TransportError:
                time.sleep(0.02)
                continue
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == 200:
                break
            time.sleep(0.02)
        return seen


@pytest.fixture
def scaffolded(func_release: Path, tmp_path: Path) -> Path:
    """func's Python scaffolding, laid out as func lays it out in .func/build: ``f`` is the
    function's folder (our repository)."""
    build = tmp_path / "build"
    shutil.copytree(func_release / "templates" / "python" / "scaffolding" / "instanced-http", build)
    for path in build.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (build / "f").symlink_to(ROOT)
    pins = (build / "pyproject.toml").read_text()
    assert '"func-python==0.8.1"' in pins  # the version our pyproject pins
    return build


def _serve(build: Path, env: dict[str, str], log: Path) -> Iterator[Served]:
    port = _free_port()
    env = {**env, "LISTEN_ADDRESS": f"127.0.0.1:{port}", "PYTHONPATH": str(build / "f")}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "service/main.py"],
            cwd=build,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    served = Served(proc, port)
    try:
        yield served
    finally:
        served.client.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def served(
    scaffolded: Path, published: Published, ollama: Ollama, tmp_path: Path
) -> Iterator[Served]:
    env = function_env(published.store_uri, ollama, tmp_path)
    yield from _serve(scaffolded, env, tmp_path / "function.log")


def test_ready_only_once_the_index_is_loaded_then_answers_as_under_uvicorn(
    served: Served, published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    ollama.double.latency_s = 1.0  # the model check takes a second: not ready meanwhile
    seen = served.readiness()
    assert seen[-2:] == [500, 200], seen
    ollama.double.latency_s = 0.0
    assert served.client.get("/health/readiness").text == f"ready: {published.index_id}"
    assert served.client.get("/health/liveness").text == "ok"
    ready = served.client.get("/readyz").json()
    assert (ready["status"], ready["index_id"]) == ("ready", published.index_id)

    body = {"query": "glaciers", "mode": "retrieve", "top_k": 3}
    answer = served.client.post("/query", json=body)
    assert answer.status_code == 200
    assert answer.headers["x-index-id"] == published.index_id
    # The same request to `python -m functions` (uvicorn) on the same index: the same answer.
    port = _free_port()
    env = {
        **function_env(published.store_uri, ollama, tmp_path),
        "PORT": str(port),
        "RAG_CACHE_DIR": str(tmp_path / "uvicorn-cache"),
    }
    proc = subprocess.Popen([sys.executable, "-m", "functions"], env=env, cwd=ROOT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as uvicorn:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if uvicorn.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            reference = uvicorn.post("/query", json=body)
            # The probe paths func.yaml gives Knative, served by the app under uvicorn too (the
            # image's default command, which `func deploy --image` runs).
            assert uvicorn.get("/health/liveness").json() == {"status": "ok"}
            assert uvicorn.get("/health/readiness").json()["index_id"] == published.index_id
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert answer.json() == reference.json()

    # A CloudEvent as a Broker delivers it (binary mode): the reply event, as under uvicorn.
    event = served.client.post(
        "/events",
        json=body,
        headers={
            "ce-specversion": "1.0",
            "ce-id": "func-1",
            "ce-source": "tests/knative-function",
            "ce-type": "dev.knative-rag.query.request",
        },
    )
    assert event.status_code == 200
    assert event.headers["ce-type"] == "dev.knative-rag.query.response"
    assert event.json()["sources"] == reference.json()["sources"]
    # Bad input is the app's problem+json, not the middleware's.
    bad = served.client.post("/query", json={"query": ""})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    metrics = served.client.get("/metrics")
    assert metrics.status_code == 200
    assert 'knative_rag_requests_total{method="POST",route="/query",status="200"} 1.0' in (
        metrics.text
    )


def test_sigterm_drains_the_request_in_flight(served: Served, ollama: Ollama) -> None:
    assert served.readiness()[-1] == 200
    # Longer than hypercorn's own drain (3 s), which start() raises to the query's deadline.
    ollama.double.latency_s = 5.0
    answers: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: answers.append(
            served.client.post("/query", json={"query": "rivers", "mode": "retrieve"})
        )
    )
    request.start()
    time.sleep(0.5)
    served.proc.send_signal(signal.SIGTERM)
    request.join(timeout=60)
    assert [answer.status_code for answer in answers] == [200]
    assert served.proc.wait(timeout=30) == 0
    with pytest.raises(httpx.TransportError):  # it took no new connection after the signal
        served.client.get("/health/liveness")


def test_a_wrong_setting_ends_the_process_with_its_reason(
    scaffolded: Path, published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    env = {**function_env(published.store_uri, ollama, tmp_path), "RAG_EVAL_K": "0"}
    log = tmp_path / "function.log"
    for served in _serve(scaffolded, env, log):
        assert served.proc.wait(timeout=60) == 1
    lines = [line for line in log.read_text().splitlines() if "knative-rag: exiting:" in line]
    assert len(lines) == 1
    assert "eval_k" in lines[0]


def test_an_index_that_cannot_load_ends_the_process(
    scaffolded: Path, published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    env = {
        **function_env(published.store_uri, ollama, tmp_path),
        "RAG_INDEX": "no-such-channel",
        "RAG_STARTUP_TIMEOUT_S": "20",
    }
    log = tmp_path / "function.log"
    for served in _serve(scaffolded, env, log):
        assert served.proc.wait(timeout=60) == 1
    assert "knative-rag: exiting:" in log.read_text()
    assert "no-such-channel" in log.read_text()


def test_the_entry_point_is_named_as_func_python_dispatches() -> None:
    """func-python serves ``new`` by its name: ``function.new`` must be that function."""
    import function
    from functions.knative_function import Function, new

    assert function.new is new
    assert new.__name__ == "new"
    assert isinstance(new(), Function)


def test_the_func_component_leaves_rag_query_to_func_and_keeps_what_it_needs(
    tmp_path: Path,
) -> None:
    """components/func: everything of the overlay but the Service func deploys; the Triggers
    route to a Knative Service of func.yaml's name, so a func-deployed function gets the
    events, and what func.yaml refers to (namespace, ServiceAccount, ConfigMap) is there."""
    from scripts.knative_rules import violations

    from .test_knative import render, render_with

    def names(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in objects}

    plain = render("overlays/dev")
    objects = render_with("overlays/dev", "../../components/func", tmp_path)
    assert names(plain) - names(objects) == {("Service", "rag-query")}
    assert names(objects) <= names(plain)
    assert violations(objects) == []
    func = _func_yaml()
    triggers = [o for o in objects if o["kind"] == "Trigger"]
    assert len(triggers) == 2
    for trigger in triggers:
        ref = trigger["spec"]["subscriber"]["ref"]
        assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
            "serving.knative.dev/v1",
            "Service",
            func["name"],
        )
    namespace = next(o for o in objects if o["kind"] == "Namespace")["metadata"]["name"]
    assert {o["metadata"].get("namespace") for o in objects} <= {namespace, None}
    assert ("ServiceAccount", func["deploy"]["serviceAccountName"]) in names(objects)
    assert ("ConfigMap", "rag-config") in names(objects)  # func.yaml imports it


def test_start_reads_the_configuration_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings.from_environ: the cfg func-python hands start(), not the process environment."""
    from functions.settings import Settings

    monkeypatch.setenv("RAG_INDEX", "from-the-process")
    monkeypatch.setenv("RAG_EVAL_K", "0")  # invalid in the process: must not matter
    given = Settings.from_environ({"RAG_INDEX": "from-cfg", "OLLAMA_HOST": "http://o:1"})
    assert (given.index, given.ollama_host, given.eval_k) == ("from-cfg", "http://o:1", 10)
    assert Settings.from_environ({}).index == "stable"
    with pytest.raises(ValueError, match="eval_k"):
        Settings.from_environ({"RAG_EVAL_K": "0"})

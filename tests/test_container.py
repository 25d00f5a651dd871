"""The image, built and run for real with a container engine (buildah + podman here).

The containers run as Knative runs them at their strictest: a read-only root filesystem, a
tmpfs /tmp, an arbitrary non-root uid, every capability dropped, PORT set by the platform. The
store (moto) and the Ollama double listen on the host's loopback (``--network=host``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from packaging.utils import canonicalize_name

from functions.catalog import read_channel, read_manifest
from functions.storage import open_store

from .conftest import Ollama, build_index, write_corpus
from .loaded_elasticsearch import Loaded, loaded_fixture  # noqa: F401 - the fixture
from .servers import strict_container
from .test_supply_chain import locked

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/knative-rag:test"
# 322 MB measured on Debian bookworm's python3 (358 MB before llama-index-readers-file and its
# pandas left), of which about 15 MB is cryptography (PyJWT's, for Knative Eventing's OIDC
# tokens); 361 MB with the PostgreSQL backend (psycopg with its libpq, and what LlamaIndex's
# PGVectorStore imports: psycopg2 and asyncpg, each with its own libpq and OpenSSL, SQLAlchemy);
# the bound catches a dependency that drags in much more.
MAX_IMAGE_BYTES = 380 * 1000 * 1000


def _engine() -> list[str] | None:
    """$BUILD and $RUN from container-base.sh, or a Docker engine that answers."""
    if os.environ.get("BUILD") and os.environ.get("RUN"):
        return shlex.split(os.environ["RUN"])
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    ):
        return ["docker", "run"]
    return None


RUN = _engine()
if RUN is None:
    if os.environ.get("REQUIRE_CONTAINER_TESTS"):
        pytest.fail("no container engine, but REQUIRE_CONTAINER_TESTS is set", pytrace=False)
    pytest.skip(
        "no container engine: source ../shared/tools/container-base.sh", allow_module_level=True
    )
ENGINE = RUN[0]  # podman (or docker): for exec, kill, wait, logs, inspect


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def image() -> str:
    """``make image``, exactly as a developer runs it."""
    done = subprocess.run(
        ["make", "image", f"IMAGE={IMAGE}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return IMAGE


def _strict(name: str, port: int, env: dict[str, str]) -> list[str]:
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return strict_container(name, {"PORT": str(port), **aws, **env})


@pytest.fixture
def published(s3_uri: str, ollama: Ollama, tmp_path: Path) -> tuple[str, str]:
    manifest = build_index(s3_uri, ollama, write_corpus(tmp_path / "corpus", documents=8))
    return s3_uri, manifest.index_id


@pytest.fixture
def container(
    image: str, published: tuple[str, str], ollama: Ollama, s3_endpoint: str
) -> Iterator[tuple[str, httpx.Client]]:
    name, port = f"rag-{uuid.uuid4().hex[:8]}", _free_port()
    env = {
        "RAG_STORE_URI": published[0],
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "OLLAMA_HOST": ollama.url,
        "RAG_LLM_PROVIDER": "none",
    }
    ollama.double.latency_s = (
        1.0  # the embedding-model check takes a second: /readyz is 503 meanwhile
    )
    subprocess.run([*RUN, "-d", *_strict(name, port, env), image], check=True, capture_output=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield name, client
    finally:
        subprocess.run([ENGINE, "rm", "-f", name], capture_output=True, check=False)


def _readiness(client: httpx.Client, timeout: float = 90) -> list[int]:
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = client.get("/readyz").status_code
        except httpx.TransportError:
            time.sleep(0.02)
            continue
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == 200:
            break
        time.sleep(0.02)
    return seen


def test_image_is_small_labelled_and_non_root(image: str) -> None:
    info = json.loads(
        subprocess.run(
            [ENGINE, "image", "inspect", image], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    assert info["Size"] < MAX_IMAGE_BYTES, f"{info['Size'] / 1e6:.0f} MB"
    labels = info["Config"]["Labels"]
    assert labels["dev.knative-rag.index-format-version"] == "1"
    assert {"org.opencontainers.image.source", "org.opencontainers.image.version"} <= set(labels)
    assert info["Config"]["User"] == "65532:65532"
    assert info["Config"]["Entrypoint"] == ["python", "-m"]
    assert info["Config"]["Cmd"] == ["functions"]


def test_the_image_ships_exactly_the_locked_dependencies(image: str) -> None:
    listing = (
        "import json, importlib.metadata as m; "
        "print(json.dumps(sorted((d.metadata['Name'], d.version) for d in m.distributions())))"
    )
    done = subprocess.run(
        [*RUN, "--rm", "--entrypoint", "python", image, "-c", listing],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    installed = {(canonicalize_name(name), version) for name, version in json.loads(done.stdout)}
    assert ("function", "0.1.0") in installed  # knative-rag: the name func requires
    pins = {(pin.name, pin.version) for pin in locked()}
    assert installed - {("function", "0.1.0")} <= pins  # nothing unlocked got in
    unconditional = {(pin.name, pin.version) for pin in locked() if pin.marker is None}
    assert unconditional <= installed  # and nothing locked is missing


def test_function_serves_under_the_strictest_runtime(
    container: tuple[str, httpx.Client], published: tuple[str, str]
) -> None:
    name, client = container
    assert _readiness(client) == [503, 200]
    response = client.post(
        "/query", json={"query": "facts about rivers", "mode": "retrieve", "top_k": 3}
    )
    assert response.status_code == 200
    assert response.headers["x-index-id"] == published[1]
    assert len(response.json()["sources"]) == 3

    probe = (
        "import os, pathlib\n"
        "caps = [l for l in open('/proc/1/status') if l.startswith('CapEff')][0].split()[1]\n"
        "try:\n    pathlib.Path('/opt/venv/x').write_text('x'); wrote = True\n"
        "except OSError:\n    wrote = False\n"
        "print(os.getuid(), caps, wrote)\n"
    )
    inside = subprocess.run(
        [ENGINE, "exec", name, "python", "-c", probe], capture_output=True, text=True, check=True
    )
    assert inside.stdout.split() == ["12345", "0000000000000000", "False"]
    changed = subprocess.run([ENGINE, "diff", name], capture_output=True, text=True, check=True)
    # The engine itself writes /etc (passwd entry for the uid, hosts) before our process starts.
    paths = {line.split()[1] for line in changed.stdout.splitlines()}
    assert paths <= {"/etc"}, paths


def test_the_image_serves_the_knative_function_too(
    image: str, published: tuple[str, str], ollama: Ollama, s3_endpoint: str
) -> None:
    """``functions.knative_function``: the function on func-python, as func deploys it, from
    the same image, under the same strict runtime."""
    name, port = f"rag-func-{uuid.uuid4().hex[:8]}", _free_port()
    env = {
        "RAG_STORE_URI": published[0],
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "OLLAMA_HOST": ollama.url,
        "RAG_LLM_PROVIDER": "none",
    }
    command = [*RUN, "-d", *_strict(name, port, env), image, "functions.knative_function"]
    subprocess.run(command, check=True, capture_output=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 90
            status = 0
            while time.monotonic() < deadline and status != 200:
                try:
                    status = client.get("/health/readiness").status_code
                except httpx.TransportError:
                    time.sleep(0.05)
            assert status == 200
            response = client.post("/query", json={"query": "rivers", "mode": "retrieve"})
            assert response.status_code == 200
            assert response.headers["x-index-id"] == published[1]
    finally:
        subprocess.run([ENGINE, "rm", "-f", name], capture_output=True, check=False)


def test_sigterm_drains_the_request_in_flight(
    container: tuple[str, httpx.Client], ollama: Ollama
) -> None:
    name, client = container
    assert _readiness(client)[-1] == 200
    ollama.double.latency_s = 3.0  # the query's embedding takes 3 s
    result: dict[str, object] = {}

    def slow() -> None:
        result["response"] = client.post("/query", json={"query": "slow", "mode": "retrieve"})

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.5)
    signalled = time.monotonic()
    subprocess.run([ENGINE, "kill", "--signal", "TERM", name], check=True, capture_output=True)
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{client.base_url}/readyz", timeout=2)  # no new connections while draining
    thread.join(timeout=30)
    status = subprocess.run(
        [ENGINE, "wait", name], capture_output=True, text=True, timeout=30, check=True
    )
    drained = time.monotonic() - signalled
    assert result["response"].status_code == 200  # type: ignore[attr-defined]
    assert int(status.stdout.strip()) in (0, 143)
    assert drained < 10


def test_builder_runs_from_the_same_image(
    image: str, s3_uri: str, s3_endpoint: str, ollama: Ollama, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "docs", documents=4)
    corpus.chmod(0o755)
    # Gated, as the CronJob with components/quality-gate runs: the evaluation's imports and
    # its temporary files work in the image, read-only root and all.
    questions = tmp_path / "eval"
    questions.mkdir(mode=0o755)
    (questions / "questions.json").write_text(
        json.dumps([{"question": "Notes on rivers?", "sources": ["doc-0.md"]}])
    )
    (questions / "questions.json").chmod(0o644)
    name = f"rag-build-{uuid.uuid4().hex[:8]}"
    env = {
        "RAG_STORE_URI": s3_uri,
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "OLLAMA_HOST": ollama.url,
        "RAG_EVAL_QUESTIONS": "/eval/questions.json",
    }
    done = subprocess.run(
        [
            *RUN,
            "--rm",
            *_strict(name, 0, env),
            "-v",
            f"{corpus}:/docs:ro",
            "-v",
            f"{questions}:/eval:ro",
            image,
            "index_builder",
            "build",
            "--source",
            "/docs",
            "--channel",
            "stable",
            "--create-channel",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "passed: no serving index to compare with" in done.stderr
    index_id = done.stdout.strip()
    assert read_channel(open_store(s3_uri), "stable")[0].index_id == index_id
    assert read_manifest(open_store(s3_uri), index_id).counts.documents == 4


def test_unreachable_store_exits_non_zero_within_the_deadline(image: str, ollama: Ollama) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    name = f"rag-{uuid.uuid4().hex[:8]}"
    env = {
        "RAG_STORE_URI": "s3://bucket/rag",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{silent.getsockname()[1]}",
        "OLLAMA_HOST": ollama.url,
        "RAG_STARTUP_TIMEOUT_S": "5",
    }
    started = time.monotonic()
    with silent:
        done = subprocess.run(
            [*RUN, "--rm", *_strict(name, _free_port(), env), image],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1
    assert time.monotonic() - started < 30
    assert done.stderr.strip().splitlines()[-1] == (
        "knative-rag: exiting: index not ready after 5 s (index is loading)"
    )


def test_function_serves_from_elasticsearch_in_the_image(image: str, loaded: Loaded) -> None:
    """RAG_BACKEND=elasticsearch in the image under the strictest runtime: its dependencies
    (LlamaIndex's ElasticsearchStore, the async client) are there, and it reads no store."""
    name, port = f"rag-es-{uuid.uuid4().hex[:8]}", _free_port()
    env = {
        "RAG_BACKEND": "elasticsearch",
        "RAG_ELASTICSEARCH_URL": loaded.url,
        "RAG_ELASTICSEARCH_INDEX_PREFIX": loaded.prefix,
        "OLLAMA_HOST": loaded.ollama.url,
        "RAG_LLM_PROVIDER": "none",
    }
    subprocess.run([*RUN, "-d", *_strict(name, port, env), image], check=True, capture_output=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert _readiness(client)[-1] == 200
            response = client.post("/query", json={"query": "rivers", "mode": "retrieve"})
            assert response.status_code == 200, response.text
            assert response.headers["x-index-id"] == loaded.index_id
            assert len(response.json()["sources"]) == 5
    finally:
        logs = subprocess.run([ENGINE, "logs", name], capture_output=True, text=True, check=False)
        subprocess.run([ENGINE, "rm", "-f", name], capture_output=True, check=False)
    assert "serving index" in logs.stdout + logs.stderr

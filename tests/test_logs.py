"""Logs never carry secrets or tracebacks: the redaction rules, and a real process's output."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from functions.logs import REDACTED, Redactor, TextFormatter, configure, redact

from .conftest import Ollama, Published, function_env
from .servers import function_process

R = REDACTED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Ollama at http://admin:s3cr3t-pw@ollama:11434 is unreachable",
            f"Ollama at http://{REDACTED}@ollama:11434 is unreachable",
        ),
        ("{'Authorization': 'Bearer abc.def-123'}", f"{{'Authorization': '{REDACTED}'}}"),
        ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: {REDACTED}"),
        ("sent Bearer abc.def-123 to it", f"sent Bearer {REDACTED} to it"),
        ("redis://:pw-1234@cache:6379/0", f"redis://{REDACTED}@cache:6379/0"),
        ("http://ollama:11434/api?x=a@b", "http://ollama:11434/api?x=a@b"),
        ("access_token=abc&client_secret=d", f"access_token={R}&client_secret={R}"),
        ("GITHUB_TOKEN=ghp_1 OLLAMA_API_KEY=k-2", f"GITHUB_TOKEN={R} OLLAMA_API_KEY={R}"),
        ("aws_secret_access_key = wJalrXUtn", f"aws_secret_access_key = {REDACTED}"),
        ('refresh_token: "a b c"', f'refresh_token: "{REDACTED}"'),
        ("X-API-Key: k-123456789", f"X-API-Key: {REDACTED}"),
        ("url?X-Amz-Signature=deadbeef&x=1", f"url?X-Amz-Signature={REDACTED}&x=1"),
        ('{"password": "hunter22"}', f'{{"password": "{REDACTED}"}}'),
        ("key the-api-key-value used", f"key {REDACTED} used"),
        ("index 20261127-081500-3f2a9c1d at s3://bucket/rag", "index 20261127-081500-3f2a9c1d at s3://bucket/rag"),
        ("got eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_x from it", f"got {R} from it"),
        ("NoCredentialsError: Unable to locate them", "NoCredentialsError: Unable to locate them"),
        ("InvalidTokenException: expired", "InvalidTokenException: expired"),
        ("skipped docs/passwd.txt: a symbolic link", "skipped docs/passwd.txt: a symbolic link"),
        ("skipped s3://b/tokens.PDF: not a PDF", "skipped s3://b/tokens.PDF: not a PDF"),
        ("db.password: hunter22", f"db.password: {R}"),
    ],
    ids=[
        "url-userinfo", "authorization", "basic", "bearer", "empty-user", "at-in-query",
        "oauth", "env-names", "aws", "quoted-spaces", "x-api-key", "presigned", "password",
        "known-secret", "plain", "jwt", "exception-name", "exception-name-2", "file-name",
        "file-name-2", "dotted-key",
    ],
)  # fmt: skip
def test_redact(text: str, expected: str) -> None:
    assert redact(text, ["the-api-key-value", "short"]) == expected


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, list[logging.LogRecord]]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tests.logs")
    logger.propagate = False
    handler = Keep()
    logger.addHandler(handler)
    yield logger, records
    logger.removeHandler(handler)


def fail() -> None:
    raise ValueError("cannot reach http://u:p4ssw0rd@store:9000 with token=abc123")


def test_a_traceback_becomes_one_redacted_line(
    logged: tuple[logging.Logger, list[logging.LogRecord]],
) -> None:
    logger, records = logged
    logger.handlers[0].addFilter(Redactor(["topsecretkey"]))
    try:
        fail()
    except ValueError:
        logger.exception("request failed with key %s", "topsecretkey")
    (record,) = records
    line = logging.Formatter().format(record)
    assert line == (
        f"request failed with key {REDACTED} [ValueError: cannot reach "
        f"http://{REDACTED}@store:9000 with token={REDACTED} "
        f"at test_logs.py:{fail.__code__.co_firstlineno + 1}]"
    )


def test_debug_keeps_the_traceback_still_redacted(
    logged: tuple[logging.Logger, list[logging.LogRecord]],
) -> None:
    logger, records = logged
    logger.handlers[0].addFilter(Redactor([], tracebacks=True))
    try:
        fail()
    except ValueError:
        logger.exception("failed")
    text = logging.Formatter().format(records[0])
    assert text.startswith("failed\nTraceback (most recent call last):")
    assert "p4ssw0rd" not in text
    assert "abc123" not in text


def test_a_real_function_logs_no_secrets(published: Published, tmp_path: Path) -> None:
    with socket.socket() as closed:  # Ollama "behind basic auth", and down
        closed.bind(("127.0.0.1", 0))
        ollama = f"http://admin:ollama-password-1@127.0.0.1:{closed.getsockname()[1]}"
    secrets = ["client-api-key-0001", "ollama-password-1", "aws-secret-value-0002"]
    env = {
        **os.environ,
        "RAG_STORE_URI": published.store_uri,
        "RAG_CACHE_DIR": str(tmp_path / "cache"),
        "RAG_API_KEYS": "client-api-key-0001",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value-0002",
        "OLLAMA_HOST": ollama,
        "RAG_STARTUP_TIMEOUT_S": "3",
        "PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "functions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    for secret in secrets:
        assert secret not in output
    assert "Traceback" not in output
    assert f"http://{REDACTED}@127.0.0.1" in output
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("knative-rag: exiting: Model server unavailable: Ollama at http://")
    assert last.endswith(" attempts)")


def test_a_failing_thread_is_logged_not_printed(caplog: pytest.LogCaptureFixture) -> None:
    hooks = threading.excepthook, sys.excepthook
    level = logging.getLogger("functions").level
    try:
        configure("INFO")  # keeps the handlers there are (pytest's), adds the Redactor
        thread = threading.Thread(target=fail, name="worker-1")
        thread.start()
        thread.join()
    finally:
        threading.excepthook, sys.excepthook = hooks
        logging.getLogger("functions").setLevel(level)
        for handler in logging.getLogger().handlers:
            for redactor in [f for f in handler.filters if isinstance(f, Redactor)]:
                handler.removeFilter(redactor)
    (record,) = [r for r in caplog.records if r.name == "functions.threads"]
    assert record.getMessage().startswith(
        "thread worker-1 failed [ValueError: cannot reach http://"
    )
    assert "p4ssw0rd" not in record.getMessage()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "functions"],
        ["-m", "uvicorn", "functions.app:app", "--host", "127.0.0.1", "--port", "{port}"],
    ],
    ids=["python-m-functions", "uvicorn-functions-app"],
)
def test_both_documented_ways_to_run_log_the_same(
    published: Published, ollama: Ollama, tmp_path: Path, command: list[str]
) -> None:
    """One JSON object per line, redacted, the open-service warning once, no probe lines."""
    port = _free_port()
    env = {**function_env(published.store_uri, ollama, tmp_path), "PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, *(part.format(port=port) for part in command)],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.05)
            probes = [client.get(path).status_code for path in ("/healthz", "/readyz") * 3]
            query = client.post("/query", json={"query": "rivers", "mode": "retrieve"})
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    assert (probes, query.status_code, stdout) == ([200] * 6, 200, "")
    records = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    assert [r["message"] for r in records if r["level"] == "WARNING"] == [
        "no API key configured (RAG_API_KEYS, RAG_API_KEYS_FILE): the service is open"
    ]
    served = [r["http"] for r in records if "http" in r]
    assert [h["route"] for h in served if h["status"] < 400] == ["/query"]  # probes unlogged
    assert {r["logger"] for r in records} >= {"functions.access", "uvicorn.error"}
    assert "uvicorn.access" not in {r["logger"] for r in records}
    assert all("color_message" not in r for r in records)


_FORGED = "2026-01-01 00:00:00,000 ERROR functions.access: forged"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_client_cannot_forge_a_log_line(
    published: Published, ollama: Ollama, tmp_path: Path, log_format: str
) -> None:
    """A path with %0A, %0D, %1B and U+2028 in it, refused 401: one record, one line."""
    env = {
        **function_env(published.store_uri, ollama, tmp_path),
        "RAG_LOG_FORMAT": log_format,
        "RAG_API_KEYS": "log-key-0001",
    }
    path = "/query%0A" + _FORGED.replace(" ", "%20") + "%0D%1B[2J%E2%80%A8"
    with function_process(env) as running:
        refused = running.client.get(path).status_code
    assert refused == 401
    lines = running.output.splitlines()
    assert [line for line in lines if _FORGED in line and not line.startswith(_FORGED)] != []
    assert [line for line in lines if line.startswith(_FORGED)] == []
    if log_format == "json":
        (access,) = [json.loads(line) for line in lines if "forged" in line]
        assert access["http"]["path"] == "/query\n" + _FORGED + "\r\x1b[2J\u2028"
    else:
        (access,) = [line for line in lines if "forged" in line]
        escaped = f"INFO functions.access: GET /query\\n{_FORGED}\\r\\x1b[2J\\u2028 401 "
        assert escaped in access


def test_text_logs_keep_a_debug_traceback_on_indented_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(Redactor([], tracebacks=True))
    logger = logging.getLogger("tests.text-logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise ValueError(f"bad path /a\n{_FORGED}")
    except ValueError:
        logger.exception("GET %s failed", f"/a\n{_FORGED}")
    finally:
        logger.removeHandler(handler)
    first, *rest = stream.getvalue().splitlines()
    assert first == f"ERROR tests.text-logs: GET /a\\n{_FORGED} failed"
    assert rest[0] == "  Traceback (most recent call last):"
    assert rest[-2:] == ["  ValueError: bad path /a", f"  {_FORGED}"]
    assert all(line.startswith("  ") for line in rest)

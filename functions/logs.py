"""Logging set-up for every entrypoint: one line per record, JSON or text, secrets redacted.

``configure`` puts a ``Redactor`` on the root logger's handlers (ours, or the ones AWS Lambda's
runtime installed), so it sees every record, whoever logged it: our modules, uvicorn, botocore,
httpx. It removes

- the values of known secrets: the API keys, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
  ``PGPASSWORD``;
- credentials written into URLs (``https://user:password@host``);
- bearer tokens, JWTs and ``X-API-Key`` / ``password`` / ``secret`` / ``token`` values;

and replaces a traceback with one line naming the exception and the innermost frame (file name
and line, no folders). ``RAG_LOG_LEVEL=DEBUG`` keeps full tracebacks, still redacted.

With ``RAG_LOG_FORMAT=json`` (the default) each record is one JSON object: ``time``, ``level``,
``logger``, ``message``, the ``request_id`` of the request being answered (see ``edge``) and any
structured fields the caller passed in ``extra`` (the access log's ``http``). Either way a
record is one line, whatever a client put in it: JSON escapes control characters (and here the
Unicode line separators too), ``TextFormatter`` escapes them in text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "Redactor",
    "TextFormatter",
    "configure",
    "redact",
    "request_id",
]

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# uvicorn adds ``color_message`` (its message with terminal colour codes) to some records.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message", "asctime", "request_id", "color_message",
}  # fmt: skip

REDACTED = "[REDACTED]"
_ENV_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD")
_SHORTEST_SECRET = 6  # shorter values would blank out ordinary words
_TRACEBACK_AT = "_traceback_at"  # a record's attribute (private: not a JSON field)
# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAKS = re.compile("[\x85\u2028\u2029]")


def _keep_quotes(match: re.Match[str]) -> str:
    value = match.group(3)
    quote = value[0] if value[:1] in ("'", '"') and len(value) > 1 else ""
    return f"{match.group(1)}{match.group(2)}{quote}{REDACTED}{quote}"


_PATTERNS: tuple[tuple[re.Pattern[str], Any], ...] = (
    # scheme://user:password@host (the user may be empty) -> scheme://[REDACTED]@host; a query
    # or fragment with an @ in it is not userinfo.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@:?#]*:[^/\s@?#]*@"), rf"\1{REDACTED}@"),
    # Authorization: <scheme> <credentials>, whatever the scheme (Basic, Bearer, AWS4-HMAC...)
    (
        re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\n]+"),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer\s+)[^\s'\",;]+"), rf"\1{REDACTED}"),
    # A JWT anywhere (a service-account or OIDC token): header.payload.signature, base64url.
    (re.compile(r"\beyJ[\w-]{4,}\.eyJ[\w-]{4,}\.[\w-]*"), REDACTED),
    # name=value or name: value, for any name containing a secret-sounding word (access_token,
    # client_secret, aws_secret_access_key, X-API-Key, OLLAMA_API_KEY ...); quoted values whole.
    # Not an exception's name: "NoCredentialsError: Unable to locate credentials" is no secret;
    # nor a document's file name in the builder's reports ("skipped passwords.md: a symbolic
    # link").
    (
        re.compile(
            r"(?i)(?<![a-z0-9])([a-z0-9_.-]*(?:api[_-]?keys?|password|passwd|secret|token"
            r"|signature|credential)[a-z0-9_.-]*)(?<!error)(?<!exception)"
            r"(?<!\.txt)(?<!\.md)(?<!\.markdown)(?<!\.rst)(?<!\.html)(?<!\.htm)(?<!\.pdf)"
            r"(['\"]?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s'\",;&]+)"
        ),
        _keep_quotes,
    ),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the given secret values and credential-looking substrings removed."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _SHORTEST_SECRET:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class Redactor(logging.Filter):
    """Rewrites each record: message formatted and redacted, traceback to one line."""

    def __init__(self, secrets: Iterable[str] = (), *, tracebacks: bool = False) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= _SHORTEST_SECRET]
        self.tracebacks = tracebacks

    def filter(self, record: logging.LogRecord) -> bool:
        if _TRACEBACK_AT in record.__dict__:  # rewritten already, by another handler's Redactor
            return True
        message, tail = record.getMessage(), ""
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if self.tracebacks:
                tail = "\n" + "".join(traceback.format_exception(exc)).rstrip()
            else:
                message += f" [{_one_line(exc)}]"
            record.exc_info, record.exc_text = None, None
        if record.stack_info and not self.tracebacks:
            record.stack_info = None
        head = redact(message, self.secrets)
        record.msg, record.args = head + redact(tail, self.secrets), None
        record.__dict__[_TRACEBACK_AT] = len(head)  # where TextFormatter's escaping stops
        record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """One line per record, whatever it carries: control characters in the message (a request
    path with ``%0A`` or ``%1B`` in it) are escaped (``\\n``, ``\\x1b``), so that nothing a
    client sends can forge a line or drive a terminal. A traceback kept at DEBUG, or a stack,
    follows on lines of its own, each indented and escaped likewise."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        cut = record.__dict__.get(_TRACEBACK_AT, len(message))
        record.message = _escape(message[:cut]) + "".join(
            "\n" + line for line in _indented(message[cut:].removeprefix("\n"))
        )
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return "\n".join(_indented(super().formatException(ei)))

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(_indented(stack_info))


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


def _indented(text: str) -> list[str]:
    return [f"  {_escape(line)}" for line in text.split("\n")] if text else []


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:  # only when no Redactor folded it into the message
            entry["exception"] = self.formatException(record.exc_info)
        # json escapes C0 controls; these three would still split a line for str.splitlines().
        return _LINE_BREAKS.sub(
            lambda match: f"\\u{ord(match.group()):04x}",
            json.dumps(entry, default=str, ensure_ascii=False),
        )


def _one_line(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {PurePath(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}{': ' if text else ''}{text}{where}"


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("functions.threads").error(
        "thread %s failed", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
    )


def _uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    logging.getLogger("functions").critical("uncaught exception", exc_info=(kind, value, tb))


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure(
    level: str,
    *,
    secrets: Iterable[str] = (),
    fmt: str | None = None,
    log_format: str = "auto",
    replace: bool = False,
) -> None:
    """Our loggers at ``level``, libraries at WARNING, every record through a ``Redactor``.

    Keeps handlers a host runtime installed (AWS Lambda's) unless ``replace``; adds one on
    stderr where there is none, writing JSON lines (``log_format`` json, or auto when stderr is
    not a terminal) or text.
    """
    json_lines = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    # Uncaught exceptions, in any thread, go through logging too: redacted, one line.
    threading.excepthook = _thread_exception
    sys.excepthook = _uncaught
    root = logging.getLogger()
    if replace:
        for old in list(root.handlers):
            root.removeHandler(old)
    if not root.handlers:
        stderr = _Stderr()
        root.addHandler(stderr)
        stderr.setFormatter(
            JsonFormatter()
            if json_lines
            else TextFormatter(fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root.setLevel(logging.WARNING)
    for name in ("functions", "index_builder"):
        logging.getLogger(name).setLevel(level)
    # ``uvicorn functions.app:app`` gives uvicorn's loggers handlers of their own before the app
    # is imported: drop them, so its records reach the root handler (JSON, redacted), and keep
    # its access log off, since functions.edge writes one line per request (and skips probes).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        server = logging.getLogger(name)
        for old in list(server.handlers):
            server.removeHandler(old)
        server.propagate = name != "uvicorn.access"
    values = [*secrets, *(os.environ.get(name, "") for name in _ENV_SECRETS)]
    tracebacks = logging.getLevelName(level.upper()) == logging.DEBUG
    for handler in root.handlers:
        for stale in [f for f in handler.filters if isinstance(f, Redactor)]:
            handler.removeFilter(stale)
        handler.addFilter(Redactor(values, tracebacks=tracebacks))

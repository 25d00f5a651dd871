"""Logging set-up for every entrypoint: one line per record, secrets redacted.

``configure`` puts a ``Redactor`` on the root logger's handlers (ours, or the ones AWS Lambda's
runtime installed), so it sees every record, whoever logged it: our modules, uvicorn, botocore,
httpx. It removes

- the values of known secrets: the API keys, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``;
- credentials written into URLs (``https://user:password@host``);
- bearer tokens and ``X-API-Key`` / ``password`` / ``secret`` / ``token`` values;

and replaces a traceback with one line naming the exception and the innermost frame (file name
and line, no folders). ``RAG_LOG_LEVEL=DEBUG`` keeps full tracebacks, still redacted.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Iterable
from pathlib import PurePath

__all__ = ["REDACTED", "Redactor", "configure", "redact"]

REDACTED = "[REDACTED]"
_ENV_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_SHORTEST_SECRET = 6  # shorter values would blank out ordinary words
_PATTERNS = (
    # scheme://user:password@host -> scheme://[REDACTED]@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@:]+:[^/\s@]*@"), rf"\1{REDACTED}@"),
    (re.compile(r"(?i)\b(bearer\s+)[^\s'\",;]+"), rf"\1{REDACTED}"),
    (
        re.compile(
            r"(?i)\b(x-api-key|api[_-]?keys?|password|passwd|secret|token|signature|credential)"
            r"(['\"]?\s*[:=]\s*['\"]?)[^\s'\",;&]+"
        ),
        rf"\1\2{REDACTED}",
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
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if self.tracebacks:
                message += "\n" + "".join(traceback.format_exception(exc)).rstrip()
            else:
                message += f" [{_one_line(exc)}]"
            record.exc_info, record.exc_text = None, None
        if record.stack_info and not self.tracebacks:
            record.stack_info = None
        record.msg, record.args = redact(message, self.secrets), None
        return True


def _one_line(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {PurePath(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}{': ' if text else ''}{text}{where}"


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure(
    level: str, *, secrets: Iterable[str] = (), fmt: str | None = None, replace: bool = False
) -> None:
    """Our loggers at ``level``, libraries at WARNING, every record through a ``Redactor``.

    Keeps handlers a host runtime installed (AWS Lambda's) unless ``replace``; adds one on
    stderr where there is none.
    """
    root = logging.getLogger()
    if replace:
        for old in list(root.handlers):
            root.removeHandler(old)
    if not root.handlers:
        stderr = _Stderr()
        stderr.setFormatter(
            logging.Formatter(fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(stderr)
    root.setLevel(logging.WARNING)
    for name in ("functions", "index_builder"):
        logging.getLogger(name).setLevel(level)
    values = [*secrets, *(os.environ.get(name, "") for name in _ENV_SECRETS)]
    tracebacks = logging.getLevelName(level.upper()) == logging.DEBUG
    for handler in root.handlers:
        for stale in [f for f in handler.filters if isinstance(f, Redactor)]:
            handler.removeFilter(stale)
        handler.addFilter(Redactor(values, tracebacks=tracebacks))

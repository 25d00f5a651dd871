"""Every index builder command the README, docs/ and the manifests show is one the CLI takes.

Commands are found as written: ``python -m index_builder ...`` in code blocks and inline code
(continuation lines joined, ``# comments`` dropped), the container form ``<image>
index_builder ...``, and ``args: ["index_builder", ...]`` in YAML. Each is parsed by the real
argument parser, with the environment the text gives it where it relies on one (the CronJob's
ConfigMap). The README's first S3 command and ``list`` also run, as written, against moto's S3
server and the Ollama double.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

from functions.settings import Settings
from index_builder.__main__ import _parser

from .conftest import Ollama

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MANIFESTS = sorted((ROOT / "knative").rglob("*.yaml"))


def _commands(text: str) -> list[list[str]]:
    """The argument lists of the builder commands in a page."""
    text = text.replace("\\\n", " ")
    found = []
    for match in re.finditer(r"(?:python -m |knative-rag:\S+ )index_builder([^`\n]*)", text):
        words = shlex.split(match.group(1), comments=True)
        if words:  # a bare mention of the program, not a command
            found.append(words)
    for match in re.finditer(r'\["index_builder", ([^\]]*)\]', text):
        found.append(json.loads(f"[{match.group(1)}]"))
    return found


def _documented() -> list[tuple[str, list[str]]]:
    return [
        (f"{path.relative_to(ROOT)}: {shlex.join(argv)}", argv)
        for path in [*PAGES, *MANIFESTS]
        for argv in _commands(path.read_text())
    ]


def test_the_pages_show_the_builder_s_commands() -> None:
    where = {label.split(":")[0] for label, _ in _documented()}
    assert {"README.md", "docs/index-builder.md", "knative/base/cronjob.yaml"} <= where
    commands = {argv[argv.index(c)] for _, argv in _documented() for c in argv if c in _VERBS}
    assert commands == _VERBS


_VERBS = {"build", "list", "promote", "load", "gc", "eval", "questions"}


@pytest.mark.parametrize(("label", "argv"), _documented(), ids=[x[0] for x in _documented()])
def test_every_documented_command_parses(label: str, argv: list[str]) -> None:
    # Commands without --store or --source take them from the configuration, as the CronJob
    # does from the ConfigMap rag-config (argparse exits 2 on anything else it cannot take).
    config = yaml.safe_load((ROOT / "knative" / "base" / "configmap.yaml").read_text())["data"]
    settings = Settings(store_uri=config["RAG_STORE_URI"], source_uri=config["RAG_SOURCE_URI"])
    args = _parser(settings).parse_args(argv)
    assert args.command in _VERBS


def test_the_readme_s_first_s3_commands_run_as_written(
    s3_endpoint: str, ollama: Ollama, tmp_path: Path
) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Against Ollama and S3") :]
    build = next(argv for argv in _commands(section) if argv[0] == "build")
    listing = next(argv for argv in _commands(section) if "list" in argv)
    store = build[build.index("--store") + 1]
    bucket = store.split("/")[2]
    s3 = boto3.client("s3")
    if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=bucket)
    env = {**os.environ, "OLLAMA_HOST": ollama.url, "RAG_CACHE_DIR": str(tmp_path)}
    built = _builder(build, env)
    assert built.returncode == 0, built.stderr[-2000:]
    listed = _builder(listing, env)
    assert listed.returncode == 0, listed.stderr
    assert f"channel stable           -> {built.stdout.strip()}" in listed.stdout


def _builder(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "index_builder", *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

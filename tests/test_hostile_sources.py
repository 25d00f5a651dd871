"""Sources uploaded by someone hostile (issue 14): keys that climb out of the download folder,
symbolic links, names with control characters, files that expand far beyond their size, local
paths in metadata. Real files made here, moto's S3 server over HTTP, the builder as a process.
HTML's hidden text is in test_html_text."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
from pypdf import PdfReader

from functions import s3 as s3_module
from functions.catalog import fetch_artifact
from functions.embeddings import OllamaEmbedder
from functions.errors import InvalidRequest
from functions.storage import open_store
from index_builder.__main__ import main as builder
from index_builder.build import chunk_documents
from index_builder.job import run_build
from index_builder.limits import Limits
from index_builder.progress import Progress
from index_builder.sources import load_documents

from .conftest import Ollama, write_corpus
from .pdf_bombs import PHRASE, SHOW, pdf_bomb
from .test_announcements import sink

ROOT = Path(__file__).resolve().parent.parent
_BOMB_REPEATS = 5_000


def _put(source: str, objects: dict[str, bytes]) -> None:
    """Upload ``objects`` (keys relative to the ``s3://bucket/prefix`` source) to moto."""
    bucket, prefix = source.removeprefix("s3://").split("/", 1)
    client = boto3.client("s3")
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=body)


@contextmanager
def _s3_downloads() -> Iterator[list[str]]:
    """The keys of the GetObject requests the process sends meanwhile, seen through botocore's
    event hooks on every S3 client the store makes (``functions.s3._client``)."""
    keys: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        keys.append(params["Key"])

    def hooked(config: Any) -> Any:
        client = made(config)
        client.meta.events.register("before-parameter-build.s3.GetObject", record)
        return client

    made = s3_module._client
    with mock.patch.object(s3_module, "_client", hooked):
        yield keys


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_s3_keys_that_climb_out_are_skipped_and_nothing_is_written_outside(
    s3_uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = f"{s3_uri}/uploads"
    outside = tmp_path / "outside"  # where the old builder wrote the first two
    climbing = "../" * 16 + f"{outside.relative_to('/')}/dots.md"  # extra ..s stop at /
    absolute = f"/{outside.relative_to('/')}/absolute.md"
    hostile = [  # (key, as warnings show it, why); moto refuses a newline: CR and ESC stand in
        (climbing, climbing, "a '..' path segment"),
        (absolute, absolute, "an absolute key (it starts with /)"),
        ("sub//empty.md", "sub//empty.md", "an empty path segment (//)"),
        ("./dot.md", "./dot.md", "a '.' path segment"),
        ("back\\slash.md", "back\\slash.md", "a backslash in the name"),
        ("cr\rname.md", "cr\\rname.md", "control character U+000D in the name"),
        ("esc\x1b[2Jname.md", "esc\\x1b[2Jname.md", "control character U+001B in the name"),
        ("rlo\u202egpj.md", "rlo\\u202egpj.md", "control character U+202E in the name"),
    ]
    _put(source, {key: b"# pwned\n\nwritten by an uploader.\n" for key, _, _ in hostile})
    _put(source, {"guide.md": b"# Guide\n\nScale to zero.\n", "sub/notes.txt": b"Notes."})
    progress = Progress(bars=False)
    documents = load_documents(source, progress)
    assert not outside.exists()
    assert [d.metadata["source"] for d in documents] == [
        f"{source}/guide.md",
        f"{source}/sub/notes.txt",
    ]
    expected = {f"{source}/{shown}": reason for _, shown, reason in hostile}
    assert dict(progress.skipped) == expected
    assert sorted(_warnings(caplog)) == sorted(f"skipped {s}: {r}" for s, r in expected.items())
    assert all(message.isprintable() for message in _warnings(caplog))


def test_an_s3_key_that_climbs_out_fails_the_build_by_name_when_asked(
    s3_uri: str, tmp_path: Path
) -> None:
    source = f"{s3_uri}/uploads"
    key = "../" * 16 + f"{(tmp_path / 'outside').relative_to('/')}/dots.md"
    _put(source, {"guide.md": b"# Guide\n", key: b"pwned"})
    with pytest.raises(InvalidRequest) as caught:
        load_documents(source, on_unreadable="fail")
    assert caught.value.message == f"could not read {source}/{key}: a '..' path segment"
    assert not (tmp_path / "outside").exists()


def test_symbolic_links_are_skipped_without_naming_their_targets(
    tmp_path: Path, ollama: Ollama
) -> None:
    secret = "root:x:0:0"
    assert secret in Path("/etc/passwd").read_text()  # a target worth reading
    source = write_corpus(tmp_path / "docs", documents=2)
    private = tmp_path / "private"
    private.mkdir()
    (private / "keys.md").write_text("The deploy key is 8c1f9a.\n")
    (source / "passwd.txt").symlink_to("/etc/passwd")  # the issue's example
    (source / "shared").symlink_to(private, target_is_directory=True)
    (source / "sub").mkdir()
    (source / "sub" / "keys.md").symlink_to(private / "keys.md")
    env = {
        **os.environ,
        "OLLAMA_HOST": ollama.url,
        "RAG_STORE_URI": str(tmp_path / "store"),
        "RAG_LOG_FORMAT": "text",
        "RAG_CHUNK_SIZE": "64",
        "RAG_CHUNK_OVERLAP": "8",
    }
    done = subprocess.run(
        [sys.executable, "-m", "index_builder", "build", "--source", str(source)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("WARNING")] == [
        f"WARNING index_builder.sources: skipped {name}: a symbolic link"
        for name in ("passwd.txt", "shared", "sub/keys.md")
    ]
    assert re.search(r"^built \S+: 2 documents, .*, 3 files skipped$", done.stderr, re.M)
    index = tmp_path / "store" / "indexes" / done.stdout.strip()
    written = b"".join(path.read_bytes() for path in index.iterdir()).decode("latin-1")
    for needle in ("/etc", str(private), secret, "8c1f9a"):
        assert needle not in done.stdout + done.stderr
        assert needle not in written


def test_a_name_with_a_control_character_is_skipped_and_shown_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "ok.md").write_text("# Fine\n")
    (tmp_path / "evil\nsource: admin.md").write_text("# Forged\n")
    (tmp_path / "folder\x1b[2J").mkdir()
    (tmp_path / "folder\x1b[2J" / "inside.md").write_text("# Inside\n")
    progress = Progress(bars=False)
    assert [d.id_ for d in load_documents(str(tmp_path), progress)] == ["ok.md"]
    assert progress.skipped == [
        ("evil\\nsource: admin.md", "control character U+000A in the name"),
        ("folder\\x1b[2J", "control character U+001B in the name"),
    ]
    assert _warnings(caplog) == [f"skipped {s}: {r}" for s, r in progress.skipped]


_PAGE = b"<html><body><script>x()</script><p>Scale to zero.</p></body></html>"
_METADATA = {"source", "file_name", "file_type"}


def test_no_document_nor_built_record_carries_a_local_path(
    s3_uri: str, tmp_path: Path, ollama: Ollama
) -> None:
    files = {"page.html": _PAGE, "guide.pdf": pdf_bomb(3), "notes.md": b"# Notes\n\nText.\n"}
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    bucket_source = f"{s3_uri}/uploads"
    _put(bucket_source, files)
    embedder = OllamaEmbedder("nomic-embed-text", ollama.url)
    for source in (str(folder), bucket_source):
        documents = load_documents(source)
        assert {d.metadata["file_name"]: set(d.metadata) for d in documents} == {
            "guide.pdf": {*_METADATA, "page_label"},
            "notes.md": _METADATA,
            "page.html": _METADATA,
        }
        manifest = run_build(
            open_store(s3_uri), source, embedder, channel=None, chunk_size=64, chunk_overlap=8
        )
        artifact = fetch_artifact(open_store(s3_uri), manifest, tmp_path / "fetched")
        keys = {key for row in range(len(artifact)) for key in artifact.record(row).metadata}
        assert keys == {*_METADATA, "page_label"}
        index = tmp_path / "fetched" / manifest.index_id
        for name in ("docstore.jsonl", "columns.json"):
            text = (index / name).read_text()
            assert "file_path" not in text
            assert tempfile.gettempdir() not in text


def test_the_hostile_pdf_gives_far_more_text_than_its_size() -> None:
    # Measured: 5,000 repeats are a 1,446-byte PDF whose one content stream decompresses to
    # 275,000 bytes and gives pypdf 130,000 characters, 90 times its size, in 0.6 s. 200,000
    # repeats are 32,654 bytes: 11 MB of content, 5.2 M characters (over the default limit of
    # 5 M), 111 s of extraction here; the default limits stop it only after 111 s.
    data = pdf_bomb(_BOMB_REPEATS)
    reader = PdfReader(io.BytesIO(data))
    (page,) = reader.pages
    assert len(data) == 1_446
    assert len(page.get_contents().get_data()) == _BOMB_REPEATS * len(SHOW)
    assert page.extract_text() == PHRASE * _BOMB_REPEATS


_TEXT_LIMIT = (
    "more than 10,000 characters of text, the limit per file (--max-file-chars, RAG_MAX_FILE_CHARS)"
)
# (file name, its bytes, the limits, why it is skipped); the good document is under them all.
_OVER_A_LIMIT = [
    (
        "big.txt",
        b"words " * 500,
        Limits(file_bytes=2_048),
        "2.9 KiB, over the limit of 2.0 KiB per file (--max-file-mb, RAG_MAX_FILE_MB)",
    ),
    ("long.md", "é".encode() * 10_001, Limits(file_chars=10_000), _TEXT_LIMIT),
    ("bomb.pdf", pdf_bomb(_BOMB_REPEATS), Limits(file_chars=10_000), _TEXT_LIMIT),
    (
        "bomb.pdf",
        pdf_bomb(_BOMB_REPEATS),
        Limits(file_bytes=64 << 10),
        "its pages decompress to more than 64.0 KiB, the limit per file "
        "(--max-file-mb, RAG_MAX_FILE_MB)",
    ),
    (
        "bomb.pdf",
        pdf_bomb(_BOMB_REPEATS),
        Limits(page_content_bytes=64 << 10),
        "page 1's content decompresses to more than 64.0 KiB, the limit per page (its text "
        "would take too long to extract)",
    ),
    (  # refused by its page count before any page is parsed: no text reason
        "pages.pdf",
        pdf_bomb(_BOMB_REPEATS, pages=5),
        Limits(pdf_pages=4, file_chars=10_000),
        "5 pages, over the limit of 4 per PDF (--max-pdf-pages, RAG_MAX_PDF_PAGES)",
    ),
]


@pytest.mark.parametrize(
    ("name", "data", "limits", "reason"),
    _OVER_A_LIMIT,
    ids=["bytes", "characters", "pdf-text", "pdf-content", "pdf-page-content", "pdf-pages"],
)
def test_a_file_over_a_limit_is_skipped_naming_the_limit_and_its_variable(
    tmp_path: Path, name: str, data: bytes, limits: Limits, reason: str
) -> None:
    (tmp_path / "good.md").write_text("# Good\n\n" + "é" * 1_000)
    (tmp_path / name).write_bytes(data)
    progress = Progress(bars=False)
    documents = load_documents(str(tmp_path), progress, limits=limits)
    assert [d.id_ for d in documents] == ["good.md"]
    assert progress.skipped == [(name, reason)]
    with pytest.raises(InvalidRequest) as caught:
        load_documents(str(tmp_path), on_unreadable="fail", limits=limits)
    assert caught.value.message == f"could not read {name}: {reason}"


def test_a_file_at_a_limit_is_read(tmp_path: Path) -> None:
    (tmp_path / "exact.md").write_text("é" * 1_040)  # 2,080 bytes
    # Two pages drawing one content stream: 2 x 1,100 bytes of content, 2 x 520 characters.
    (tmp_path / "hostile.pdf").write_bytes(pdf_bomb(20, pages=2))
    limits = Limits(file_bytes=2_200, pdf_pages=2, file_chars=1_040)
    documents = load_documents(str(tmp_path), limits=limits)
    assert [(d.id_, len(d.text)) for d in documents] == [
        ("exact.md", 1_040),
        ("hostile.pdf", 520),
        ("hostile.pdf#1", 520),
    ]


def test_an_s3_object_over_the_byte_limit_is_skipped_before_it_is_downloaded(
    s3_uri: str,
) -> None:
    source = f"{s3_uri}/uploads"
    _put(source, {"big.md": b"words " * 1_000, "guide.md": b"# Guide\n\nScale to zero.\n"})
    progress = Progress(bars=False)
    with _s3_downloads() as downloaded:
        documents = load_documents(source, progress, limits=Limits(file_bytes=1_024))
    assert [d.id_ for d in documents] == [f"{source}/guide.md"]
    assert progress.skipped == [
        (
            f"{source}/big.md",
            "5.9 KiB, over the limit of 1.0 KiB per file (--max-file-mb, RAG_MAX_FILE_MB)",
        )
    ]
    assert downloaded == ["rag/uploads/guide.md"]


def test_a_build_over_the_chunk_limit_fails_before_anything_is_embedded(
    corpus: Path, s3_uri: str, ollama: Ollama
) -> None:
    first = load_documents(str(corpus))[:1]
    chunks = len(chunk_documents(first, chunk_size=64, chunk_overlap=8))
    with pytest.raises(InvalidRequest) as caught:
        run_build(
            open_store(s3_uri),
            str(corpus),
            OllamaEmbedder("nomic-embed-text", ollama.url),
            channel="stable",
            create_channel=True,
            chunk_size=64,
            chunk_overlap=8,
            limits=Limits(chunks=chunks - 1),
        )
    assert caught.value.message == (
        f"the documents make more than {chunks - 1:,} chunks, the limit per build "
        f"(--max-chunks, RAG_MAX_CHUNKS): {chunks:,} from the first 1 of 6 documents; "
        "nothing was embedded"
    )
    assert ollama.double.embedded == []  # not even the model's probe
    assert open_store(s3_uri).list_objects("") == []


def test_the_limits_are_build_options_and_travel_in_the_published_event(
    s3_uri: str,
    corpus: Path,
    ollama: Ollama,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("RAG_MAX_PDF_PAGES", "3")  # by its variable; the others by option
    (corpus / "bomb.pdf").write_bytes(pdf_bomb(_BOMB_REPEATS))
    (corpus / "pages.pdf").write_bytes(pdf_bomb(1, pages=4))
    options = ["--create-channel", "--max-file-mb", "2", "--max-file-chars", "100000"]
    options += ["--max-chunks", "500"]
    with sink() as (url, received):
        monkeypatch.setenv("K_SINK", url)
        status = builder(
            ["--store", s3_uri, "build", "--source", str(corpus), "--channel", "stable", *options]
        )
    assert status == 0, capsys.readouterr().err
    (event,) = received
    data = event.get_data()
    assert data["limits"] == {
        "max_file_mb": 2,
        "max_pdf_pages": 3,
        "max_file_chars": 100_000,
        "max_chunks": 500,
    }
    assert data["skipped"] == {
        "files": 2,
        "first": [
            {"source": "bomb.pdf", "reason": _TEXT_LIMIT.replace("10,000", "100,000")},
            {
                "source": "pages.pdf",
                "reason": "4 pages, over the limit of 3 per PDF (--max-pdf-pages, "
                "RAG_MAX_PDF_PAGES)",
            },
        ],
    }


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-file-mb", "0", "must be 1 or more, not 0"),
        ("--max-pdf-pages", "-3", "must be 1 or more, not -3"),
        ("--max-file-chars", "lots", "'lots' is not a whole number"),
        ("--max-chunks", "1.5", "'1.5' is not a whole number"),
    ],
    ids=["zero", "negative", "word", "fraction"],
)
def test_a_limit_must_be_a_whole_number_of_1_or_more(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, option: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        builder(["--store", str(tmp_path), "build", "--source", str(tmp_path), option, value])
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [f"python -m index_builder build: error: argument {option}: {message}"]

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from functions.artifact import PROBE_TEXT
from functions.catalog import fetch_artifact, read_manifest
from functions.embeddings import OllamaEmbedder
from functions.errors import ConfigurationError, InvalidRequest, UpstreamError
from functions.storage import open_store
from index_builder.build import chunk_documents
from index_builder.job import run_build
from index_builder.progress import Progress
from index_builder.sources import load_documents

from .conftest import Ollama, write_corpus
from .pdf_bombs import one_page_pdf


def build_and_publish(
    source: Path | str, store_uri: str, ollama: Ollama, channel: str = "stable"
) -> str:
    """What ``python -m index_builder build`` does, through the API."""
    embedder = OllamaEmbedder("nomic-embed-text", ollama.url, batch_size=8)
    return run_build(
        open_store(store_uri),
        str(source),
        embedder,
        channel=channel,
        create_channel=True,
        chunk_size=64,
        chunk_overlap=8,
    ).index_id


def test_documents_become_chunks_with_stable_ids(corpus: Path) -> None:
    documents = load_documents(str(corpus))
    assert sorted(d.id_ for d in documents) == [f"doc-{i}.md" for i in range(6)]
    assert documents[0].metadata == {
        "source": documents[0].id_,
        "file_name": documents[0].id_,
        "file_type": "md",
    }
    records = chunk_documents(documents, chunk_size=64, chunk_overlap=8)
    assert len(records) > len(documents)
    assert records == chunk_documents(documents, chunk_size=64, chunk_overlap=8)
    first = [r for r in records if r.doc_id == "doc-0.md"]
    assert [r.id for r in first] == [f"doc-0.md#{n}" for n in range(len(first))]


def test_html_is_read_as_text_and_other_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text(
        "<html><head><title>T</title></head><body><h1>Guide</h1><p>Scale to zero.</p></body></html>"
    )
    (tmp_path / "notes.txt").write_text("plain text notes")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    documents = {d.id_: d for d in load_documents(str(tmp_path))}
    assert sorted(documents) == ["notes.txt", "page.html"]
    assert "Scale to zero." in documents["page.html"].text
    assert "<p>" not in documents["page.html"].text


def test_empty_or_missing_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"no \.txt"):
        load_documents(str(tmp_path))
    with pytest.raises(ConfigurationError, match="not a folder"):
        load_documents(str(tmp_path / "absent"))


def test_documents_from_an_s3_prefix(s3_uri: str, corpus: Path) -> None:
    bucket = s3_uri.split("/")[2]
    client = boto3.client("s3")
    for path in corpus.iterdir():
        client.upload_file(str(path), bucket, f"docs/{path.name}")
    client.put_object(Bucket=bucket, Key="docs/skip.bin", Body=b"x")
    documents = load_documents(f"s3://{bucket}/docs")
    assert sorted(d.metadata["source"] for d in documents) == [
        f"s3://{bucket}/docs/doc-{i}.md" for i in range(6)
    ]


def test_rebuild_embeds_only_the_changed_document(
    corpus: Path, s3_uri: str, ollama: Ollama, tmp_path: Path
) -> None:
    first = build_and_publish(corpus, s3_uri, ollama)
    manifest = read_manifest(open_store(s3_uri), "stable")
    assert manifest.index_id == first
    assert manifest.counts.reused == 0
    assert manifest.counts.embedded == manifest.counts.chunks

    (corpus / "doc-3.md").write_text("# Changed\n\nThis document was rewritten entirely. " * 5)
    ollama.double.embedded.clear()
    second = build_and_publish(corpus, s3_uri, ollama)
    rebuilt = read_manifest(open_store(s3_uri), "stable")
    artifact = fetch_artifact(open_store(s3_uri), rebuilt, tmp_path / "cache")
    changed = [
        artifact.record(row).text
        for row in range(len(artifact))
        if artifact.record(row).doc_id == "doc-3.md"
    ]
    assert second != first
    assert rebuilt.counts.embedded == len(changed)
    assert rebuilt.counts.reused == rebuilt.counts.chunks - len(changed)
    assert sorted(ollama.double.embedded) == sorted([*changed, PROBE_TEXT])


def test_embedding_failure_fails_the_build_without_publishing(
    corpus: Path, s3_uri: str, ollama: Ollama, tmp_path: Path
) -> None:
    ollama.double.fail_embed = True
    with pytest.raises(UpstreamError, match="nomic-embed-text' failed 4 times"):
        build_and_publish(corpus, s3_uri, ollama)
    assert open_store(s3_uri).list_objects("") == []


def test_embedding_batches_are_retried_until_the_server_recovers(
    corpus: Path, s3_uri: str, ollama: Ollama
) -> None:
    ollama.double.fail_next = 2  # the first two requests fail, as during a model server restart
    index_id = build_and_publish(corpus, s3_uri, ollama)
    assert read_manifest(open_store(s3_uri), "stable").index_id == index_id


def test_chunk_overlap_must_be_below_chunk_size(corpus: Path) -> None:
    with pytest.raises(ConfigurationError, match="overlap"):
        chunk_documents(load_documents(str(corpus)), chunk_size=64, chunk_overlap=64)


def test_large_corpus_fills_many_embedding_batches(
    tmp_path: Path, s3_uri: str, ollama: Ollama
) -> None:
    source = write_corpus(tmp_path / "big", documents=40, paragraphs=6)
    build_and_publish(source, s3_uri, ollama)
    manifest = read_manifest(open_store(s3_uri), "stable")
    assert manifest.counts.documents == 40
    assert manifest.counts.chunks == manifest.counts.embedded > 512
    assert len(ollama.double.embedded) == manifest.counts.chunks + 1


def test_sources_under_a_hidden_folder_are_read_but_hidden_files_inside_are_not(
    tmp_path: Path,
) -> None:
    source = write_corpus(tmp_path / ".cache" / "docs", documents=2)
    (source / ".git").mkdir()
    (source / ".git" / "notes.md").write_text("internal")
    (source / ".draft.md").write_text("draft")
    assert sorted(d.id_ for d in load_documents(str(source))) == ["doc-0.md", "doc-1.md"]


# Files a bulk upload brings that are not documents: (name, bytes, why the builder skips it).
_NOT_DOCUMENTS = [
    (
        "ls.txt",
        b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8,  # the start of a real binary
        "binary content (NUL bytes), not text",
    ),
    (
        "blob.md",
        bytes.fromhex("c3 28 a0 a1 e2 28 a1 f0 28 8c bc 80") * 64,
        "not UTF-8 text (invalid byte at offset 0)",
    ),
    (
        "broken.pdf",
        b"%PDF-1.4 this is not really a pdf",
        "PdfStreamError: Stream has ended unexpectedly",
    ),
]


def _unreadable(root: Path) -> dict[str, str]:
    """Writes the files that are not documents into ``root``; their reasons, by source."""
    for name, data, _ in _NOT_DOCUMENTS:
        (root / name).write_bytes(data)
    return {name: reason for name, _, reason in _NOT_DOCUMENTS}


def test_files_that_are_not_documents_are_skipped_named_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write_corpus(tmp_path / "docs", documents=2)
    expected = _unreadable(source)
    progress = Progress(bars=False)
    documents = load_documents(str(source), progress)
    assert sorted(d.id_ for d in documents) == ["doc-0.md", "doc-1.md"]
    assert dict(progress.skipped) == expected
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warnings if w.startswith("skipped")] == [
        f"skipped {name}: {reason}" for name, reason in sorted(expected.items())
    ]
    (reading,) = progress.phases
    assert (reading.done, reading.notes) == (5, ["2 documents", "3 skipped"])
    assert "5 files" in progress.summary()
    assert "2 documents; 3 skipped" in progress.summary()


@pytest.mark.parametrize(
    ("name", "data", "reason"), _NOT_DOCUMENTS, ids=["binary", "not-utf8", "corrupt-pdf"]
)
def test_an_unreadable_file_fails_the_build_by_name_when_asked(
    tmp_path: Path, name: str, data: bytes, reason: str
) -> None:
    source = write_corpus(tmp_path / "docs", documents=1)
    (source / name).write_bytes(data)
    with pytest.raises(InvalidRequest) as caught:
        load_documents(str(source), on_unreadable="fail")
    assert caught.value.message == f"could not read {name}: {reason}"


def test_text_in_utf8_with_a_bom_or_accents_is_read(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_bytes("\ufeff# Café\n\nNaïve façade, 東京.\n".encode())
    (document,) = load_documents(str(tmp_path))
    assert "Naïve façade, 東京." in document.text


def test_only_unreadable_files_is_no_text_to_index(tmp_path: Path, ollama: Ollama) -> None:
    _unreadable(tmp_path)
    with pytest.raises(ConfigurationError, match="no text to index"):
        build_and_publish(tmp_path, str(tmp_path / "store"), ollama)


def test_pdf_pages_are_read_with_llamaindex_pdf_reader(tmp_path: Path) -> None:
    (tmp_path / "guide.pdf").write_bytes(one_page_pdf("Knative scales the query function to zero."))
    (document,) = load_documents(str(tmp_path))
    assert "Knative scales the query function to zero." in document.text
    assert (document.id_, document.metadata["source"], document.metadata["file_type"]) == (
        "guide.pdf",
        "guide.pdf",
        "pdf",
    )

"""The hardening load run (bench/soak.py) with small counts: no request fails under steady load
or during hot reloads, and overload is refused with 503 while accepted requests succeed.
``python bench/soak.py`` runs the full size (20,000 requests on a 100k index) and reports
latencies; this test counts outcomes only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import corpus as synthetic
from bench.soak import run_soak
from functions.storage import open_store

from .conftest import Ollama

pytestmark = pytest.mark.load


def test_no_request_fails_under_load_reloads_or_overload(
    s3_uri: str, ollama: Ollama, tmp_path: Path
) -> None:
    dim = ollama.double.models["nomic-embed-text"]
    texts = synthetic.texts(4000)
    store = open_store(s3_uri)
    ids = (
        synthetic.publish_synthetic(store, texts, dim, tmp_path / "a"),
        synthetic.publish_synthetic(
            store, synthetic.texts(4000, seed=1), dim, tmp_path / "b", channel=None
        ),
    )
    env = {**os.environ, "OLLAMA_HOST": ollama.url, "RAG_LOG_LEVEL": "WARNING"}
    results = run_soak(
        env,
        s3_uri,
        ids,
        texts[:200],
        tmp_path,
        requests=1500,
        concurrency=32,
        reloads=4,
        overload_limit=2,
        overload_concurrency=32,
        overload_requests=800,
    )
    steady, reloading, overload = results["steady"], results["with_reloads"], results["overload"]
    assert steady["statuses"] == {"200": 1500}, steady["function_log"]
    # (the load goes on past 1,500 requests if the reloads need longer)
    assert set(reloading["statuses"]) == {"200"}, reloading["function_log"]
    assert reloading["requests"] >= 1500
    assert (reloading["reloads_done"], reloading["reload_outcomes"]) == (4, {"succeeded": 4})
    assert reloading["served_index_ids"] == sorted(ids)  # both indexes answered during the run
    # Beyond the limit: refused at once with 503, never queued into a timeout or a 5xx crash.
    assert set(overload["statuses"]) == {"200", "503"}, overload["statuses"]
    assert overload["requests"] == 800

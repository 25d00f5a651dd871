"""The LlamaIndex user's baseline, run as a fresh process by bench/run.py; prints JSON.

    python bench/baseline.py persisted <s3 bucket> <prefix> <ollama url> <query>
    python bench/baseline.py seed <documents dir> <ollama url> <query>

``persisted``: download a ``StorageContext.persist`` folder from S3, ``load_index_from_storage``,
retrieve once, then time 20 more retrievals (``SimpleVectorStore``). ``seed``: rebuild the index
at start-up from the documents, embedding them through the Ollama double.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

t_start = time.time()

import boto3  # noqa: E402
import numpy as np  # noqa: E402
from llama_index.core import (  # noqa: E402
    SimpleDirectoryReader,
    StorageContext,
    VectorStoreIndex,
    load_index_from_storage,
)
from llama_index.core.schema import QueryBundle  # noqa: E402
from llama_index.embeddings.ollama import OllamaEmbedding  # noqa: E402

t_imports = time.time()


def persisted(bucket: str, prefix: str, ollama: str, query: str) -> dict[str, object]:
    embed = OllamaEmbedding(model_name="nomic-embed-text", base_url=ollama)
    client = boto3.client("s3")
    with tempfile.TemporaryDirectory() as tmp:
        for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
            client.download_file(bucket, item["Key"], str(Path(tmp) / Path(item["Key"]).name))
        t_download = time.time()
        index = load_index_from_storage(
            StorageContext.from_defaults(persist_dir=tmp), embed_model=embed
        )
    t_load = time.time()
    retriever = index.as_retriever(similarity_top_k=5)
    retriever.retrieve(query)
    t_first = time.time()
    vector = embed.get_query_embedding(query)
    latencies = []
    for _ in range(20):
        started = time.perf_counter()
        retriever.retrieve(QueryBundle(query, embedding=vector))
        latencies.append(time.perf_counter() - started)
    return {
        "imports_s": t_imports - t_start,
        "download_s": t_download - t_imports,
        "load_s": t_load - t_download,
        "first_query_s": t_first - t_load,
        "started_at": t_start,
        "first_result_at": t_first,
        "query_p50_s": float(np.median(latencies)),
    }


def seed(documents: str, ollama: str, query: str) -> dict[str, object]:
    embed = OllamaEmbedding(model_name="nomic-embed-text", base_url=ollama, embed_batch_size=32)
    docs = SimpleDirectoryReader(documents, exclude_hidden=False).load_data()
    t_read = time.time()
    index = VectorStoreIndex.from_documents(docs, embed_model=embed)
    t_load = time.time()
    index.as_retriever(similarity_top_k=5).retrieve(query)
    t_first = time.time()
    return {
        "imports_s": t_imports - t_start,
        "read_s": t_read - t_imports,
        "embed_and_index_s": t_load - t_read,
        "first_query_s": t_first - t_load,
        "started_at": t_start,
        "first_result_at": t_first,
    }


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    print(json.dumps(persisted(*args) if kind == "persisted" else seed(*args)))

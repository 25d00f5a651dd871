"""What a published index looks like in Elasticsearch: its mapping, its ``_meta``, its documents.

Documents are what LlamaIndex's ``ElasticsearchStore.add`` writes for a node (``_id`` the node
id, ``content`` its text, ``embedding`` its vector, ``metadata`` from ``node_to_metadata_dict``:
the node's own metadata flat, plus ``_node_content``, ``_node_type``, ``doc_id``, ``document_id``
and ``ref_doc_id``), so that store reads them back as the artifact store returns them. The mapping
is explicit and strict: nothing is ever mapped from the first document that happens to arrive.
Each metadata key is mapped from its facts (``functions.es_filters.metadata_facts``: the type and
shape of every value it takes), which ``_meta.metadata`` keeps, so that filters are translated
from what the mapping was made of; a format 1 index has none (its columns kept scalars only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from llama_index.core.schema import MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.utils import node_to_metadata_dict

from functions.artifact import Manifest, NodeRecord
from functions.es_filters import field_mapping, metadata_facts

__all__ = ["HNSW", "document", "index_body"]

# Exact kNN, as the artifact's search: hnsw keeps float32 vectors; leaving index_options out gives
# int8_hnsw, which quantizes them and misses some of the exact top 10 unless queries rescore
# (docs/elasticsearch-test-server.md). m and ef_construction are Elasticsearch's defaults, spelled
# out so that a change of default never changes an index silently.
HNSW = {"type": "hnsw", "m": 16, "ef_construction": 100}
# What node_to_metadata_dict adds to a node's metadata; the node's JSON is read back, not searched.
_NODE_FIELDS = {
    "_node_content": {"type": "keyword", "index": False, "doc_values": False},
    "_node_type": {"type": "keyword"},
    "doc_id": {"type": "keyword"},
    "document_id": {"type": "keyword"},
    "ref_doc_id": {"type": "keyword"},
}


def index_body(
    manifest: Manifest, manifest_sha256: str, columns: dict[str, list[Any]], replicas: int
) -> dict[str, Any]:
    """The mappings and settings of the index of ``manifest``; ``columns``: every value each
    metadata key takes (the artifact's ``columns.json``)."""
    # The artifact's vectors are unit-length (the format says so): dot_product then ranks and
    # scores exactly as cosine, (1 + cos) / 2, without a norm per comparison, and Elasticsearch
    # refuses any vector that is not unit-length instead of serving it wrongly. Query vectors
    # must be unit-length too (the function's embedders normalise).
    similarity = "dot_product" if manifest.embedding.normalized else "cosine"
    facts = metadata_facts(columns)
    metadata = {key: field_mapping(fact) for key, fact in facts.items()}
    mappings = {
        "dynamic": "strict",  # a field nobody mapped is an error, never a guess
        # The vectors are searched from the HNSW graph and never read back (the artifact keeps
        # them): out of _source they take no stored-field space (80 % of the index's disk at
        # 768 dimensions, bench/backends.py) and no JSON parsing when hits are fetched.
        "_source": {"excludes": ["embedding"]},
        "_meta": {
            "index_id": manifest.index_id,
            "format_version": manifest.format_version,
            "created_at": manifest.created_at.isoformat(),
            "builder_version": manifest.builder_version,
            "embedding": manifest.embedding.model_dump(),
            "chunking": manifest.chunking.model_dump(),
            "counts": manifest.counts.model_dump(),
            "probe": manifest.probe.model_dump(),
            "manifest_sha256": manifest_sha256,
            "metadata": facts if manifest.format_version >= 2 else None,
        },
        "properties": {
            "content": {"type": "text"},
            "embedding": {
                "type": "dense_vector",
                "element_type": "float",
                "dims": manifest.embedding.dim,
                "similarity": similarity,
                "index": True,
                "index_options": HNSW,
            },
            "metadata": {"dynamic": "strict", "properties": {**metadata, **_NODE_FIELDS}},
        },
    }
    settings = {
        "number_of_shards": 1,  # one HNSW graph: every query sees all candidates at once
        "number_of_replicas": replicas,
        "refresh_interval": "-1",  # until the load is done: no segment per second meanwhile
    }
    return {"mappings": mappings, "settings": settings}


def document(index: str, record: NodeRecord, vector: npt.NDArray[np.float32]) -> dict[str, Any]:
    """The bulk action that creates one chunk's document: what ``ElasticsearchStore.add``
    writes for the node the artifact store returns for it."""
    node = TextNode(
        id_=record.id,
        text=record.text,
        metadata=record.metadata,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=record.doc_id)},
    )
    return {
        "_op_type": "create",  # a chunk id twice is an error, not an overwrite
        "_index": index,
        "_id": node.node_id,
        "content": node.get_content(metadata_mode=MetadataMode.NONE),
        "metadata": node_to_metadata_dict(node, remove_text=True),
        "embedding": vector.tolist(),
    }

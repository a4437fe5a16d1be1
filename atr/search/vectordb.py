"""Export an index to Qdrant and search it there: for collections that outgrow one machine.

`export_index(index, target)` writes two Qdrant collections: `<name>` with one point per recording (the pooled
embedding) and `<name>-chunks` with one point per chunk, each carrying `path`, its span fields and the model's
`fingerprint`. `target` is a folder (Qdrant's local mode, embedded, no server) or a URL (`http://host:6333`, a
server or a cluster: pass `shard_number` / `replication_factor` to spread the collection over its nodes).
`QdrantIndex(target, model, processor).search("a dog barks")` answers like `AudioIndex.search`, spans included.
`QdrantBackend` is the `qdrant` search backend: bare vectors in one collection (in memory where no target is given).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..embedding import embed_texts
from .backends import Array, SearchBackend, _ids, _vectors, register_backend
from .results import SearchResult
from .sources import model_fingerprint

if TYPE_CHECKING:
    import qdrant_client

    from ..loading import RetrievalModel, RetrievalProcessor

DEFAULT_COLLECTION = "atr"


def require_qdrant() -> ModuleType:
    """Import qdrant_client, or say how to get it."""
    try:
        import qdrant_client
    except ImportError as error:
        raise ImportError("qdrant-client is not installed: `pip install 'atr[vectordb]'` to export to Qdrant") from error
    return qdrant_client


def connect(target: str | os.PathLike | None) -> qdrant_client.QdrantClient:
    """A QdrantClient: local mode for a folder (in memory for None), the server for an http(s) URL."""
    qdrant_client = require_qdrant()
    if target is None:
        return qdrant_client.QdrantClient(location=":memory:")
    target = str(target)
    if target.startswith(("http://", "https://")):
        return qdrant_client.QdrantClient(url=target)
    return qdrant_client.QdrantClient(path=target)


def _spans(index, chunk):
    """A chunk's stretches [[start, end], ...] in seconds."""
    return [[round(float(a), 3), round(float(b), 3)] for a, b in index.chunk_spans[chunk] if a >= 0]


def export_index(index: AudioIndex, target: str | os.PathLike | None, collection: str = DEFAULT_COLLECTION, overwrite: bool = False,
                 batch_size: int = 256, shard_number: int | None = None, replication_factor: int | None = None) -> dict[str, int]:
    """Write an `AudioIndex` (pooled and chunk vectors, path/span/fingerprint payloads) to Qdrant; returns the counts."""
    models = require_qdrant().models
    client = connect(target)
    names = (collection, f"{collection}-chunks")
    existing = [name for name in names if client.collection_exists(name)]
    if existing and not overwrite:
        raise FileExistsError(f"Qdrant at {str(target)!r} already has collection {existing[0]!r}: pass another collection "
                              "name, or overwrite=True (atr-search export --overwrite) to replace it")
    for name in existing:
        client.delete_collection(name)
    # Unit vectors: the dot product is the cosine, and DOT keeps the stored values as they are (COSINE renormalises).
    params = models.VectorParams(size=index.embeddings.shape[1], distance=models.Distance.DOT)
    for name in names:
        client.create_collection(name, vectors_config=params, shard_number=shard_number, replication_factor=replication_factor)
    fields = {"fingerprint": index.manifest["fingerprint"], "model": index.manifest["model"]}
    offsets = index.chunk_offsets.tolist()

    def recordings():
        for row, name in enumerate(index.names):
            spans = [s for c in range(offsets[row], offsets[row + 1]) for s in _spans(index, c)]
            yield models.PointStruct(id=row, vector=index.embeddings[row].tolist(), payload={
                **fields, "path": index.items[row], "name": name, "row": row, "first_chunk": offsets[row], "chunks": offsets[row + 1] - offsets[row],
                "start": min(a for a, _ in spans), "end": max(b for _, b in spans)})

    def chunks():
        vectors = index.chunk_embeddings.float()
        for row, name in enumerate(index.names):
            for chunk in range(offsets[row], offsets[row + 1]):
                spans = _spans(index, chunk)
                yield models.PointStruct(id=chunk, vector=vectors[chunk].tolist(), payload={
                    **fields, "path": index.items[row], "name": name, "row": row, "chunk": chunk - offsets[row], "spans": spans,
                    "start": spans[0][0], "end": max(b for _, b in spans)})

    try:
        client.upload_points(names[0], recordings(), batch_size=batch_size, wait=True)
        client.upload_points(names[1], chunks(), batch_size=batch_size, wait=True)
        return {"recordings": client.count(names[0]).count, "chunks": client.count(names[1]).count}
    finally:
        client.close()  # local mode locks its folder until the client is closed


class QdrantIndex:
    """A collection written by `export_index`, searched by text or embedding with `AudioIndex`'s results and spans."""

    def __init__(self, target: str | os.PathLike | None, model: RetrievalModel | None = None, processor: RetrievalProcessor | None = None,
                 collection: str = DEFAULT_COLLECTION):
        self.client, self.collection, self.target = connect(target), collection, str(target)
        if not self.client.collection_exists(collection):
            raise FileNotFoundError(f"Qdrant at {self.target!r} has no collection {collection!r}: write it with "
                                    "AudioIndex.export / atr-search export first")
        first = self.client.scroll(collection, limit=1, with_payload=True)[0]
        self.info = {key: first[0].payload[key] for key in ("model", "fingerprint")} if first else {"model": "", "fingerprint": ""}
        if model is not None and processor is not None and first and model_fingerprint(model, processor) != self.info["fingerprint"]:
            raise ValueError(f"collection {collection!r} at {self.target!r} was exported from an index of another model "
                             f"(model {self.info['model']!r}, fingerprint {self.info['fingerprint'][:12]}): search it with that model")
        self.model, self.processor = model, processor

    def close(self) -> None:
        """Release the connection (in local mode, the folder's lock)."""
        self.client.close()

    def search(self, queries: str | list[str], k: int = 10, chunks: bool = False) -> list[SearchResult] | list[list[SearchResult]]:
        """Recordings (or chunks) best matching each text query: a list of `SearchResult` per query."""
        if self.model is None or self.processor is None:
            raise ValueError("this QdrantIndex has no model: pass model and processor to search by text")
        single = isinstance(queries, str)
        results = self.search_by_embedding(embed_texts(self.model, self.processor, [queries] if single else list(queries)), k, chunks)
        return results[0] if single else results

    def search_by_embedding(self, query_embeds: Array, k: int = 10, chunks: bool = False) -> list[list[SearchResult]]:
        """`SearchResult` lists for query embeddings (Q, D); a recording hit names its best chunk for that query."""
        query_embeds = torch.as_tensor(query_embeds, dtype=torch.float32)
        query_embeds = query_embeds.reshape(-1, query_embeds.shape[-1])
        name = f"{self.collection}-chunks" if chunks else self.collection
        out = []
        for query in query_embeds:
            points = self.client.query_points(name, query=query.numpy(), limit=k, with_payload=True).points
            out.append([self._chunk_result(p.payload, p.score, float(p.score)) for p in points] if chunks
                       else self._recording_results(points, query))
        return out

    def _recording_results(self, points, query):
        """Recording hits, each with its best chunk for `query`: the hits' chunk vectors fetched in one request."""
        ids = [c for p in points for c in range(p.payload["first_chunk"], p.payload["first_chunk"] + p.payload["chunks"])]
        found = {c.id: c for c in self.client.retrieve(f"{self.collection}-chunks", ids=ids, with_vectors=True)} if ids else {}
        results = []
        for point in points:
            first, count = point.payload["first_chunk"], point.payload["chunks"]
            own = [found[c] for c in range(first, first + count)]
            scores = torch.from_numpy(np.array([c.vector for c in own], np.float32)) @ query
            best = int(scores.argmax())
            results.append(self._chunk_result(own[best].payload, point.score, float(scores[best])))
        return results

    @staticmethod
    def _chunk_result(payload, score, chunk_score):
        return SearchResult(path=payload["path"], score=float(score), index=payload["row"], start=payload["start"],
                            end=payload["end"], name=payload["name"], chunk=payload["chunk"], chunk_score=chunk_score,
                            spans=payload["spans"])


@register_backend("qdrant")
class QdrantBackend(SearchBackend):
    """The `qdrant` backend: vectors as points of one collection (DOT), with their ids as point ids."""

    def __init__(self, client: qdrant_client.QdrantClient, collection: str):
        self.client, self.collection = client, collection

    @classmethod
    def build(cls, embeddings: Array, path: str | os.PathLike | None = None, ids: Array | None = None, collection: str = "atr-vectors",
              overwrite: bool = False, batch_size: int = 256) -> QdrantBackend:
        """Write `embeddings` (N, D) to `collection` at `path` (a folder, a URL, or None: in memory).

        An existing collection of that name is replaced only with `overwrite=True`.
        """
        vectors = _vectors(embeddings)
        client = connect(path)
        if client.collection_exists(collection):
            if not overwrite:
                client.close()
                raise FileExistsError(f"Qdrant at {str(path)!r} already has collection {collection!r}: pass another "
                                      "collection name, or overwrite=True to replace it")
            client.delete_collection(collection)
        models = require_qdrant().models
        client.create_collection(collection, vectors_config=models.VectorParams(size=vectors.shape[1], distance=models.Distance.DOT))
        backend = cls(client, collection)
        backend.add(vectors, _ids(ids, 0, len(vectors)), batch_size)
        return backend

    @classmethod
    def open(cls, path: str | os.PathLike, vectors: Array | None = None, collection: str = "atr-vectors", **options) -> QdrantBackend:
        """Open `collection` at `path` (a folder or a URL)."""
        client = connect(path)
        if not client.collection_exists(collection):
            client.close()
            raise FileNotFoundError(f"Qdrant at {str(path)!r} has no collection {collection!r}: make it with QdrantBackend.build")
        return cls(client, collection)

    def add(self, embeddings: Array, ids: Array | None = None, batch_size: int = 256) -> None:
        """Upload vectors (M, D) as points with these ids (default: after the largest, counting from the size)."""
        vectors = _vectors(embeddings)
        ids = _ids(ids, len(self), len(vectors))
        points = (require_qdrant().models.PointStruct(id=int(i), vector=v.tolist()) for i, v in zip(ids, vectors))
        self.client.upload_points(self.collection, points, batch_size=batch_size, wait=True)

    def remove(self, ids: Array) -> None:
        """Delete the points with these ids."""
        selector = require_qdrant().models.PointIdsList(points=[int(i) for i in np.asarray(ids).reshape(-1)])
        self.client.delete(self.collection, points_selector=selector, wait=True)

    def search(self, embeddings: Array, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """The top k points for each query by dot product: (scores, ids) (Q, min(k, N))."""
        queries = _vectors(embeddings)
        queries = queries.reshape(-1, queries.shape[-1])
        found = [self.client.query_points(self.collection, query=q.numpy(), limit=k).points for q in queries]
        return (torch.tensor([[p.score for p in hits] for hits in found], dtype=torch.float32).reshape(len(queries), -1),
                torch.tensor([[p.id for p in hits] for hits in found], dtype=torch.long).reshape(len(queries), -1))

    def __len__(self):
        return self.client.count(self.collection).count

    def close(self) -> None:
        """Release the connection (in local mode, the folder's lock)."""
        self.client.close()

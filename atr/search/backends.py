"""Search backends: one `SearchBackend` interface over unit embeddings, each kind found by name in `BACKENDS`.

A backend is built over vectors (N, D) with int64 ids (default 0..N-1) or opened where it was saved, takes `add` and
`remove`, and answers `search(embeddings, k) -> (scores, ids)`, (Q, k) best first. Here: `exact` (blocked matrix
product + top-k, equal to a stable full sort) and FAISS (`pip install 'atr[faiss]'`): `flat` (exact), `pq` (4-bit
product-quantisation fast scan, re-ranked exactly: the fast approximate one) and `hnsw`. `ondisk` (ondisk.py) and
`qdrant` (vectordb.py) register themselves there; `import atr.search` imports both.
"""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    import faiss

FAISS_KINDS = ("flat", "pq", "hnsw")
Array = torch.Tensor | np.ndarray
BACKENDS: dict[str, type["SearchBackend"]] = {}  # name -> SearchBackend subclass, filled by `register_backend`


def register_backend(name: str) -> Callable[[type["SearchBackend"]], type["SearchBackend"]]:
    """Class decorator: make a `SearchBackend` subclass the backend called `name` (`atr-search --backend NAME`)."""
    def register(cls):
        cls.name = name
        BACKENDS[name] = cls
        return cls
    return register


def get_backend(name: str) -> type["SearchBackend"]:
    """The `SearchBackend` class registered as `name`, or a ValueError listing the known ones."""
    if name not in BACKENDS:
        raise ValueError(f"backend is {name!r}, expected one of {tuple(BACKENDS)}")
    return BACKENDS[name]


def _vectors(embeddings):
    return torch.as_tensor(embeddings, dtype=torch.float32)


def _ids(ids, start, count):
    """`ids` as an int64 tensor, or start..start+count-1."""
    ids = torch.arange(start, start + count) if ids is None else torch.as_tensor(np.asarray(ids), dtype=torch.long).reshape(-1)
    if len(ids) != count:
        raise ValueError(f"{len(ids)} ids for {count} vectors: give one id per vector")
    return ids


def _rows_to_ids(ids, rows):
    """Each row number's id; a row past the end (the marker of a slot no candidate filled) stays as it is."""
    if ids is None:
        return rows
    return torch.where(rows < len(ids), ids[rows.clamp(max=len(ids) - 1)], rows)


class SearchBackend:
    """A vector index over unit embeddings: `build` or `open`, `add` / `remove` rows, `search(embeddings, k) -> (scores, ids)`."""

    name = ""
    # Where `AudioIndex.backend` keeps it next to its shards ("{revision}" filled in); None: built in memory on load.
    file_name = None

    @classmethod
    def build(cls, embeddings: Array, path: str | Path | None = None, ids: Array | None = None, **options) -> "SearchBackend":
        """Index `embeddings` (N, D) under `ids` (default 0..N-1), saved at `path` where the kind saves."""
        raise NotImplementedError

    @classmethod
    def open(cls, path: str | Path, vectors: Array | None = None, **options) -> "SearchBackend":
        """Open one saved at `path` (`vectors`: the embeddings it was built over, for kinds that re-rank with them)."""
        raise NotImplementedError(f"the {cls.name} backend is not saved: build it again")

    @classmethod
    def open_or_build(cls, embeddings: Array, path: str | Path | None = None, **options) -> "SearchBackend":
        """Open the one saved at `path` if it holds exactly these rows, else build it there."""
        try:
            backend = None if path is None else cls.open(path, vectors=embeddings)
        except FileNotFoundError:  # not saved there yet, or an interrupted build
            backend = None
        if backend is not None and len(backend) == len(embeddings):
            return backend
        return cls.build(embeddings, path, **options)

    def add(self, embeddings: Array, ids: Array | None = None) -> None:
        """Add vectors (M, D) under `ids` (default: after the largest id)."""
        raise NotImplementedError(f"the {self.name} backend cannot add rows in place: build it again over every vector")

    def remove(self, ids: Array) -> None:
        """Remove the rows with these ids."""
        raise NotImplementedError(f"the {self.name} backend cannot remove rows in place: build it again without them")

    def search(self, embeddings: Array, k: int = 10, **options) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, ids) (Q, k) of the best rows for each query (Q, D), best first."""
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError


# ---- exact search -------------------------------------------------------------------------------------------


def _sort_candidates(scores, indices, k):
    """Order candidates by score (descending), ties by corpus index (ascending), and keep the first k."""
    order = indices.argsort(dim=1)
    scores, indices = scores.gather(1, order), indices.gather(1, order)
    order = scores.argsort(dim=1, descending=True, stable=True)
    return scores.gather(1, order)[:, :k], indices.gather(1, order)[:, :k]


def _block_topk(sims, k):
    """Top-k of each row with the same members as a stable full sort (topk alone picks arbitrarily among tied scores)."""
    scores, indices = sims.topk(k, dim=1)
    tied = (sims >= scores[:, -1:]).sum(dim=1) > k
    if tied.any():
        rows = tied.nonzero().squeeze(1)
        sorted_scores, sorted_indices = sims[rows].sort(dim=1, descending=True, stable=True)
        scores[rows], indices[rows] = sorted_scores[:, :k], sorted_indices[:, :k]
    return scores, indices


def exact_search(queries: Array, corpus: Array, k: int = 10, block_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k inner-product search of queries (Q, D) in corpus (N, D) by blocked matrix product: (scores, indices) (Q, k).

    Equal to a stable full sort of `queries @ corpus.T`: ties go to the lower corpus index. Memory stays at
    Q x block_size scores; k is capped at N.
    """
    queries = torch.as_tensor(queries, dtype=torch.float32)
    corpus = torch.as_tensor(corpus)
    if queries.dim() == 1:
        queries = queries[None]
    if corpus.dim() != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"queries have shape {tuple(queries.shape)} and corpus {tuple(corpus.shape)}: expected (Q, D) and (N, D) "
            "with the same D (embed both with the same model)"
        )
    if k < 1:
        raise ValueError(f"k is {k}, expected at least 1")
    k = min(k, corpus.shape[0])
    best_scores = queries.new_empty((queries.shape[0], 0))
    best_indices = torch.empty((queries.shape[0], 0), dtype=torch.long)
    for start in range(0, corpus.shape[0], block_size):
        sims = queries @ corpus[start : start + block_size].to(queries.dtype).T
        scores, indices = _block_topk(sims, min(k, sims.shape[1]))
        best_scores, best_indices = _sort_candidates(
            torch.cat([best_scores, scores], 1), torch.cat([best_indices, indices + start], 1), k
        )
    return best_scores, best_indices


# ---- FAISS ----------------------------------------------------------------------------------------------------


def require_faiss() -> ModuleType:
    """Import faiss, or say how to get it."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "faiss is not installed: `pip install 'atr[faiss]'` (faiss-cpu) for the flat/pq/hnsw backends, "
            "or search with backend='exact'"
        ) from error
    return faiss


def build_faiss_index(embeddings: Array, kind: str = "pq", hnsw_m: int = 32, ef_construction: int = 80, train_size: int = 100_000,
                      seed: int = 0) -> "faiss.Index":
    """Build a FAISS inner-product index over unit embeddings (N, D): `flat` (exact), `pq` or `hnsw` (approximate).

    `pq` is a 4-bit product quantiser with one sub-quantiser per 4 dimensions in fast-scan layout (D/2 bytes a
    vector); its scores are coarse, so `AudioIndex` re-ranks its candidates exactly (see `k_factor`).
    """
    faiss = require_faiss()
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "pq":
        if dim % 4:
            raise ValueError(f"embeddings have dimension {dim}, the pq index needs a multiple of 4: use kind='hnsw'")
        index = faiss.IndexPQFastScan(dim, dim // 4, 4, faiss.METRIC_INNER_PRODUCT)
        rows = np.random.default_rng(seed).permutation(len(vectors))[:train_size]
        index.train(vectors[np.sort(rows)])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        raise ValueError(f"faiss index kind is {kind!r}, expected one of {FAISS_KINDS}")
    index.add(vectors)
    return index


def faiss_search(index: "faiss.Index", queries: Array, k: int = 10, corpus: Array | None = None, k_factor: int = 700,
                 ef_search: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Search a FAISS index; with `corpus`, re-rank the top k*k_factor candidates exactly (the `pq` recipe)."""
    queries = torch.as_tensor(queries, dtype=torch.float32).reshape(-1, index.d).contiguous()
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = max(ef_search, k)
    wanted = min(index.ntotal, k * k_factor if corpus is not None else k)
    scores, indices = (torch.from_numpy(a) for a in index.search(queries.numpy(), wanted))
    indices = indices.long()
    missing = indices < 0  # faiss pads with -1 when it finds fewer than asked
    if corpus is not None:
        corpus = torch.as_tensor(corpus)
        # index_select is several times faster than advanced indexing for this gather
        candidates = corpus.index_select(0, indices.clamp(min=0).reshape(-1)).view(*indices.shape, -1).float()
        scores = torch.bmm(candidates, queries[:, :, None]).squeeze(2)
    scores = scores.masked_fill(missing, float("-inf"))
    scores, indices = _sort_candidates(scores, indices.masked_fill(missing, torch.iinfo(torch.long).max), min(k, wanted))
    return scores, indices


# ---- the exact and FAISS backends ------------------------------------------------------------------------------


class _InMemory(SearchBackend):
    """A backend holding its vectors and ids in memory; `_rebuild` makes its index over them."""

    def __init__(self, vectors, ids, path=None, **options):
        self.vectors, self.ids, self.path, self.options = vectors, ids, path, options
        self._rebuild()

    def _rebuild(self):
        pass

    def _save(self):
        pass

    def add(self, embeddings, ids=None):
        """Add vectors (M, D) under `ids` (default: after the largest id); saved again where it was built."""
        vectors = _vectors(embeddings).reshape(-1, self.vectors.shape[1])
        self.ids = torch.cat([self.ids, _ids(ids, int(self.ids.max()) + 1 if len(self.ids) else 0, len(vectors))])
        self.vectors = torch.cat([self.vectors, vectors])
        self._rebuild()
        self._save()

    def remove(self, ids):
        """Remove the rows with these ids (the index is rebuilt over the rows kept); saved again where it was built."""
        kept = ~torch.isin(self.ids, torch.as_tensor(np.asarray(ids), dtype=torch.long).reshape(-1))
        self.vectors, self.ids = self.vectors[kept], self.ids[kept]
        self._rebuild()
        self._save()

    def __len__(self):
        return len(self.ids)


@register_backend("exact")
class ExactBackend(_InMemory):
    """`exact_search` over vectors in memory (saved as one safetensors file where a path is given)."""

    @classmethod
    def build(cls, embeddings: Array, path: str | Path | None = None, ids: Array | None = None, **options) -> "ExactBackend":
        """Hold `embeddings` (N, D) under `ids`; with `path`, also write them there."""
        vectors = _vectors(embeddings)
        backend = cls(vectors, _ids(ids, 0, len(vectors)), path)
        backend._save()
        return backend

    @classmethod
    def open(cls, path: str | Path, vectors: Array | None = None, **options) -> "ExactBackend":
        """Read vectors and ids saved by `build(..., path)`."""
        tensors = load_file(str(path))
        return cls(tensors["vectors"], tensors["ids"], path)

    def _save(self):
        if self.path is not None:
            save_file({"vectors": self.vectors.contiguous(), "ids": self.ids.contiguous()}, str(self.path))

    def search(self, embeddings: Array, k: int = 10, block_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k: ties go to the row added first."""
        scores, rows = exact_search(embeddings, self.vectors, k, block_size)
        return scores, _rows_to_ids(self.ids, rows)


class FaissBackend(_InMemory):
    """A FAISS index of kind `kind` over the vectors (kept in memory: `pq` re-ranks with them), saved as one file."""

    kind = ""
    file_name = "faiss-{name}-{revision}.index"

    @classmethod
    def build(cls, embeddings: Array, path: str | Path | None = None, ids: Array | None = None, **build_kwargs) -> "FaissBackend":
        """Build the FAISS index (see `build_faiss_index` for `build_kwargs`); with `path`, write it there."""
        vectors = _vectors(embeddings)
        backend = cls(vectors, _ids(ids, 0, len(vectors)), path, **build_kwargs)
        backend._save()
        return backend

    @classmethod
    def open(cls, path: str | Path, vectors: Array | None = None, ids: Array | None = None, **build_kwargs) -> "FaissBackend":
        """Read a saved FAISS index; `vectors` are the embeddings it was built over (needed: `pq` re-ranks with them)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no FAISS index at {str(path)!r}: build one with {cls.__name__}.build")
        if vectors is None:
            raise ValueError(f"opening FAISS index {str(path)!r} needs vectors=: the embeddings it was built over")
        backend = cls.__new__(cls)
        backend.vectors, backend.path, backend.options = _vectors(vectors), path, build_kwargs
        backend.ids = _ids(ids, 0, len(backend.vectors))
        backend.index = require_faiss().read_index(str(path))
        return backend

    def _rebuild(self):
        self.index = build_faiss_index(self.vectors.numpy(), self.kind, **self.options)

    def _save(self):
        if self.path is not None:
            path = Path(self.path)
            handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(handle)
            require_faiss().write_index(self.index, tmp)
            os.replace(tmp, path)

    def __len__(self):
        return min(self.index.ntotal, len(self.ids))

    def search(self, embeddings: Array, k: int = 10, k_factor: int = 700, ef_search: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """`faiss_search`: `pq` re-ranks its top k*k_factor exactly; `hnsw` searches with `ef_search`."""
        corpus = self.vectors if self.kind == "pq" else None
        scores, rows = faiss_search(self.index, embeddings, k, corpus=corpus, k_factor=k_factor, ef_search=ef_search)
        return scores, _rows_to_ids(self.ids, rows)


@register_backend("flat")
class FlatBackend(FaissBackend):
    """FAISS `IndexFlatIP`: exact, the same results as `exact`."""

    kind = "flat"


@register_backend("pq")
class PQBackend(FaissBackend):
    """FAISS 4-bit PQ fast scan whose top k*k_factor candidates are re-scored exactly: large collections in RAM."""

    kind = "pq"


@register_backend("hnsw")
class HNSWBackend(FaissBackend):
    """FAISS `IndexHNSWFlat` (M=32, efConstruction=80)."""

    kind = "hnsw"

"""Search backends over unit embeddings: exact (blocked matrix product + top-k, equal to a stable full sort) and FAISS.

FAISS (`pip install 'atr[faiss]'`): `flat` (exact), `pq` (4-bit product-quantisation fast scan, re-ranked exactly: the
fast approximate one) or `hnsw`.
"""

import numpy as np
import torch

FAISS_KINDS = ("flat", "pq", "hnsw")
BACKENDS = ("exact",) + FAISS_KINDS


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


def exact_search(queries, corpus, k=10, block_size=65536):
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


def require_faiss():
    """Import faiss, or say how to get it."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "faiss is not installed: `pip install 'atr[faiss]'` (faiss-cpu) for the flat/pq/hnsw backends, "
            "or search with backend='exact'"
        ) from error
    return faiss


def build_faiss_index(embeddings, kind="pq", hnsw_m=32, ef_construction=80, train_size=100_000, seed=0):
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


def faiss_search(index, queries, k=10, corpus=None, k_factor=700, ef_search=256):
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

"""Retrieval metrics for audio-text retrieval: R@K (hit rate and recall), mAP@10, MRR@10, ranks and zero-shot accuracy.

Scores are dot products of the given embeddings (cosine similarity for the model's L2-normalised embeddings),
computed in float32 one block of queries at a time, so memory is O(block_size x num_candidates), never N x N.
Ranks are exact: a candidate ranks ahead of a relevant item if its score is higher, or equal with a lower index
(deterministic tie-breaking). See docs/metrics.md for the definitions and how they map to LAION-CLAP and DCASE.
"""

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10)
MAP_K = 10
# Largest float32 similarity tile (queries x candidates) held at once; the boolean comparison masks add about half
# as much again, so peak extra memory stays near 100 MiB whatever the corpus size.
DEFAULT_MAX_TILE_BYTES = 64 * 2**20
# LAION-CLAP's wording, also the zero-shot-audio-classification pipeline's default hypothesis template.
DEFAULT_PROMPT_TEMPLATE = "This is a sound of {label}."
# The `evaluate` metric module folder: `evaluate.load(RETRIEVAL_METRIC_PATH, "audio_text")`.
RETRIEVAL_METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "retrieval_metric")
PROVENANCE_PACKAGES = ("atr", "torch", "transformers", "datasets", "evaluate", "huggingface_hub", "numpy", "scipy")


def _as_embeddings(name: str, embeds) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(embeds) if not torch.is_tensor(embeds) else embeds)
    tensor = tensor.detach().to("cpu", torch.float32)
    if tensor.ndim != 2:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected (num_items, dim): pass one row per item")
    # A NaN or inf makes its row sum non-finite; the row sums avoid a full-size temporary for the common clean case.
    if not torch.isfinite(tensor.sum(1)).all() and not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or inf values: check the model outputs before computing metrics")
    return tensor


def auto_block_size(num_candidates: int, max_tile_bytes: int = DEFAULT_MAX_TILE_BYTES) -> int:
    """Number of queries per block so that one float32 similarity tile fits in `max_tile_bytes`."""
    return max(1, max_tile_bytes // (4 * max(1, num_candidates)))


def similarity_blocks(query_embeds: torch.Tensor | np.ndarray, candidate_embeds: torch.Tensor | np.ndarray,
                      block_size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield `(start, scores)` with `scores = query_embeds[start:start + block_size] @ candidate_embeds.T` in float32.

    `scores` is a view of one buffer reused for every block (no page faults per block): copy it to keep it.
    """
    queries = _as_embeddings("query_embeds", query_embeds)
    candidates = _as_embeddings("candidate_embeds", candidate_embeds)
    if queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"query_embeds has dim {queries.shape[1]} but candidate_embeds has dim {candidates.shape[1]}: "
            "embed both with the same model"
        )
    block_size = block_size or auto_block_size(len(candidates))
    if block_size < 1:
        raise ValueError(f"block_size is {block_size}, expected a positive number of queries per block")
    buffer = torch.empty(min(block_size, len(queries)), len(candidates))
    for start in range(0, len(queries), block_size):
        block = queries[start : start + block_size]
        # candidates.T is a strided view that BLAS reads transposed: no copy of the corpus.
        yield start, torch.matmul(block, candidates.T, out=buffer[: len(block)])


def _padded_relevant(relevant: Sequence[Sequence[int]], num_queries: int, num_candidates: int) -> torch.Tensor:
    """Relevant candidate indices as a (num_queries, max_relevant) tensor padded with -1 (duplicates dropped)."""
    if len(relevant) != num_queries:
        raise ValueError(f"relevant has {len(relevant)} lists but there are {num_queries} queries: pass one per query")
    rows = []
    for i, items in enumerate(relevant):
        items = sorted({int(j) for j in np.atleast_1d(np.asarray(items, dtype=np.int64))})
        if not items:
            raise ValueError(f"query at index {i} has no relevant candidate: drop it or give it at least one")
        if items[0] < 0 or items[-1] >= num_candidates:
            raise ValueError(
                f"query at index {i} lists relevant candidate {items[0] if items[0] < 0 else items[-1]}, "
                f"outside 0..{num_candidates - 1}: indices refer to rows of candidate_embeds"
            )
        rows.append(items)
    padded = torch.full((num_queries, max(map(len, rows), default=1)), -1, dtype=torch.long)
    for i, items in enumerate(rows):
        padded[i, : len(items)] = torch.tensor(items, dtype=torch.long)
    return padded


def relevant_ranks(
    query_embeds: torch.Tensor | np.ndarray, candidate_embeds: torch.Tensor | np.ndarray, relevant: Sequence[Sequence[int]],
    block_size: int | None = None,
) -> np.ndarray:
    """0-based rank of every relevant candidate of every query, sorted per query, as (Q, max_relevant) padded with -1."""
    queries = _as_embeddings("query_embeds", query_embeds)
    candidates = _as_embeddings("candidate_embeds", candidate_embeds)
    rel = _padded_relevant(relevant, len(queries), len(candidates))
    if len(candidates) > 2**24:
        raise ValueError(f"candidate_embeds has {len(candidates)} rows, more than the 2**24 that ranks count exactly")
    ranks = torch.full(rel.shape, -1, dtype=torch.long)
    positions = torch.arange(len(candidates))
    mask = None
    for start, scores in similarity_blocks(queries, candidates, block_size):
        block_rel = rel[start : start + len(scores)]
        rel_scores = scores.gather(1, block_rel.clamp(min=0))
        if mask is None:
            # float32, not bool: summing a bool (or int) mask materialises an int64 copy of the whole tile, a float
            # sum does not, and it counts exactly up to 2**24 candidates.
            mask = torch.empty(scores.shape)
        block_mask = mask[: len(scores)]
        for r in range(block_rel.shape[1]):
            target = rel_scores[:, r : r + 1]
            rank = torch.gt(scores, target, out=block_mask).sum(1).long()
            # Ties are rare with real embeddings, so the index-based tie-break only runs on rows that have one.
            tied_rows = (torch.eq(scores, target, out=block_mask).sum(1) > 1).nonzero().flatten()
            if len(tied_rows):
                ahead = (scores[tied_rows] == target[tied_rows]) & (positions < block_rel[tied_rows, r : r + 1])
                rank[tied_rows] += ahead.sum(1)
            ranks[start : start + len(scores), r] = torch.where(block_rel[:, r] >= 0, rank, -1)
    ranks = ranks.numpy()
    # Sort real ranks ascending and keep the -1 padding at the end of each row.
    return np.where(ranks < 0, -1, np.sort(np.where(ranks < 0, np.iinfo(np.int64).max, ranks), axis=1))


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS, map_k: int = MAP_K) -> dict:
    """Aggregate metrics and per-query scores from `relevant_ranks` output (see docs/metrics.md for definitions)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    valid = ranks >= 0
    num_relevant = valid.sum(1)
    first = ranks[:, 0]
    per_query = {"rank": first + 1}
    for k in ks:
        in_top = valid & (ranks < k)
        per_query[f"R{k}"] = in_top[:, 0].astype(np.float64)
        per_query[f"recall{k}"] = in_top.sum(1) / num_relevant
    # AP@K: precision at each relevant item inside the top K (j-th relevant at 0-based rank r has precision j/(r+1)),
    # summed and divided by min(#relevant, K) so that a perfect ranking scores 1.
    position = np.arange(1, ranks.shape[1] + 1)
    in_map = valid & (ranks < map_k)
    precision = np.where(in_map, position / (np.maximum(ranks, 0) + 1), 0.0)
    per_query[f"AP{map_k}"] = precision.sum(1) / np.minimum(num_relevant, map_k)
    per_query[f"RR{map_k}"] = np.where(first < map_k, 1.0 / (first + 1), 0.0)
    results = {f"R{k}": float(per_query[f"R{k}"].mean()) for k in ks}
    results.update({f"recall{k}": float(per_query[f"recall{k}"].mean()) for k in ks})
    results[f"mAP{map_k}"] = float(per_query[f"AP{map_k}"].mean())
    results[f"MRR{map_k}"] = float(per_query[f"RR{map_k}"].mean())
    results["mean_rank"] = float(per_query["rank"].mean())
    # LAION-CLAP's convention: floor of the median 0-based rank, plus one.
    results["median_rank"] = float(np.floor(np.median(first)) + 1)
    results["per_query"] = per_query
    return results


def retrieval_metrics(
    query_embeds: torch.Tensor | np.ndarray,
    candidate_embeds: torch.Tensor | np.ndarray,
    relevant: Sequence[Sequence[int]],
    ks: Sequence[int] = DEFAULT_KS,
    block_size: int | None = None,
    map_k: int = MAP_K,
) -> dict:
    """R@K (hit rate), recall@K, mAP@K, MRR@K, mean/median rank of queries against candidates, plus `per_query` arrays."""
    ranks = relevant_ranks(query_embeds, candidate_embeds, relevant, block_size)
    return metrics_from_ranks(ranks, ks, map_k)


def _prefixed(prefix: str, results: dict, drop: Sequence[str] = ()) -> dict:
    return {f"{prefix}_{key}": value for key, value in results.items() if key != "per_query" and key not in drop}


def audio_text_retrieval_metrics(
    audio_embeds: torch.Tensor | np.ndarray,
    text_embeds: torch.Tensor | np.ndarray,
    caption_to_audio: Sequence[int],
    ks: Sequence[int] = DEFAULT_KS,
    block_size: int | None = None,
    map_k: int = MAP_K,
) -> dict:
    """Both directions: `t2a_*` (each caption finds its clip) and `a2t_*` (each clip finds its captions)."""
    caption_to_audio = np.asarray(caption_to_audio, dtype=np.int64)
    num_audio = len(audio_embeds)
    if caption_to_audio.ndim != 1 or len(caption_to_audio) != len(text_embeds):
        raise ValueError(
            f"caption_to_audio has shape {caption_to_audio.shape} but there are {len(text_embeds)} captions: "
            "pass one audio index per caption"
        )
    captions_of = [[] for _ in range(num_audio)]
    for caption, audio in enumerate(caption_to_audio):
        if not 0 <= audio < num_audio:
            raise ValueError(f"caption at index {caption} maps to audio {audio}, outside 0..{num_audio - 1}")
        captions_of[audio].append(caption)
    missing = [audio for audio, captions in enumerate(captions_of) if not captions]
    if missing:
        raise ValueError(f"audio at index {missing[0]} has no caption ({len(missing)} such clips): drop them first")
    t2a = retrieval_metrics(text_embeds, audio_embeds, caption_to_audio[:, None], ks, block_size, map_k)
    a2t = retrieval_metrics(audio_embeds, text_embeds, captions_of, ks, block_size, map_k)
    # With one relevant clip per caption, t2a recall@K equals R@K: report it once.
    results = _prefixed("t2a", t2a, drop=[f"recall{k}" for k in ks])
    results.update(_prefixed("a2t", a2t))
    results["per_query"] = {"t2a": t2a["per_query"], "a2t": a2t["per_query"]}
    return results


def class_prompts(class_names: Sequence[str], template: str = DEFAULT_PROMPT_TEMPLATE) -> list[str]:
    """Zero-shot text prompts, one per class: `template.format(label=name)`."""
    if "{label}" not in template:
        raise ValueError(f"template {template!r} has no {{label}} placeholder: e.g. 'this is a sound of {{label}}'")
    return [template.format(label=name) for name in class_names]


def zero_shot_classification_metrics(
    audio_embeds: torch.Tensor | np.ndarray,
    class_text_embeds: torch.Tensor | np.ndarray,
    labels: Sequence[int | Sequence[int]],
    ks: Sequence[int] = DEFAULT_KS,
    block_size: int | None = None,
    map_k: int = MAP_K,
) -> dict:
    """Zero-shot classification as audio->prompt retrieval: accuracy (= R@1), R@K, mAP@10; multi-label aware."""
    label_lists = [np.atleast_1d(np.asarray(clip_labels, dtype=np.int64)).tolist() for clip_labels in labels]
    ks = tuple(sorted({1, *ks}))  # accuracy is R@1 whatever cut-offs were asked for
    results = retrieval_metrics(audio_embeds, class_text_embeds, label_lists, ks, block_size, map_k)
    results = {"accuracy": results["R1"], **results}
    if any(len(set(clip_labels)) > 1 for clip_labels in label_lists):
        # LAION-CLAP scores multi-label sets (FSD50K) on argmax(one-hot), i.e. the lowest-index label only.
        first = retrieval_metrics(audio_embeds, class_text_embeds, [[min(c)] for c in label_lists], ks, block_size, map_k)
        results.update({f"first_label_{key}": first[key] for key in [*(f"R{k}" for k in ks), f"mAP{map_k}"]})
        results["per_query"]["first_label"] = first["per_query"]
    return results


def import_evaluate() -> ModuleType:
    """Import the Hugging Face `evaluate` library, even when a script named evaluate.py (this repo's CLI) shadows it."""
    module = sys.modules.get("evaluate")
    if module is not None and hasattr(module, "__path__"):
        return module
    # A script on sys.path (e.g. the repo root when running `python evaluate.py`) would be imported instead.
    saved_path = sys.path[:]
    try:
        sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p or os.getcwd(), "evaluate.py"))]
        if module is not None:
            del sys.modules["evaluate"]
        return importlib.import_module("evaluate")
    finally:
        sys.path[:] = saved_path


def library_versions(packages: Sequence[str] = PROVENANCE_PACKAGES) -> dict:
    """Installed versions of the packages behind a result (None for those not installed)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _package_git_commit() -> str | None:
    """Commit of the atr checkout this module was imported from (None for an installed wheel)."""
    try:
        result = subprocess.run(
            ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def to_jsonable(value: object) -> object:
    """Numpy/torch arrays and scalars (e.g. `per_query` scores) converted to plain Python for json."""
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


def save_results(path: str | os.PathLike, **data) -> Path:
    """`evaluate.save` of results (time, git commit, Python and evaluate versions) plus `_library_versions`."""
    evaluate = import_evaluate()
    data = to_jsonable(data)
    data["_library_versions"] = library_versions()
    # evaluate.save records the commit of the working directory; this is the commit of the code that computed them.
    data["_atr_git_commit_hash"] = _package_git_commit()
    return Path(evaluate.save(path, **data))


def provenance() -> dict:
    """The provenance fields `evaluate.save` writes (time, git commit, versions) plus `_library_versions`."""
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(save_results(os.path.join(tmp, "provenance.json")).read_text())


__all__ = [
    "DEFAULT_KS",
    "DEFAULT_PROMPT_TEMPLATE",
    "RETRIEVAL_METRIC_PATH",
    "zero_shot_classification_metrics",
    "audio_text_retrieval_metrics",
    "auto_block_size",
    "class_prompts",
    "import_evaluate",
    "library_versions",
    "metrics_from_ranks",
    "provenance",
    "relevant_ranks",
    "retrieval_metrics",
    "save_results",
    "similarity_blocks",
    "to_jsonable",
]

"""Search at scale: embed an audio collection once (resumable, on disk) and rank it against text queries.

`AudioIndex.build(model, processor, audio, out_dir)` embeds a folder, a list of files or a `datasets.Dataset` into
shards under `out_dir`; `AudioIndex.load(out_dir, model, processor).search("a dog barks", k=10)` ranks it. Search is
exact (blocked matrix product + top-k) or, with `pip install 'atr[faiss]'`, a FAISS index: `flat` (exact),
`pq` (4-bit product-quantisation fast scan, re-ranked exactly: the fast approximate one) or `hnsw`.
The console script `atr-search` (also `python -m atr.search`) does both for a folder.
"""

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from .data import decode_audio
from .embedding import embed_clips, embed_texts, module_fingerprint

# Extensions libsndfile decodes; anything else in a folder is skipped.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".opus")
FAISS_KINDS = ("flat", "pq", "hnsw")
BACKENDS = ("exact",) + FAISS_KINDS
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


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


def _require_faiss():
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
    faiss = _require_faiss()
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


# ---- the on-disk index --------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """One hit: the recording, its similarity, its row in the index, and the best chunk's time span in seconds."""

    path: str
    score: float
    index: int
    start: float | None = None
    end: float | None = None


def model_fingerprint(model, processor):
    """Hash of the model's weights and the feature extractor's settings: embeddings are comparable iff it matches."""
    settings = {
        key: value
        for key, value in processor.feature_extractor.to_dict().items()
        if key not in ("auto_map", "processor_class") and not key.startswith("_")
    }
    parts = [module_fingerprint(model), json.dumps(settings, sort_keys=True, default=str)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _audio_items(audio, audio_column=None):
    """Ids (paths) of a folder, a list of paths or a `datasets.Dataset`, and a function giving item i for `decode_audio`."""
    if isinstance(audio, (str, os.PathLike)) and Path(audio).is_dir():
        paths = sorted(str(p.resolve()) for p in Path(audio).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        if not paths:
            raise ValueError(f"folder {str(audio)!r} has no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        return paths, paths.__getitem__
    if isinstance(audio, (list, tuple)):
        paths = [str(p) for p in audio]
        return paths, paths.__getitem__
    if isinstance(audio, datasets.Dataset):
        columns = [name for name, feature in audio.features.items() if isinstance(feature, datasets.Audio)]
        column = audio_column or (columns[0] if len(columns) == 1 else None)
        if column not in columns:
            raise ValueError(f"dataset has Audio columns {columns}, not {audio_column!r}: pass audio_column= to pick one")
        # Undecoded rows ({"path", "bytes"}) read one at a time: soundfile decodes them, no FFmpeg/torchcodec, and
        # the bytes of the whole dataset never sit in memory at once.
        rows = audio.select_columns([column]).cast_column(column, datasets.Audio(decode=False))
        ids = [path or str(i) for i, path in enumerate(rows.flatten()[f"{column}.path"])]
        return ids, lambda i: rows[i][column]
    raise TypeError(f"audio is a {type(audio).__name__}: pass a folder, a list of file paths or a datasets.Dataset")


def _best_chunk_spans(embedded):
    """(N, 2) start/end seconds of each recording's highest-weighted chunk; NaN when the model or processor gives none."""
    if embedded.chunk_weights is None or embedded.chunk_boundaries is None:
        return np.full((len(embedded.embeds), 2), np.nan, np.float32)
    spans = [bounds[int(weights.argmax())] for weights, bounds in zip(embedded.chunk_weights, embedded.chunk_boundaries)]
    return np.asarray(spans, dtype=np.float32).reshape(-1, 2)


class AudioIndex:
    """Audio embeddings of a collection, stored in shards under a folder, searchable by text."""

    def __init__(self, out_dir, manifest, embeddings, spans, model=None, processor=None):
        self.out_dir = Path(out_dir)
        self.manifest = manifest
        self.items = manifest["items"]
        self.embeddings = embeddings
        self.spans = spans
        self.model = model
        self.processor = processor
        self._faiss = {}

    # -- building --

    @classmethod
    def build(cls, model, processor, audio, out_dir, batch_size=8, shard_size=1024, audio_column=None, overwrite=False, progress=True):
        """Embed every recording of `audio` (folder, path list or Dataset) into shards under out_dir; resumes a partial build.

        A finished shard is never recomputed; an index in out_dir made with another model, other feature settings or
        another list of recordings is refused unless `overwrite=True`.
        """
        out_dir = Path(out_dir)
        items, open_item = _audio_items(audio, audio_column)
        fingerprint = model_fingerprint(model, processor)
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": str(getattr(model, "name_or_path", "") or ""),
            "fingerprint": fingerprint,
            "sampling_rate": processor.feature_extractor.sampling_rate,
            "dim": model.config.projection_dim,
            "shard_size": shard_size,
            "items": items,
        }
        previous = cls._read_manifest(out_dir)
        if previous is not None and overwrite:
            for shard in out_dir.glob("shard-*.safetensors"):
                shard.unlink()
            for old in out_dir.glob("faiss-*.index"):
                old.unlink()
        elif previous is not None:
            cls._check_same(previous, manifest, out_dir)
            manifest["shard_size"] = shard_size = previous["shard_size"]
        out_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(out_dir / MANIFEST, json.dumps(manifest).encode())

        rate = processor.feature_extractor.sampling_rate
        shard_rows = [range(s, min(len(items), s + shard_size)) for s in range(0, len(items), shard_size)]
        todo = [s for s in range(len(shard_rows)) if not cls._shard_path(out_dir, s).exists()]
        done_items = len(items) - sum(len(shard_rows[s]) for s in todo)
        with tqdm(total=len(items), initial=done_items, desc="embedding audio", unit="file", disable=not progress) as bar:
            for shard in todo:

                def waves(rows=shard_rows[shard]):
                    for i in rows:
                        yield decode_audio(open_item(i), rate)
                        bar.update(1)

                embedded = embed_clips(model, processor, waves(), batch_size=batch_size)
                tensors = {"embeddings": embedded.embeds.numpy(), "spans": _best_chunk_spans(embedded)}
                _atomic_write(cls._shard_path(out_dir, shard), None, tensors=tensors)
        return cls.load(out_dir, model, processor)

    @staticmethod
    def _shard_path(out_dir, shard):
        return Path(out_dir) / f"shard-{shard:05d}.safetensors"

    @staticmethod
    def _read_manifest(out_dir):
        path = Path(out_dir) / MANIFEST
        return json.loads(path.read_text()) if path.exists() else None

    @staticmethod
    def _check_same(previous, manifest, out_dir):
        """Refuse to mix embeddings of different models or collections in one index folder."""
        if previous["fingerprint"] != manifest["fingerprint"]:
            raise ValueError(
                f"index at {str(out_dir)!r} was built with another model or feature settings "
                f"(model {previous['model']!r}, fingerprint {previous['fingerprint'][:12]}; this one is "
                f"{manifest['model']!r}, {manifest['fingerprint'][:12]}): use another out_dir, or overwrite=True to rebuild it"
            )
        if previous["items"] != manifest["items"]:
            raise ValueError(
                f"index at {str(out_dir)!r} lists {len(previous['items'])} other recordings than the "
                f"{len(manifest['items'])} given: use another out_dir, or overwrite=True to rebuild it"
            )

    # -- loading --

    @classmethod
    def load(cls, out_dir, model=None, processor=None):
        """Open a finished index; with model and processor, check they are the ones it was built with."""
        out_dir = Path(out_dir)
        manifest = cls._read_manifest(out_dir)
        if manifest is None:
            raise FileNotFoundError(f"no index at {str(out_dir)!r} ({MANIFEST} missing): build one with AudioIndex.build")
        if model is not None and processor is not None:
            fingerprint = model_fingerprint(model, processor)
            cls._check_same(manifest, {**manifest, "fingerprint": fingerprint, "model": str(getattr(model, "name_or_path", ""))}, out_dir)
        num_shards = -(-len(manifest["items"]) // manifest["shard_size"])
        missing = [s for s in range(num_shards) if not cls._shard_path(out_dir, s).exists()]
        if missing:
            raise ValueError(
                f"index at {str(out_dir)!r} is incomplete ({len(missing)} of {num_shards} shards missing): "
                "run AudioIndex.build (or atr-search) again with the same arguments to resume"
            )
        shards = [load_file(cls._shard_path(out_dir, s)) for s in range(num_shards)]
        embeddings = torch.from_numpy(np.concatenate([s["embeddings"] for s in shards]))
        spans = np.concatenate([s["spans"] for s in shards])
        return cls(out_dir, manifest, embeddings, spans, model, processor)

    def __len__(self):
        return len(self.items)

    # -- searching --

    def faiss_index(self, kind="pq", **build_kwargs):
        """The FAISS index of this kind, built (and saved next to the shards) on first use."""
        if kind not in self._faiss:
            faiss = _require_faiss()
            path = self.out_dir / f"faiss-{kind}.index"
            index = faiss.read_index(str(path)) if path.exists() else None
            if index is None or index.ntotal != len(self):
                index = build_faiss_index(self.embeddings.numpy(), kind, **build_kwargs)
                tmp = path.with_suffix(".tmp")
                faiss.write_index(index, str(tmp))
                os.replace(tmp, path)
            self._faiss[kind] = index
        return self._faiss[kind]

    def search_embeddings(self, query_embeds, k=10, backend="exact", k_factor=700, ef_search=256):
        """Rank the collection for query embeddings (Q, D): (scores, indices) (Q, k), best first."""
        if backend == "exact":
            return exact_search(query_embeds, self.embeddings, k)
        if backend not in FAISS_KINDS:
            raise ValueError(f"backend is {backend!r}, expected one of {BACKENDS}")
        corpus = self.embeddings if backend == "pq" else None
        return faiss_search(self.faiss_index(backend), query_embeds, k, corpus=corpus, k_factor=k_factor, ef_search=ef_search)

    def embed_text(self, queries):
        """L2-normalised text embeddings (Q, D) of the queries, from the model the index was built with."""
        if self.model is None or self.processor is None:
            raise ValueError("this AudioIndex has no model: load it with AudioIndex.load(out_dir, model, processor) to search by text")
        return embed_texts(self.model, self.processor, list(queries))

    def search(self, queries, k=10, backend="exact", **search_kwargs):
        """Recordings best matching each text query: a list of `SearchResult` (for one string) or one list per query."""
        single = isinstance(queries, str)
        scores, indices = self.search_embeddings(self.embed_text([queries] if single else queries), k, backend, **search_kwargs)
        results = [
            [self._result(int(i), float(s)) for s, i in zip(row_scores, row_indices)]
            for row_scores, row_indices in zip(scores.tolist(), indices.tolist())
        ]
        return results[0] if single else results

    def _result(self, index, score):
        start, end = (None if np.isnan(v) else float(v) for v in self.spans[index])
        return SearchResult(path=self.items[index], score=score, index=index, start=start, end=end)


def _atomic_write(path, data, tensors=None):
    """Write a file under a temporary name first, so an interrupted build never leaves a half shard behind."""
    tmp = Path(f"{path}.tmp")
    if tensors is not None:
        save_file(tensors, str(tmp))
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


# ---- command line -------------------------------------------------------------------------------------------


def _parser():
    parser = argparse.ArgumentParser(
        prog="atr-search", description="Find the recordings in a folder that match a sentence (embeds the folder once, then reuses it)."
    )
    parser.add_argument("queries", nargs="+", help="one or more text queries, e.g. 'a dog barks in the rain'")
    parser.add_argument("--audio-dir", required=True, help="folder of audio files (searched recursively)")
    parser.add_argument("--model", help="model folder, Hub id or ONNX export folder; default: the one the index was built with")
    parser.add_argument("--index-dir", help="where embeddings are stored; default: <audio-dir>/.atr-index")
    parser.add_argument("-k", "--top-k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--backend", choices=BACKENDS, default="exact", help="exact (default) or a FAISS index: flat, pq, hnsw")
    parser.add_argument("--batch-size", type=int, default=8, help="recordings embedded at once")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--overwrite", action="store_true", help="rebuild the index even if it was made with another model")
    parser.add_argument("--json", action="store_true", help="print results as JSON lines")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None):
    """Console entry point `atr-search`: build or resume the folder's index, then print the best matches per query."""
    from transformers import AutoModel, AutoProcessor

    args = _parser().parse_args(argv)
    index_dir = Path(args.index_dir) if args.index_dir else Path(args.audio_dir) / ".atr-index"
    model_id = args.model
    if model_id is None:
        previous = AudioIndex._read_manifest(index_dir)
        if previous is None or not previous["model"]:
            _parser().error(f"--model is required: no index with a recorded model at {str(index_dir)!r}")
        model_id = previous["model"]
    from .onnx import AtrOnnxModel, is_onnx_export

    if is_onnx_export(model_id):  # a `python -m atr.export onnx` folder: ONNX Runtime on the CPU
        model = AtrOnnxModel.from_pretrained(model_id)
    else:
        model = AutoModel.from_pretrained(model_id, trust_remote_code=True).to(args.device)
    processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
    index = AudioIndex.build(
        model, processor, args.audio_dir, index_dir, batch_size=args.batch_size, overwrite=args.overwrite, progress=not args.quiet
    )
    for query, hits in zip(args.queries, index.search(args.queries, k=args.top_k, backend=args.backend)):
        for rank, hit in enumerate(hits, 1):
            if args.json:
                print(json.dumps({"query": query, "rank": rank, **hit.__dict__}))
            else:
                span = f"  [{hit.start:.1f}-{hit.end:.1f} s]" if hit.start is not None else ""
                print(f"{query}\t{rank}\t{hit.score:.4f}\t{hit.path}{span}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

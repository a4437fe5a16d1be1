"""The on-disk index: embed a collection once, update it incrementally, search it by text or by example.

`AudioIndex.build(model, processor, audio, out_dir)` (the same as `update`) embeds a folder, a list of files or a
`datasets.Dataset`: each recording's pooled embedding and each chunk's own (L2-normalised, float16 on disk) with the
source time spans it packs. A re-run embeds only what was added or changed (keyed by path, size and mtime_ns).
`AudioIndex.load(out_dir, model, processor).search("a dog barks", k=10)` ranks it, each hit with its best chunk for the query.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from filelock import FileLock
from safetensors.numpy import load_file
from tqdm.auto import tqdm

from ..data import decode_audio
from ..embedding import embed_clips, embed_texts
from .backends import SearchBackend, exact_search, get_backend
from .manifest import FORMAT_VERSION, LOCK, MANIFEST, BadIndexError, _atomic_write, _read_manifest, _write_manifest, new_row_id
from .results import SearchResult
from .sources import AudioSource, collect_items, item_key, model_fingerprint

if TYPE_CHECKING:
    from ..loading import RetrievalModel, RetrievalProcessor
    from .backends import Array

# A clip to search by: a path, a {"path", "bytes"} or {"array", "sampling_rate"} dict, or a waveform at the index's rate.
Clip = str | os.PathLike | dict | np.ndarray

logger = logging.getLogger(__name__)
# What each shard must hold: name -> (dtype, rows counted by "rows" or "chunks" of its manifest entry)
SHARD_LAYOUT = {"embeddings": ("float32", "rows"), "chunk_counts": ("int64", "rows"),
                "chunk_embeddings": ("float16", "chunks"), "chunk_spans": ("float32", "chunks"), "row_ids": ("int64", "rows")}


def verify_shard(out_dir: str | os.PathLike, name: str, entry: dict) -> dict[str, np.ndarray]:
    """Load one shard and check it against its manifest entry (tensors, dtypes, row counts); ValueError naming it if not."""
    path = Path(out_dir) / name
    try:
        tensors = load_file(str(path))
    except Exception as error:  # missing, truncated or not a safetensors file
        raise ValueError(f"index shard {str(path)!r} is damaged ({error}): run the build again to re-embed its {entry['rows']} recordings") from error
    for key, (dtype, count) in SHARD_LAYOUT.items():
        array = tensors.get(key)
        if array is None or str(array.dtype) != dtype or len(array) != entry[count]:
            found = "missing" if array is None else f"{array.dtype} with {len(array)} rows"
            raise ValueError(
                f"index shard {str(path)!r} is damaged: {key!r} is {found}, the manifest expects {dtype} with "
                f"{entry[count]} rows: run the build again to re-embed its {entry['rows']} recordings"
            )
    if int(tensors["chunk_counts"].sum()) != entry["chunks"]:
        raise ValueError(f"index shard {str(path)!r} is damaged: its chunk counts do not add up to {entry['chunks']}: run the build again")
    return tensors


def _shard_tensors(embedded, row_ids):
    """One shard's arrays from `embed_clips` output: pooled and unit chunk embeddings, chunk counts, spans and row ids."""
    chunks = [torch.nn.functional.normalize(c, dim=-1) for c in embedded.chunk_embeds]
    width = max(s.shape[1] for s in embedded.chunk_spans)
    spans = np.full((sum(len(c) for c in chunks), width, 2), -1.0, np.float32)
    row = 0
    for clip_spans in embedded.chunk_spans:
        spans[row : row + len(clip_spans), : clip_spans.shape[1]] = clip_spans
        row += len(clip_spans)
    return {"embeddings": embedded.embeds.numpy().astype(np.float32), "chunk_counts": np.array([len(c) for c in chunks], np.int64),
            "chunk_embeddings": torch.cat(chunks).numpy().astype(np.float16), "chunk_spans": spans,
            "row_ids": np.array(row_ids, np.int64)}


def _check_same_model(previous, fingerprint, model_name, out_dir):
    """Refuse to mix embeddings of different models or feature settings in one index folder."""
    if previous["fingerprint"] != fingerprint:
        raise ValueError(
            f"index at {str(out_dir)!r} was built with another model or feature settings "
            f"(model {previous['model']!r}, fingerprint {previous['fingerprint'][:12]}; this one is "
            f"{model_name!r}, {fingerprint[:12]}): use another out_dir, or overwrite=True to rebuild it"
        )


class AudioIndex:
    """Pooled and per-chunk audio embeddings of a collection, stored in shards under a folder, searchable by text or audio."""

    def __init__(self, out_dir: str | os.PathLike, manifest: dict, tensors: dict[str, torch.Tensor], model: RetrievalModel | None = None,
                 processor: RetrievalProcessor | None = None, audio_root: str | os.PathLike | None = None):
        self.out_dir = Path(out_dir)
        self.manifest = manifest
        self.names = [item["name"] for item in manifest["items"]]
        root = audio_root if audio_root is not None else manifest.get("root")
        self.root = None if root is None else (self.out_dir / root).resolve()
        self.root_given = audio_root is not None  # the user named the folder: trusted as it is, whatever the manifest says
        self.items = [str(self.root / n) if self.root is not None else n for n in self.names]
        self.embeddings = tensors["embeddings"]
        self.chunk_embeddings = tensors["chunk_embeddings"]
        self.chunk_offsets = tensors["chunk_offsets"]
        self.chunk_spans = tensors["chunk_spans"]
        self.skipped = manifest.get("skipped", [])
        self.model, self.processor = model, processor
        self.last_update = None
        self._backends = {}

    # -- building and updating --

    @classmethod
    def build(cls, model: RetrievalModel, processor: RetrievalProcessor, audio: AudioSource, out_dir: str | os.PathLike, batch_size: int = 8,
              shard_size: int = 1024, audio_column: str | None = None, overwrite: bool = False, skip_bad_audio: bool = False,
              progress: bool = True) -> AudioIndex:
        """Embed `audio` (folder, path list or Dataset) into out_dir, or bring an existing index up to date (see `update`)."""
        return cls.update(model, processor, audio, out_dir, batch_size, shard_size, audio_column, overwrite, skip_bad_audio, progress)

    @classmethod
    def update(cls, model: RetrievalModel, processor: RetrievalProcessor, audio: AudioSource, out_dir: str | os.PathLike, batch_size: int = 8,
               shard_size: int = 1024, audio_column: str | None = None, overwrite: bool = False, skip_bad_audio: bool = False,
               progress: bool = True) -> AudioIndex:
        """Embed only the recordings added or changed since the last build, drop removed ones; resumes an interrupted build.

        Hidden files (`.x`, macOS `._x.wav`) in a folder are ignored. An unreadable recording raises, or with
        `skip_bad_audio=True` is left out and listed in `index.skipped`. `index.last_update` says what was embedded.
        An index made with another model or other feature settings is refused unless `overwrite=True`.
        Builds of one folder in several processes take turns (a file lock), so the index stays complete and correct.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(out_dir / LOCK)):
            return cls._update_locked(model, processor, audio, out_dir, batch_size, shard_size, audio_column, overwrite,
                                      skip_bad_audio, progress)

    @classmethod
    def _update_locked(cls, model, processor, audio, out_dir, batch_size, shard_size, audio_column, overwrite, skip_bad_audio, progress):
        source = collect_items(audio, audio_column)
        fingerprint = model_fingerprint(model, processor)
        model_name = str(getattr(model, "name_or_path", "") or "")
        previous = None if overwrite else _read_manifest(out_dir)
        if previous is not None:
            _check_same_model(previous, fingerprint, model_name, out_dir)
            shard_size = previous["shard_size"]
        shards, known, row_ids = {}, {}, {}
        for name, entry in (previous or {}).get("shards", {}).items():
            try:
                row_ids[name] = verify_shard(out_dir, name, entry)["row_ids"]
            except ValueError as error:
                logger.warning("%s", error)  # its recordings are embedded again below
                continue
            shards[name] = entry
        for item in (previous or {}).get("items", []):
            if item["shard"] in shards and int(row_ids[item["shard"]][item["shard_row"]]) == item["row_id"]:
                known[item_key(item)] = item
            elif item["shard"] in shards:  # the manifest and the shard disagree: embedded again, never answered
                logger.warning("%s", _mismatch(out_dir, item))
        known_bad = {item_key(item): item for item in (previous or {}).get("skipped", [])}
        kept, skipped, todo = [], [], []
        for item in source.items:
            key = item_key(item)
            (kept if key in known else skipped if key in known_bad else todo).append(item)
        done, skipped = {item_key(i): known[item_key(i)] for i in kept}, [known_bad[item_key(i)] for i in skipped]
        manifest = {
            "format_version": FORMAT_VERSION, "model": model_name, "fingerprint": fingerprint,
            "sampling_rate": processor.feature_extractor.sampling_rate, "dim": model.config.projection_dim,
            "shard_size": shard_size, "root": None if source.root is None else os.path.relpath(source.root, out_dir.resolve()),
        }

        def write_manifest(complete):
            listed = [done[item_key(i)] for i in source.items if item_key(i) in done]
            _write_manifest(out_dir, manifest, listed, skipped, shards, previous, complete)

        rate, embedded_names = processor.feature_extractor.sampling_rate, []
        with tqdm(total=len(source.items), initial=len(kept), desc="embedding audio", unit="file", disable=not progress) as bar:
            for start in range(0, len(todo), shard_size):
                group, good = todo[start : start + shard_size], []

                def waves(group=group, good=good):
                    for item in group:
                        try:
                            wave = decode_audio(source.open(item), rate)
                            if not np.isfinite(wave).all():
                                raise ValueError(f"audio file {item['name']!r} has NaN or Inf samples: fix or remove it")
                        except ValueError as error:
                            if not skip_bad_audio:
                                raise ValueError(f"{error} (or pass skip_bad_audio=True / --skip_bad_audio to leave it out)") from error
                            skipped.append({**item, "error": str(error)})
                            logger.warning("skipping %s: %s", item["name"], error)
                        else:
                            good.append(item)
                            yield wave
                        bar.update(1)

                embedded = embed_clips(model, processor, waves(), batch_size=batch_size)
                if good:
                    name = f"shard-{uuid.uuid4().hex[:16]}.safetensors"
                    ids = [new_row_id() for _ in good]
                    tensors = _shard_tensors(embedded, ids)
                    _atomic_write(out_dir / name, tensors=tensors)
                    shards[name] = {"rows": len(good), "chunks": len(tensors["chunk_embeddings"])}
                    for row, item in enumerate(good):
                        done[item_key(item)] = {**item, "shard": name, "shard_row": row, "row_id": ids[row]}
                    embedded_names += [item["name"] for item in good]
                write_manifest(complete=start + shard_size >= len(todo))
        if not todo:
            write_manifest(complete=True)
        cls._remove_unused(out_dir)
        index = cls._load_unlocked(out_dir, model, processor, source.root)
        removed = sorted({i["name"] for i in known.values()} - {i["name"] for i in source.items})
        index.last_update = {"embedded": embedded_names, "kept": len(kept), "removed": removed,
                             "skipped": [i["name"] for i in skipped]}
        return index

    @staticmethod
    def _remove_unused(out_dir):
        """Delete shards and backend files the manifest no longer names (replaced, emptied, or from another revision)."""
        manifest = _read_manifest(out_dir)
        for path in out_dir.glob("shard-*.safetensors"):
            if path.name not in manifest["shards"]:
                path.unlink(missing_ok=True)
        for path in [*out_dir.glob("faiss-*.index"), *out_dir.glob("ondisk-*")]:
            if not path.name.removesuffix(".index").endswith(f"-{manifest['revision'][:12]}"):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    # -- loading --

    @classmethod
    def load(cls, out_dir: str | os.PathLike, model: RetrievalModel | None = None, processor: RetrievalProcessor | None = None,
             audio_root: str | os.PathLike | None = None) -> AudioIndex:
        """Open a finished index (shards checked; the model too, if given); `audio_root`: where the folder is now, if moved."""
        for _ in range(3):  # a concurrent update may replace a shard between reading the manifest and the shard
            try:
                return cls._load_unlocked(out_dir, model, processor, audio_root)
            except _ShardGone:
                pass
        return cls._load_unlocked(out_dir, model, processor, audio_root)

    @classmethod
    def _load_unlocked(cls, out_dir, model=None, processor=None, audio_root=None):
        out_dir = Path(out_dir)
        manifest = _read_manifest(out_dir)
        if manifest is None:
            raise FileNotFoundError(f"no index at {str(out_dir)!r} ({MANIFEST} missing): build one with AudioIndex.build")
        if model is not None and processor is not None:
            _check_same_model(manifest, model_fingerprint(model, processor), str(getattr(model, "name_or_path", "")), out_dir)
        if not manifest["complete"]:
            raise ValueError(
                f"index at {str(out_dir)!r} is incomplete ({len(manifest['items'])} recordings embedded so far): "
                "run AudioIndex.build (or atr-search) again with the same arguments to resume"
            )
        loaded = {}
        for name, entry in manifest["shards"].items():
            if not (out_dir / name).exists() and _read_manifest(out_dir)["revision"] != manifest["revision"]:
                raise _ShardGone(name)
            loaded[name] = verify_shard(out_dir, name, entry)
        index = cls(out_dir, manifest, _gather(out_dir, manifest["items"], loaded, manifest["dim"]), model, processor, audio_root)
        if audio_root is None:
            index._check_root()
        return index

    def __len__(self):
        return len(self.items)

    def _check_root(self):
        """Refuse a manifest root where none of its recordings is as indexed (size, mtime_ns): an edited or foreign root."""
        if self.root is None or not self.items or any(self.unchanged(i) for i in range(len(self))):
            return
        raise BadIndexError(
            f"index manifest {str(self.out_dir / MANIFEST)!r} puts its recordings under root "
            f"{self.manifest['root']!r} ({str(self.root)!r}), where none of its {len(self)} recordings is as indexed: "
            "pass the recordings' folder (--audio-dir DIR, audio_root=DIR), or rebuild with --overwrite")

    def unchanged(self, row: int) -> bool:
        """True if recording `row` is a file inside the root with the size and mtime_ns it had when it was embedded."""
        path, item = Path(self.items[row]), self.manifest["items"][row]
        try:
            stat = path.stat()
            inside = self.root is None or path.resolve().is_relative_to(self.root)
        except OSError:
            return False
        return inside and path.is_file() and (stat.st_size, stat.st_mtime_ns) == (item.get("size"), item.get("mtime_ns"))

    def export(self, target: str | os.PathLike | None, collection: str = "atr", **kwargs) -> dict[str, int]:
        """Write this index to Qdrant (a local-mode folder or a server URL): see `atr.search.vectordb.export_index`."""
        from .vectordb import export_index
        return export_index(self, target, collection, **kwargs)
    # -- searching --

    def backend(self, name: str = "exact", **build_options) -> SearchBackend:
        """Search backend `name` (atr.search.BACKENDS) over the pooled embeddings, built on first use.

        Kinds that save keep it next to the shards for this revision (`faiss-<kind>-<revision>.index`, `ondisk-<revision>/`).
        """
        if name not in self._backends:
            kind = get_backend(name)
            path = None if kind.file_name is None else self.out_dir / kind.file_name.format(name=name, revision=self.manifest["revision"][:12])
            self._backends[name] = kind.open_or_build(self.embeddings, path, **build_options)
        return self._backends[name]

    def search_embeddings(self, query_embeds: Array, k: int = 10, backend: str = "exact", **search_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank the recordings for query embeddings (Q, D): (scores, indices) (Q, k), best first.

        `search_kwargs` go to the backend's `search` (e.g. `k_factor`, `ef_search` for FAISS; `nprobe` for ondisk).
        """
        return self.backend(backend).search(query_embeds, k, **search_kwargs)

    def embed_text(self, queries: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (Q, D) of the queries, from the model the index was built with."""
        self._need_model("search by text")
        return embed_texts(self.model, self.processor, list(queries))

    def embed_audio(self, clips: list[Clip]) -> torch.Tensor:
        """L2-normalised pooled embeddings (Q, D) of clips (paths, {"array", "sampling_rate"} dicts or arrays at the index's rate)."""
        self._need_model("search by example")
        rate = self.processor.feature_extractor.sampling_rate
        waves = [c if isinstance(c, np.ndarray) else decode_audio(c, rate) for c in clips]
        return embed_clips(self.model, self.processor, waves).embeds

    def search(self, queries: str | list[str], k: int = 10, backend: str = "exact", chunks: bool = False,
               **search_kwargs) -> list[SearchResult] | list[list[SearchResult]]:
        """Recordings (or with `chunks=True`, chunks) best matching each text query: a list of `SearchResult` per query."""
        single = isinstance(queries, str)
        results = self.search_by_embedding(self.embed_text([queries] if single else queries), k, backend, chunks, **search_kwargs)
        return results[0] if single else results

    def search_audio(self, clips: Clip | list[Clip], k: int = 10, backend: str = "exact", chunks: bool = False,
                     **search_kwargs) -> list[SearchResult] | list[list[SearchResult]]:
        """Recordings that sound like a clip (query by example): like `search`, for one clip or a list of them."""
        single = not isinstance(clips, (list, tuple))
        results = self.search_by_embedding(self.embed_audio([clips] if single else clips), k, backend, chunks, **search_kwargs)
        return results[0] if single else results

    def search_by_embedding(self, query_embeds: Array, k: int = 10, backend: str = "exact", chunks: bool = False,
                            **search_kwargs) -> list[list[SearchResult]]:
        """`SearchResult` lists for query embeddings (Q, D); each hit names its best chunk for that query."""
        query_embeds = torch.as_tensor(query_embeds, dtype=torch.float32).reshape(-1, self.embeddings.shape[1])
        if chunks:
            if backend != "exact":
                raise ValueError(f"chunks=True ranks chunks with the exact backend only, not {backend!r}: use backend='exact'")
            scores, chunk_ids = exact_search(query_embeds, self.chunk_embeddings, k)
            rows = torch.searchsorted(self.chunk_offsets, chunk_ids, right=True) - 1
            return [[self._result(int(r), float(s), q, int(c)) for s, r, c in zip(*row)]
                    for q, *row in zip(query_embeds, scores.tolist(), rows.tolist(), chunk_ids.tolist())]
        scores, indices = self.search_embeddings(query_embeds, k, backend, **search_kwargs)
        return [[self._result(int(i), float(s), q) for s, i in zip(row_scores, row_indices)]
                for q, row_scores, row_indices in zip(query_embeds, scores.tolist(), indices.tolist())]

    def _result(self, index, score, query, chunk=None):
        """A hit on recording `index`, with its best chunk for `query` (or the given chunk) and that chunk's spans."""
        first, last = int(self.chunk_offsets[index]), int(self.chunk_offsets[index + 1])
        chunk_scores = self.chunk_embeddings[first:last].float() @ query
        local = int(chunk_scores.argmax()) if chunk is None else chunk - first
        spans = [[round(float(a), 3), round(float(b), 3)] for a, b in self.chunk_spans[first + local] if a >= 0]
        return SearchResult(path=self.items[index], score=score, index=index, start=spans[0][0], end=max(b for _, b in spans),
                            name=self.names[index], chunk=local, chunk_score=float(chunk_scores[local]), spans=spans)

    def _need_model(self, what):
        if self.model is None or self.processor is None:
            raise ValueError(f"this AudioIndex has no model: load it with AudioIndex.load(out_dir, model, processor) to {what}")


class _ShardGone(Exception):
    """A shard named by the manifest was removed by a concurrent update: read the new manifest."""


def _mismatch(out_dir, item):
    """The error for a manifest item whose shard row holds another recording's embeddings."""
    return BadIndexError(
        f"index manifest {str(Path(out_dir) / MANIFEST)!r} does not match shard {item['shard']!r}: row {item['shard_row']} "
        f"there holds another recording than {item['name']!r}: run the build again to re-embed it (or rebuild with --overwrite)")


def _gather(out_dir, items, loaded, dim):
    """Rows of every item in manifest order: pooled embeddings, chunk embeddings, chunk offsets (N+1,) and spans."""
    embeds, chunk_embeds, spans, counts = [], [], [], []
    starts = {name: np.concatenate([[0], np.cumsum(t["chunk_counts"])]) for name, t in loaded.items()}
    for item in items:
        tensors, row = loaded[item["shard"]], item["shard_row"]
        if int(tensors["row_ids"][row]) != item["row_id"]:
            raise _mismatch(out_dir, item)
        first, last = starts[item["shard"]][row], starts[item["shard"]][row + 1]
        embeds.append(tensors["embeddings"][row])
        chunk_embeds.append(tensors["chunk_embeddings"][first:last])
        spans.append(tensors["chunk_spans"][first:last])
        counts.append(last - first)
    width = max([s.shape[1] for s in spans], default=1)
    spans = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=-1.0) for s in spans]
    return {
        "embeddings": torch.from_numpy(np.stack(embeds) if embeds else np.zeros((0, dim), np.float32)),
        "chunk_embeddings": torch.from_numpy(np.concatenate(chunk_embeds) if chunk_embeds else np.zeros((0, dim), np.float16)),
        "chunk_offsets": torch.from_numpy(np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)),
        "chunk_spans": np.concatenate(spans) if spans else np.zeros((0, 1, 2), np.float32),
    }

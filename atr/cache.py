"""Frozen-encoder output cache: encode every clip (K noisy views + the clean one) and caption once, train the heads from disk.

With frozen encoders their outputs never change, so training only needs the heads, attention, pooling and loss.
`build_text_cache` / `build_audio_cache` store the encoders' token states in an Arrow file under a directory named by
a fingerprint of everything that determines them (data, encoder weights, feature extractor / tokenizer settings,
number of views, seed, noise settings); anything else gets a new directory, so a stale cache is never read.
`CachedCollator` turns training rows into `text_hidden_states` / `audio_hidden_states` batches for `AtrModel.forward`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from datasets import Array2D, Array3D, Dataset, Features, IterableDataset, List, Value
from datasets.arrow_writer import ArrowWriter
from filelock import FileLock
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from .collator import AtrCollator
from .data import decode_audio
from .embedding import module_fingerprint
from .modeling_atr import AtrModel

logger = logging.getLogger(__name__)

# Bump when what is stored (or how) changes: it is part of every fingerprint.
CACHE_FORMAT_VERSION = 2  # 2: audio rows hold audio_frames (the Whisper token mask)
DATA_FILE, META_FILE = "data.arrow", "meta.json"
TEXT_CACHE_WINDOW = 8192  # captions sorted and held at once while the text cache is built


def default_cache_root() -> Path:
    """Where caches live unless told otherwise: next to the `datasets` cache (honours HF_DATASETS_CACHE / HF_HOME)."""
    import datasets.config

    return Path(datasets.config.HF_DATASETS_CACHE).parent / "atr_encoder_outputs"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of a tokenizer's vocabulary/pipeline and the settings that change its output."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # padding/truncation are set on the backend by each call (so they depend on the last call, even mid-call in
        # another thread): the settings below decide them
        pipeline = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        body = json.dumps(pipeline, sort_keys=True)
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    settings = [type(tokenizer).__name__, tokenizer.model_max_length, tokenizer.padding_side, tokenizer.truncation_side]
    return hashlib.sha256((body + json.dumps(settings)).encode()).hexdigest()


def _dataset_fingerprint(dataset) -> str:
    if isinstance(dataset, IterableDataset) or not getattr(dataset, "_fingerprint", None):
        raise ValueError(f"cannot cache encoder outputs for a {type(dataset).__name__}: it has no fingerprint to key the cache on; "
                         "load the dataset without streaming=True, or train without --cache_encoder_outputs")
    return dataset._fingerprint


def audio_files_fingerprint(dataset: Dataset) -> str:
    """SHA-256 of (path, size, mtime_ns) of every audio file a row names without holding its bytes, in row order.

    A local manifest or audiofolder stores paths, so the `datasets` fingerprint sees the paths, not the audio: this
    key changes when a file is re-written in place. Rows holding bytes or arrays are in the datasets fingerprint.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")["audio"]  # memory-mapped: embedded bytes are not read
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        paths = column.to_pylist()
    elif pa.types.is_struct(column.type) and column.type.get_field_index("path") >= 0:
        paths = pc.struct_field(column, "path")
        if column.type.get_field_index("bytes") >= 0:  # a row with bytes needs no file
            paths = pc.if_else(pc.is_null(pc.struct_field(column, "bytes")), paths, pa.scalar(None, paths.type))
        paths = paths.to_pylist()
    else:
        return ""
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        try:
            status = os.stat(path)
            digest.update(json.dumps([path, status.st_size, status.st_mtime_ns]).encode())
        except OSError:  # a missing file fails later, at decoding, with its name
            digest.update(json.dumps([path, None]).encode())
    return digest.hexdigest()


def _fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT_VERSION, **parts}, sort_keys=True, default=str).encode()).hexdigest()[:24]


def text_cache_fingerprint(model: AtrModel, processor: ProcessorMixin, dataset: Dataset, text_options: dict | None = None) -> str:
    """Key of the text cache: dataset, text encoder weights, tokenizer and tokenizer options."""
    return _fingerprint({
        "kind": "text", "data": _dataset_fingerprint(dataset), "encoder": module_fingerprint(model.text_model),
        "tokenizer": tokenizer_fingerprint(processor.tokenizer), "text_options": text_options or {},
    })


def audio_cache_fingerprint(model: AtrModel, processor: ProcessorMixin, dataset: Dataset, num_views: int, seed: int,
                            noise_settings: dict | None = None) -> str:
    """Key of the audio cache: dataset, audio encoder weights, feature-extractor settings, views, seed and noise settings."""
    return _fingerprint({
        "kind": "audio", "data": _dataset_fingerprint(dataset), "files": audio_files_fingerprint(dataset), "encoder": module_fingerprint(model.audio_model),
        "features": processor.feature_extractor.to_json_string(), "num_views": num_views,
        "seed": seed if num_views else 0, "noise": (noise_settings or {}) if num_views else {},  # clean only: one cache for every seed
    })


def view_seed(seed: int, clip_index: int, view: int) -> int:
    """The augmentation seed of noisy view `view` (1..K) of clip `clip_index`; view 0 is the clean clip."""
    return int(np.random.default_rng([seed, clip_index, view]).integers(0, 2**32))


def _cached(directory: Path) -> Dataset | None:
    if (directory / META_FILE).is_file() and (directory / DATA_FILE).is_file():
        return Dataset.from_file(str(directory / DATA_FILE))
    return None


def _write(directory: Path, features: Features, rows, meta: dict, total: int | None = None) -> Dataset:
    """Build the cache under a file lock in a unique temporary folder, then rename it into place (atomic).

    A crashed build never looks like a finished cache, and processes sharing the cache folder (other nodes too, where
    the file system supports locks) build it once: the others wait, then read the finished one.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory.parent / f"{directory.name}.lock")):
        if (found := _cached(directory)) is not None:  # built by another process while this one waited
            return found
        for stale in directory.parent.glob(f"{directory.name}.tmp-*"):  # left by a killed build: the lock says none runs
            shutil.rmtree(stale, ignore_errors=True)
        if directory.exists():
            raise ValueError(f"encoder cache folder {directory} exists but is incomplete (no {META_FILE} or {DATA_FILE}): "
                             "delete it to rebuild the cache")
        tmp = Path(tempfile.mkdtemp(prefix=f"{directory.name}.tmp-", dir=directory.parent))
        try:
            with ArrowWriter(features=features, path=str(tmp / DATA_FILE), writer_batch_size=64) as writer:  # not 1000 rows held
                # minutes on real data: a bar says how far the build is (rows = captions, or clips x views)
                for row in tqdm(rows, total=total, desc=f"building the {meta['kind']} encoder cache", unit=" rows"):
                    writer.write(row)
                writer.finalize()
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return Dataset.from_file(str(directory / DATA_FILE))


@torch.no_grad()
def build_text_cache(model: AtrModel, processor: ProcessorMixin, dataset: Dataset, cache_root: str | os.PathLike | None = None,
                     batch_size: int = 64, dtype: str = "float32", text_options: dict | None = None) -> Dataset:
    """Text encoder states of every caption of `dataset` (rows clip-major, caption-minor), built once and reused.

    Each row holds `clip`, `caption` (its index in the clip's captions) and `text_states` (real tokens only, T_i x H).
    """
    if not model.config.freeze_text_encoder:
        raise ValueError("build_text_cache needs a frozen text encoder (freeze_text_encoder=True): a trained one changes its outputs")
    text_options = dict(text_options or {})
    key = text_cache_fingerprint(model, processor, dataset, text_options)
    directory = Path(cache_root or default_cache_root()) / f"text-{key}"
    if (found := _cached(directory)) is not None:
        logger.info("text encoder cache found: %s", directory)
        return found
    logger.info("building the text encoder cache in %s", directory)
    model.eval()
    device = next(model.parameters()).device
    captions = dataset["captions"]
    pairs = [(clip, index, text) for clip, texts in enumerate(captions) for index, text in enumerate(texts)]

    def encode(texts):
        batch = processor(text=texts, return_tensors="pt", **text_options).to(device)
        states = model.get_text_encoder_states(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return [state[mask].float().cpu().numpy().astype(dtype) for state, mask in zip(states, batch["attention_mask"].bool())]

    def rows():
        # Each distinct caption of a window is encoded once, in batches of similar length (characters stand in for
        # tokens: little padding to compute, no second tokenisation), and rows are written back in clip-major order;
        # a window bounds what is held in memory.
        for start in range(0, len(pairs), TEXT_CACHE_WINDOW):
            window = pairs[start : start + TEXT_CACHE_WINDOW]
            distinct = sorted({text for _, _, text in window}, key=len)
            states = {}
            for first in range(0, len(distinct), batch_size):
                texts = distinct[first : first + batch_size]
                states.update(zip(texts, encode(texts)))
            for clip, index, text in window:
                yield {"clip": clip, "caption": index, "text_states": states[text]}

    width = model.config.text_config.hidden_size
    features = Features({"clip": Value("int64"), "caption": Value("int64"), "text_states": Array2D(shape=(None, width), dtype=dtype)})
    meta = {"kind": "text", "fingerprint": key, "clips": len(captions), "captions": len(pairs), "dtype": dtype}
    return _write(directory, features, rows(), meta, total=len(pairs))


@torch.no_grad()
def build_audio_cache(model: AtrModel, processor: ProcessorMixin, dataset: Dataset, cache_root: str | os.PathLike | None = None,
                      num_views: int = 4, seed: int = 0, augment: Callable | None = None, noise_settings: dict | None = None,
                      batch_size: int = 16, dtype: str = "float32") -> Dataset:
    """Audio encoder states of every clip: view 0 clean, views 1..K with `augment` (seeded by `view_seed`); built once.

    Rows are clip-major, view-minor (row = clip * (K + 1) + view), each with `clip`, `view` and `audio_states`
    (chunks x L x H, every chunk of the clip). `augment` should always add noise (p=1): how often a noisy view is
    used is decided at training time by `CachedCollator(noise_probability=...)`. `noise_settings` describes
    `augment` for the fingerprint (an audiomentations transform cannot describe itself).
    """
    if not model.config.freeze_audio_encoder:
        raise ValueError("build_audio_cache needs a frozen audio encoder (freeze_audio_encoder=True): a trained one changes its outputs")
    num_views = int(num_views) if augment is not None else 0
    key = audio_cache_fingerprint(model, processor, dataset, num_views, seed, noise_settings)
    directory = Path(cache_root or default_cache_root()) / f"audio-{key}"
    if (found := _cached(directory)) is not None:
        logger.info("audio encoder cache found: %s", directory)
        return found
    logger.info("building the audio encoder cache (%d clips x %d views) in %s", len(dataset), num_views + 1, directory)
    model.eval()
    device = next(model.parameters()).device
    extractor = processor.feature_extractor
    augmenter = AtrCollator(processor, augment=augment)  # its seeded `_augment` is the one the uncached path uses

    def rows():
        for start in range(0, len(dataset), batch_size):
            clean = [decode_audio(audio, extractor.sampling_rate) for audio in dataset[start : start + batch_size]["audio"]]
            views = [[wave] + [augmenter._augment(wave, view_seed(seed, start + i, v)) for v in range(1, num_views + 1)]
                     for i, wave in enumerate(clean)]
            flat = [wave for clip_views in views for wave in clip_views]
            batch = extractor(flat, sampling_rate=extractor.sampling_rate, return_tensors="pt")
            mask = batch["chunk_mask"].bool()
            states = model.get_audio_encoder_states(batch["input_features"].to(device)[mask.to(device)]).float().cpu()
            per_view = torch.split(states, mask.sum(1).tolist())
            # real feature frames per chunk: the token mask of a padded (Whisper) window is rebuilt from them
            frames = torch.split(batch["audio_attention_mask"][mask].sum(-1), mask.sum(1).tolist())
            for row, (clip_states, clip_frames) in enumerate(zip(per_view, frames)):
                yield {"clip": start + row // (num_views + 1), "view": row % (num_views + 1),
                       "audio_states": clip_states.numpy().astype(dtype), "audio_frames": clip_frames.tolist()}

    tokens, width = _audio_token_shape(model, extractor)
    features = Features({"clip": Value("int64"), "view": Value("int64"), "audio_states": Array3D(shape=(None, tokens, width), dtype=dtype),
                         "audio_frames": List(Value("int64"))})
    meta = {"kind": "audio", "fingerprint": key, "clips": len(dataset), "views": num_views + 1, "seed": seed, "dtype": dtype}
    return _write(directory, features, rows(), meta, total=len(dataset) * (num_views + 1))


@torch.no_grad()
def _audio_token_shape(model, extractor) -> tuple[int, int]:
    """(tokens per chunk, hidden size) of the audio encoder, from one silent chunk."""
    was_training = model.training
    probe = torch.zeros(1, *extractor.chunk_feature_shape, device=next(model.parameters()).device)
    shape = tuple(model.get_audio_encoder_states(probe).shape[1:])
    model.train(was_training)
    return shape


class _ColumnRows:
    """Rows of a variable-length list / ArrayND column of a memory-mapped cache as numpy views (n_i, *tail_shape).

    datasets' numpy formatter rebuilds the extension type of every row it reads, and an Arrow `take` copies the
    nested lists: together most of a cached step. The column's flattened values are views into the memory map, so a
    row is a slice. The views are built lazily in the reading process (a DataLoader worker) and dropped when pickled.
    """

    def __init__(self, dataset: Dataset, column: str, tail_shape: tuple[int, ...]):
        self.dataset, self.column, self.tail_shape = dataset, column, tuple(tail_shape)
        self._chunks = None

    def _load(self):
        self._chunks, starts = [], [0]
        for chunk in self.dataset.data.table.column(self.column).chunks:
            lists = getattr(chunk, "storage", chunk)  # ArrayND chunks are extension arrays over nested lists
            values = lists.flatten(recursive=True)  # the scalars of this (possibly sliced) chunk, in row order
            offsets = lists.offsets.to_numpy()
            self._chunks.append((values.to_numpy(zero_copy_only=False).reshape(-1, *self.tail_shape), offsets - offsets[0]))
            starts.append(starts[-1] + len(lists))
        self._starts = np.asarray(starts)
        mapping = self.dataset._indices  # a select()/shuffle() view: row i is the file's row mapping[i]
        self._mapping = None if mapping is None else mapping.column(0).to_numpy().astype(np.int64)

    def take(self, indices) -> list[np.ndarray]:
        """The rows `indices` (read-only views)."""
        if self._chunks is None:
            self._load()
        rows = np.asarray(indices) if self._mapping is None else self._mapping[np.asarray(indices)]
        which = np.searchsorted(self._starts, rows, side="right") - 1
        out = []
        for chunk, row in zip(which, rows - self._starts[which]):
            flat, offsets = self._chunks[chunk]
            out.append(flat[offsets[row] : offsets[row + 1]])
        return out

    def __getstate__(self):
        return {**self.__dict__, "_chunks": None}


def _pad(arrays: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a list of (n_i, ...) tensors to (B, max n, ...) and return it with its (B, max n) int64 mask."""
    padded = torch.nn.utils.rnn.pad_sequence(arrays, batch_first=True)
    lengths = torch.tensor([len(a) for a in arrays])
    return padded, (torch.arange(padded.shape[1]) < lengths[:, None]).long()


class CachedCollator(AtrCollator):
    """AtrCollator that takes the frozen encoders' states from the caches instead of running the encoders.

    Rows need `clip_index` (the clip's row in the dataset the caches were built from) and `captions`; `audio` too when
    there is no audio cache. The caption of each clip is drawn exactly as `AtrCollator` draws it (the same stream per
    (seed, epoch, clip_index), so resuming and multi-process runs behave the same). With an audio cache, a clip uses a
    noisy view (1..K, uniformly) with probability `noise_probability`, else the clean view 0; without one, audio is
    decoded, augmented and featurised as `AtrCollator` does. Evaluation is not cached: use `AtrCollator` for it.
    """

    def __init__(self, processor: ProcessorMixin, text_cache: Dataset | None = None, audio_cache: Dataset | None = None,
                 noise_probability: float = 0.5, **kwargs):
        if text_cache is None and audio_cache is None:
            raise ValueError("CachedCollator needs text_cache=, audio_cache= or both: otherwise use AtrCollator")
        super().__init__(processor, training=True, **kwargs)
        self.text_cache, self.audio_cache = text_cache, audio_cache
        self.noise_probability = float(noise_probability)
        self.num_views = 0
        # Each row's array has a fixed shape after its first dimension (tokens, or chunks), given by the feature.
        if text_cache is not None:
            self._text_states = _ColumnRows(text_cache, "text_states", text_cache.features["text_states"].shape[1:])
        if audio_cache is not None:
            self._audio_states = _ColumnRows(audio_cache, "audio_states", audio_cache.features["audio_states"].shape[1:])
            self._audio_frames = _ColumnRows(audio_cache, "audio_frames", ())
            clips = int(audio_cache[len(audio_cache) - 1]["clip"]) + 1
            self.num_views = len(audio_cache) // clips - 1
        if text_cache is not None:
            # Row of a clip's first caption: the cache is clip-major, so offsets are a running count per clip.
            counts = np.bincount(text_cache.with_format("numpy")["clip"][:])
            self.caption_offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def _view(self, seed: int) -> int:
        """Which cached view a row uses: noisy (1..K) with probability noise_probability, else clean (0)."""
        rng = np.random.default_rng([int(seed), 1])  # a stream of its own: caption and chunk draws stay as uncached
        if self.num_views == 0 or rng.random() >= self.noise_probability:
            return 0
        return 1 + int(rng.integers(self.num_views))

    def _sample_chunks(self, states: list, generator: np.random.Generator) -> list:
        """Keep at most max_train_chunks chunks per clip, drawn as the feature extractor draws them."""
        cap = self.processor_kwargs.get("max_train_chunks") or self.processor.feature_extractor.max_train_chunks
        if cap is None:
            return states
        return [s[np.sort(generator.choice(len(s), size=cap, replace=False))] if len(s) > cap else s for s in states]

    def __call__(self, rows: list[dict]):
        """Collates a list of training rows into one batch of cached encoder states (and raw inputs where not cached)."""
        if not rows:
            raise ValueError("CachedCollator got an empty list of rows: the DataLoader produced an empty batch")
        seeds = self._row_seeds(rows)
        clips = [int(row["clip_index"]) for row in rows]
        choices = [int(seed % len(row["captions"])) for row, seed in zip(rows, seeds)]
        generator = np.random.default_rng([self.seed, int(seeds[0])])
        batch = {"return_loss": True}
        if self.text_cache is not None:
            captions = [int(self.caption_offsets[c] + i) for c, i in zip(clips, choices)]
            text = self._text_states.take(captions)
            batch["text_hidden_states"], batch["attention_mask"] = _pad([torch.tensor(t, dtype=torch.float32) for t in text])
        else:
            texts = [row["captions"][i] for row, i in zip(rows, choices)]
            batch.update(self.processor(text=texts, return_tensors="pt"))
        if self.audio_cache is not None:
            indices = [c * (self.num_views + 1) + self._view(seed) for c, seed in zip(clips, seeds)]
            cached = self._audio_states.take(indices)
            keep = self._sample_chunks([np.arange(len(a)) for a in cached], generator)
            states = [torch.from_numpy(a[k]).float() for a, k in zip(cached, keep)]
            batch["audio_hidden_states"], batch["chunk_mask"] = _pad(states)
            cached_frames = self._audio_frames.take(indices)
            frames = _pad([torch.from_numpy(f[k]) for f, k in zip(cached_frames, keep)])[0]
            total = self.processor.feature_extractor.frames_per_chunk
            batch["audio_attention_mask"] = (torch.arange(total) < frames[..., None]).long()
        else:
            waves = [decode_audio(row["audio"], self.sampling_rate) for row in rows]
            if self.augment is not None:
                waves = [self._augment(wave, seed) for wave, seed in zip(waves, seeds)]
            options = {**self.processor_kwargs, "training": True, "generator": generator}
            batch.update(self.processor(audio=waves, sampling_rate=self.sampling_rate, return_tensors="pt", **options))
        return batch


__all__ = [
    "CachedCollator", "audio_cache_fingerprint", "audio_files_fingerprint", "build_audio_cache", "build_text_cache", "default_cache_root",
    "module_fingerprint", "text_cache_fingerprint", "tokenizer_fingerprint", "view_seed",
]

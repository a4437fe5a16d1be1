"""Audio-text data: dataset sources, decoding and resampling (batches: atr.collator; noise and augmentation: atr.augmentation)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow.compute as pc
import soundfile as sf
import soxr

from datasets import Audio, Dataset, IterableDataset, get_dataset_split_names, load_dataset

from .feature_extraction_atr import AtrFeatureExtractor
from .synthetic import make_synthetic_split

logger = logging.getLogger(__name__)

AUDIO_COLUMN_CANDIDATES = ("audio", "file_name", "path", "audio_path", "filename", "file")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")


# ---------------------------------------------------------------- decoding


def _audio_name(audio) -> str:
    """A human-readable name for an audio value, for error messages."""
    if isinstance(audio, dict):
        return str(audio.get("path") or "<in-memory audio>")
    return str(audio)


def _audio_source(audio):
    """What soundfile reads for an audio value without an array: its bytes, else its path (None when it has neither)."""
    if isinstance(audio, dict):
        return io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio.get("path")
    return os.fspath(audio)


def decode_audio(audio: str | os.PathLike | dict, sampling_rate: int) -> np.ndarray:
    """Float32 mono waveform at `sampling_rate` from a path, a {"path", "bytes"} dict or a {"array", "sampling_rate"} dict.

    An array goes through `AtrFeatureExtractor.to_mono_float`, the extractor's own check: integer PCM is scaled to
    [-1, 1], `(channels, samples)` (the datasets / torchcodec layout) is averaged to mono and `(samples, channels)`
    is refused. Files are read by soundfile, which scales PCM and gives `(samples, channels)`. NaN or Inf is refused.
    """
    name = _audio_name(audio)
    if isinstance(audio, dict) and audio.get("array") is not None:
        if audio.get("sampling_rate") is None:
            raise ValueError(f"audio {name} has an array but no sampling_rate: add 'sampling_rate' to the dict")
        try:
            wave = AtrFeatureExtractor.to_mono_float(audio["array"])
        except ValueError as error:
            raise ValueError(f"audio {name}: {error}") from error
        source_rate = int(audio["sampling_rate"])
    else:
        source = _audio_source(audio)
        if source is None:
            raise ValueError(f"audio {name} has neither bytes nor a path: check the dataset's audio column")
        try:
            with sf.SoundFile(source) as sound:
                truncated = _truncation(sound)
                wave, source_rate = sound.read(dtype="float32", always_2d=True), sound.samplerate
        except Exception as error:  # soundfile raises several types for unreadable/corrupt data
            raise ValueError(f"could not decode audio file {name}: {error}. Fix or remove the file, "
                             "or load the dataset with skip_bad_audio=True") from error
        if truncated:
            raise ValueError(f"audio file {name} is truncated ({truncated}): re-export or re-download it, "
                             "or load the dataset with skip_bad_audio=True")
        wave = wave[:, 0] if wave.shape[1] == 1 else wave.mean(axis=1)  # mono: a view, not a second copy of an hour
    if wave.size == 0:
        raise ValueError(f"audio file {name} is empty (0 samples): remove it or load with skip_bad_audio=True")
    if not np.isfinite(wave).all():
        raise ValueError(f"audio {name} has NaN or Inf at sample {np.flatnonzero(~np.isfinite(wave))[0]}: "
                         "re-export it, or clean it first, e.g. np.nan_to_num")
    if source_rate != sampling_rate:
        wave = soxr.resample(wave, source_rate, sampling_rate, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def _truncation(sound: sf.SoundFile) -> str | None:
    """How a WAV file is cut short, or None: libsndfile silently reads the part that is there and logs the header's size."""
    # e.g. "data : 64000 (should be 31978)": the header promises more audio bytes than the file holds
    found = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", sound.extra_info, flags=re.MULTILINE)
    if found is None:
        return None
    promised, present = int(found.group(1)), int(found.group(2))
    # 0, 0x7FFFF000 (espeak-ng) and 0xFFFFFFFF are the sizes streaming writers leave when they cannot seek back
    if promised in (0, 0x7FFFF000, 0xFFFFFFFF) or promised <= present:
        return None
    return f"its header promises {promised} bytes of audio, the file holds {present}"


def _audio_problem(audio) -> str | None:
    """Why an audio value cannot be read (header-level check, no full decode), or None when it looks fine."""
    if isinstance(audio, dict) and audio.get("array") is not None:
        return None if np.asarray(audio["array"]).size else "empty array"
    source = _audio_source(audio)
    if source is None:
        return "neither bytes nor a path"
    try:
        with sf.SoundFile(source) as sound:
            frames, truncated = sound.frames, _truncation(sound)
    except Exception as error:
        return str(error).strip() or type(error).__name__
    if truncated:
        return f"truncated: {truncated}"
    return None if frames > 0 else "no audio frames (empty file)"


def clip_durations(dataset: Dataset) -> list[float]:
    """Each row's duration in seconds, read from audio headers (no decode)."""
    durations = []
    for batch in dataset.select_columns(["audio"]).iter(batch_size=256):
        for audio in batch["audio"]:
            if isinstance(audio, dict) and audio.get("array") is not None:
                durations.append(np.shape(audio["array"])[-1] / audio["sampling_rate"])  # (samples,) or (channels, samples)
            else:
                durations.append(sf.info(_audio_source(audio)).duration)
    return durations


def estimated_chunk_counts(dataset: Dataset, window_s: float) -> list[int]:
    """Each row's chunk count bound, ceil(duration / window), from audio headers: what batches group by."""
    return [max(1, int(np.ceil(seconds / window_s))) for seconds in clip_durations(dataset)]


def _is_manifest(source) -> bool:
    return Path(source).suffix in (".csv", ".jsonl", ".json") and not os.path.isdir(source)


def is_unsplit_manifest(source: str | os.PathLike) -> bool:
    """Whether `source` is a CSV/JSONL manifest without a `split` column: one table that every split would read whole."""
    return _is_manifest(source) and os.path.isfile(source) and "split" not in _read_table(Path(source)).column_names


def has_split(source: str, split: str, config_name: str | None = None) -> bool:
    """Whether the data source has `split`: a folder's subfolder, a Hub dataset's split, a manifest's `split` value (any
    split of a manifest without that column); synthetic always."""
    if source == "synthetic":
        return True
    if _is_manifest(source):
        table = _read_table(Path(source)) if os.path.isfile(source) else None
        return table is None or "split" not in table.column_names or split in set(table["split"])
    if os.path.isdir(source):
        return os.path.isdir(os.path.join(source, split))
    if source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"dataset folder {source} does not exist: for Clotho run `python -m atr.prepare clotho "
                                f"{source}` first, or pass --dataset with an existing folder, manifest or Hub id")
    return split in get_dataset_split_names(source, config_name)


def median_duration_if_short(dataset: Dataset, window_s: float, sample_rows: int = 256) -> float | None:
    """The median duration of the first `sample_rows` clips when under a quarter of `window_s` (mostly padding), else None."""
    if len(dataset) == 0:
        return None
    median = float(np.median(clip_durations(dataset.select(range(min(sample_rows, len(dataset)))))))
    return median if median < window_s / 4 else None


def hold_out(dataset: Dataset, fraction: float, seed: int, name: str = "validation") -> tuple[Dataset, Dataset]:
    """(rest, held-out) of `dataset` split by clip (rows sharing an audio path stay together), seeded; `name`: what for."""
    # the path field only, read from Arrow: embedded audio bytes are never loaded
    paths = pc.struct_field(dataset.with_format("arrow")["audio"], "path").to_pylist()
    paths = [path or index for index, path in enumerate(paths)]
    clips = sorted(set(paths), key=str)
    count = max(1, round(fraction * len(clips)))
    if not 0 < fraction < 1 or count >= len(clips):
        raise ValueError(f"--{name}_fraction {fraction} of {len(clips)} train clips leaves no train or no {name} clip: "
                         f"pass a fraction in (0, 1), or a --{'eval' if name == 'validation' else name}_split that exists")
    held = {clips[i] for i in np.random.default_rng(seed).permutation(len(clips))[:count]}
    rows = {True: [], False: []}
    for index, path in enumerate(paths):
        rows[path in held].append(index)
    return dataset.select(rows[False]), dataset.select(rows[True])


def _verify_audio(dataset: Dataset, split: str, skip_bad_audio: bool) -> Dataset:
    """Checks every row's audio header: raises naming file and row, or drops bad rows and logs how many."""
    bad = []
    for start, batch in zip(range(0, len(dataset), 256), dataset.select_columns(["audio"]).iter(batch_size=256)):
        for offset, audio in enumerate(batch["audio"]):
            problem = _audio_problem(audio)
            if problem is None:
                continue
            row, name = start + offset, _audio_name(audio)
            if not skip_bad_audio:
                raise ValueError(f"audio file {name} at row {row} of split {split!r} cannot be read ({problem}): "
                                 "fix or remove it, or pass skip_bad_audio=True to skip such rows")
            bad.append((row, name, problem))
    if not bad:
        return dataset
    details = "; ".join(f"row {row} {name!r}: {problem}" for row, name, problem in bad[:5])
    logger.warning("skipped %d of %d rows with unreadable audio in split %r (skip_bad_audio=True): %s%s",
                   len(bad), len(dataset), split, details, " ..." if len(bad) > 5 else "")
    bad_rows = {row for row, _, _ in bad}
    return dataset.select([i for i in range(len(dataset)) if i not in bad_rows])


# ---------------------------------------------------------------- sources


def _read_table(path: Path) -> Dataset:
    """A CSV or JSON-lines metadata file as a Dataset."""
    if path.suffix == ".csv":
        return Dataset.from_csv(str(path), keep_in_memory=True)
    if path.suffix in (".jsonl", ".json"):
        return Dataset.from_json(str(path), keep_in_memory=True)
    raise ValueError(f"manifest {path} has suffix {path.suffix!r}: use a .csv, .jsonl or .json file")


def _local_table(source: Path, split: str) -> tuple[Dataset, Path]:
    """The rows of a local audiofolder split or manifest, and the folder relative paths start from."""
    if source.is_dir():
        split_dir = source / split
        if not split_dir.is_dir():
            found = sorted(p.name for p in source.iterdir() if p.is_dir())
            raise ValueError(f"audio folder {source} has no {split!r} subfolder (found {found}): "
                             "use train/, validation/ and test/ subfolders or pass an existing split")
        metadata = [split_dir / name for name in METADATA_FILES if (split_dir / name).is_file()]
        if not metadata:
            raise ValueError(f"audio folder split {split_dir} has no metadata file: add one of {list(METADATA_FILES)} "
                             "with a file_name column and caption/captions")
        return _read_table(metadata[0]), split_dir
    table = _read_table(source)
    if "split" in table.column_names:  # one manifest may hold every split
        table = table.filter(lambda row: row == split, input_columns="split")
        if len(table) == 0:
            raise ValueError(f"manifest {source} has no rows with split == {split!r}")
    return table, source.parent


def _find_audio_column(columns, audio_column, source) -> str:
    """The audio column: the one asked for, or the first of the usual names."""
    if audio_column is not None:
        if audio_column not in columns:
            raise ValueError(f"audio column {audio_column!r} is not in {source} (columns: {columns}): "
                             "pass audio_column= with one of them")
        return audio_column
    for name in AUDIO_COLUMN_CANDIDATES:
        if name in columns:
            return name
    raise ValueError(f"no audio column in {source} (columns: {columns}): name it one of {list(AUDIO_COLUMN_CANDIDATES)} "
                     "or pass audio_column=")


def _find_caption_columns(columns, caption_columns, source) -> list[str]:
    """The caption columns: the ones asked for, else `captions`, `caption_1..N` (Clotho) or `caption`."""
    if caption_columns is not None:
        columns_asked = [caption_columns] if isinstance(caption_columns, str) else list(caption_columns)
        missing = [c for c in columns_asked if c not in columns]
        if missing:
            raise ValueError(f"caption columns {missing} are not in {source} (columns: {columns}): "
                             "pass caption_columns= with existing columns")
        return columns_asked
    numbered = sorted((c for c in columns if re.fullmatch(r"caption_?\d+", c)), key=lambda c: int(re.sub(r"\D", "", c)))
    for found in (["captions"] if "captions" in columns else [], numbered, ["caption"] if "caption" in columns else []):
        if found:
            return found
    raise ValueError(f"no caption column in {source} (columns: {columns}): add 'caption', 'captions' or "
                     "'caption_1'..'caption_5', or pass caption_columns=")


def _as_captions(value, separator: str | None = None) -> list[str]:
    """A cell's captions: a list, a JSON list string, or one caption string (split on `separator` when given)."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if separator:  # several captions joined into one string, e.g. CLAPv2/Clotho's `text`
            return [part.strip() for part in text.split(separator) if part.strip()]
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return [text]
        else:
            return [text] if text else []
    if np.isscalar(value):  # e.g. an integer class label used as the text column in zero-shot evaluation
        return [str(value)]
    return [str(v).strip() for v in value if v is not None and str(v).strip()]


def _gather_captions(batch, caption_columns, first_row, source, separator=None) -> list[list[str]]:
    """Each row's captions from the caption columns of a batch; a row without any is an error naming it."""
    captions = []
    for offset, cells in enumerate(zip(*(batch[c] for c in caption_columns))):
        found = [caption for cell in cells for caption in _as_captions(cell, separator)]
        if not found:
            raise ValueError(f"row {first_row + offset} of {source} has no caption in columns {caption_columns}: "
                             "fill them in or drop the row")
        captions.append(found)
    return captions


def _normalise_columns(dataset, audio_column, caption_columns, base_dir: Path | None, source, separator=None):
    """Renames audio to `audio` (paths resolved against base_dir) and gathers captions into a `captions` list."""
    columns = list(dataset.column_names or [])
    if not columns:  # a streamed dataset may not know its columns before reading: trust the names given
        audio_column, caption_columns = audio_column or "audio", caption_columns or ["caption"]
    audio_column = _find_audio_column(columns, audio_column, source) if columns else audio_column
    caption_columns = _find_caption_columns(columns, caption_columns, source) if columns else list(caption_columns)
    if audio_column != "audio" and "audio" in columns:
        dataset = dataset.remove_columns("audio")  # the chosen column replaces it
    if audio_column != "audio":
        dataset = dataset.rename_column(audio_column, "audio")

    if isinstance(dataset, IterableDataset):
        # cast before map: a mapped streaming dataset no longer knows its features
        dataset = dataset.cast_column("audio", Audio(decode=False))
        return dataset.map(lambda batch: {"captions": _gather_captions(batch, caption_columns, 0, source, separator)},
                           batched=True)
    # add_column leaves the (possibly large) audio column untouched instead of rewriting it as map would
    captions, start = [], 0
    for batch in dataset.select_columns(caption_columns).iter(batch_size=1024):
        captions += _gather_captions(batch, caption_columns, start, source, separator)
        start = len(captions)
    if "captions" in dataset.column_names:
        dataset = dataset.remove_columns("captions")
    dataset = dataset.add_column("captions", captions)
    if base_dir is not None:  # local tables hold paths relative to their folder
        paths = [str((base_dir / p).resolve()) if p else None for p in dataset["audio"]]
        dataset = dataset.remove_columns("audio").add_column("audio", paths)
    # Audio(decode=False): rows keep {"bytes", "path"}; decoding happens per batch in the collator, without FFmpeg.
    return dataset.cast_column("audio", Audio(decode=False))


def load_audio_text_dataset(source: str | os.PathLike, split: str = "train", *, config_name: str | None = None,
                            audio_column: str | None = None, caption_columns: str | Sequence[str] | None = None,
                            streaming: bool = False, skip_bad_audio: bool = False, verify_audio: bool = True,
                            group_by: str | None = None, load_kwargs: dict | None = None,
                            caption_separator: str | None = None) -> Dataset | IterableDataset:
    """One split with an undecoded `audio` column and a `captions` list column, from any supported source.

    `source` is "synthetic", a local audiofolder directory, a .csv/.jsonl manifest, or a Hub dataset id.
    `caption_separator` splits caption strings that hold several captions joined (e.g. by "\n").
    """
    load_kwargs = dict(load_kwargs or {})
    if str(source) == "synthetic":
        dataset, base_dir = make_synthetic_split(split, **load_kwargs), None
    elif os.path.isdir(source) or Path(source).suffix in (".csv", ".jsonl", ".json"):
        if not os.path.exists(source):
            raise FileNotFoundError(f"manifest {source} does not exist: check the path")
        dataset, base_dir = _local_table(Path(source), split)
    else:
        dataset = load_dataset(str(source), config_name, split=split, streaming=streaming, **load_kwargs)
        base_dir = None
        column = _find_audio_column(list(dataset.column_names or []), audio_column, source)
        dataset = dataset.cast_column(column, Audio(decode=False))  # before any access, so nothing is decoded
    dataset = _normalise_columns(dataset, audio_column, caption_columns, base_dir, source, caption_separator)
    if group_by is not None:
        dataset = _group_captions(dataset, group_by, source)
    if isinstance(dataset, IterableDataset):
        # streaming: nothing can be checked up front, so unreadable rows are handled as they arrive
        return dataset.filter(lambda audio: _streamed_audio_ok(audio, skip_bad_audio), input_columns="audio")
    return _verify_audio(dataset, split, skip_bad_audio) if verify_audio else dataset


def _streamed_audio_ok(audio, skip_bad_audio) -> bool:
    """Filter for streamed rows: False (skip) or an error for unreadable audio."""
    problem = _audio_problem(audio)
    if problem is None:
        return True
    if not skip_bad_audio:
        raise ValueError(f"streamed audio {_audio_name(audio)} cannot be read ({problem}): pass skip_bad_audio=True")
    logger.warning("skipped streamed audio %s: %s", _audio_name(audio), problem)
    return False


def _group_captions(dataset, group_by, source):
    """Merges rows sharing `group_by` (one caption per row, e.g. AudioCaps) into one row with all captions."""
    if isinstance(dataset, IterableDataset) or group_by not in dataset.column_names:
        raise ValueError(f"group_by={group_by!r} needs a non-streaming dataset with that column ({source})")
    groups: dict = {}
    for index, key in enumerate(dataset[group_by]):
        groups.setdefault(key, []).append(index)
    row_captions = dataset["captions"]
    captions = [[c for index in indices for c in row_captions[index]] for indices in groups.values()]
    rows = [indices[0] for indices in groups.values()]
    return dataset.select(rows).remove_columns("captions").add_column("captions", captions)

"""What an index is built from: the recordings of a folder, a path list or a `datasets.Dataset`, each with a change key."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import datasets

from ..embedding import module_fingerprint

if TYPE_CHECKING:
    from ..loading import RetrievalModel, RetrievalProcessor

logger = logging.getLogger(__name__)

# Extensions libsndfile decodes; anything else in a folder is skipped.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".opus")
# What an index is built from: a folder, a list of audio paths, or a Dataset with an audio column.
AudioSource = str | os.PathLike | list[str | os.PathLike] | datasets.Dataset
# The fields that say whether a recording changed since it was embedded.
KEY_FIELDS = ("name", "size", "mtime_ns", "sha256")


@dataclass
class Source:
    """The recordings to index (dicts with `name` and change-key fields, in order), how to open one, the folder if any."""

    items: list
    open: Callable
    root: Path | None = None


def item_key(item: dict) -> tuple:
    """The identity of a recording's content as indexed: its name with size and mtime_ns (files) or sha256 (bytes)."""
    return tuple(item.get(name) for name in KEY_FIELDS)


def _stat_item(name, path):
    stat = os.stat(path)
    return {"name": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def is_hidden(relative: str | os.PathLike) -> bool:
    """True for hidden files and folders (`.x`, macOS AppleDouble `._x.wav`, the index's own `.atr-index`)."""
    return any(part.startswith(".") for part in Path(relative).parts)


def collect_items(audio: AudioSource, audio_column: str | None = None) -> Source:
    """The `Source` of a folder (recursive, hidden files left out, names relative to it), a list of paths or a Dataset."""
    if isinstance(audio, (str, os.PathLike)) and Path(audio).is_dir():
        root = Path(audio).resolve()
        found = [p for p in root.rglob("*") if not is_hidden(p.relative_to(root))]
        names = sorted(p.relative_to(root).as_posix() for p in found if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        for link in (p for p in found if p.is_symlink() and not p.is_file()):
            if link.is_dir():
                logger.warning("skipped %s: a link to a folder, which is not followed (index that folder itself)", link)
            elif link.suffix.lower() in AUDIO_EXTENSIONS:
                logger.warning("skipped %s: a symlink loop or a link to nothing (%s)", link, os.readlink(link))
        if not names:
            raise ValueError(f"folder {str(audio)!r} has no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        return Source([_stat_item(n, root / n) for n in names], lambda item: str(root / item["name"]), root)
    if isinstance(audio, (list, tuple)):
        missing = [str(p) for p in audio if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of the given audio files do not exist, e.g. {missing[0]!r}: check the paths")
        return Source([_stat_item(str(Path(p).resolve()), p) for p in audio], lambda item: item["name"])
    if isinstance(audio, datasets.Dataset):
        columns = [name for name, feature in audio.features.items() if isinstance(feature, datasets.Audio)]
        column = audio_column or (columns[0] if len(columns) == 1 else None)
        if column not in columns:
            raise ValueError(f"dataset has Audio columns {columns}, not {audio_column!r}: pass audio_column= to pick one")
        # Undecoded rows ({"path", "bytes"}) read one at a time: soundfile decodes them, no FFmpeg/torchcodec, and
        # the bytes of the whole dataset never sit in memory at once.
        rows = audio.select_columns([column]).cast_column(column, datasets.Audio(decode=False))
        items = []
        for i, row in enumerate(rows):
            path, data = row[column]["path"], row[column]["bytes"]
            if data:
                items.append({"name": path or str(i), "row": i, "sha256": hashlib.sha256(data).hexdigest()})
            elif path and Path(path).is_file():
                items.append({**_stat_item(path, path), "row": i})
            else:
                items.append({"name": path or str(i), "row": i})
        return Source(items, lambda item: rows[item["row"]][column])
    raise TypeError(f"audio is a {type(audio).__name__}: pass a folder, a list of file paths or a datasets.Dataset")


def model_fingerprint(model: RetrievalModel, processor: RetrievalProcessor) -> str:
    """Hash of the model's weights and the feature extractor's settings: embeddings are comparable iff it matches."""
    settings = {
        key: value
        for key, value in processor.feature_extractor.to_dict().items()
        if key not in ("auto_map", "processor_class") and not key.startswith("_")
    }
    parts = [module_fingerprint(model), json.dumps(settings, sort_keys=True, default=str)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

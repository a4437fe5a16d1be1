"""Embedding a collection on several processes or nodes through Accelerate: per-rank shards, one merged manifest.

    accelerate launch -m atr.search build DIR --index-dir OUT --model M      # every rank embeds its part of DIR

`build_distributed` splits the recordings with `PartialState.split_between_processes` (contiguous parts, in file
order). Each rank brings its own index up to date in `OUT/ranks/rank-R-of-N/` with `AudioIndex.update`, so a rank
that was killed resumes from its last finished shard and a finished rank embeds nothing again. Once every rank is
done, rank 0 writes `OUT/manifest.json` naming the ranks' shards, so `AudioIndex.load(OUT)` sees one index equal to
a 1-process build. The split depends on the file list and the process count: re-run with the same ones to resume.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from .index import AudioIndex, _check_same_model
from .manifest import FORMAT_VERSION, LOCK, _read_manifest, _write_manifest
from .sources import Source, collect_items, item_key

if TYPE_CHECKING:
    from accelerate import PartialState

    from ..loading import RetrievalModel, RetrievalProcessor

logger = logging.getLogger(__name__)
RANKS = "ranks"


def rank_dir(out_dir: str | os.PathLike, rank: int, world: int) -> Path:
    """The folder of one rank's own index: OUT/ranks/rank-R-of-N."""
    return Path(out_dir) / RANKS / f"rank-{rank}-of-{world}"


def build_distributed(model: RetrievalModel, processor: RetrievalProcessor, audio: str | os.PathLike, out_dir: str | os.PathLike,
                      batch_size: int = 8, shard_size: int = 1024, overwrite: bool = False, skip_bad_audio: bool = False,
                      progress: bool = True, state: PartialState | None = None) -> tuple[AudioIndex, dict]:
    """Embed a folder on every process of the launch (each its part), then rank 0 merges: the index on all ranks.

    Returns `(index, report)`: the merged `AudioIndex` and this rank's `last_update` (what it embedded).
    """
    from accelerate import PartialState

    state = state or PartialState()
    source = collect_items(audio)
    if source.root is None:
        raise ValueError("build_distributed indexes a folder: pass the folder of recordings, not a list or a Dataset")
    out_dir = Path(out_dir)
    mine_dir = rank_dir(out_dir, state.process_index, state.num_processes)
    with state.split_between_processes(source.items) as mine:
        paths = [str(source.root / item["name"]) for item in mine]
    if paths:
        part = AudioIndex.update(model, processor, paths, mine_dir, batch_size=batch_size, shard_size=shard_size,
                                 overwrite=overwrite, skip_bad_audio=skip_bad_audio, progress=progress)
        report = part.last_update
    else:  # more processes than recordings
        report = {"embedded": [], "kept": 0, "removed": [], "skipped": []}
    state.wait_for_everyone()
    if state.is_main_process:
        merge_rank_indexes(out_dir, source, state.num_processes, overwrite)
    state.wait_for_everyone()
    return AudioIndex.load(out_dir, model, processor), report


def merge_rank_indexes(out_dir: str | os.PathLike, source: Source, world: int, overwrite: bool = False) -> None:
    """Write OUT/manifest.json over the ranks' finished indexes, items in the source's order; drop other launches' ranks."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir / LOCK)):
        by_path, skipped, shards, parts = {}, {}, {}, []
        for rank in range(world):
            folder = rank_dir(out_dir, rank, world)
            manifest = _read_manifest(folder) if folder.exists() else None
            if manifest is None:
                continue
            if not manifest["complete"]:
                raise ValueError(f"rank index {str(folder)!r} is incomplete: run the same launch again to finish it")
            parts.append(manifest)
            prefix = folder.relative_to(out_dir).as_posix()
            shards.update({f"{prefix}/{name}": entry for name, entry in manifest["shards"].items()})
            for item in manifest["items"]:
                by_path[item["name"]] = {**item, "shard": f"{prefix}/{item['shard']}"}
            for item in manifest.get("skipped", []):
                skipped[item["name"]] = item
        if len({m["fingerprint"] for m in parts}) > 1:
            raise ValueError(f"the rank indexes under {str(out_dir / RANKS)!r} were built with different models: rebuild with overwrite")
        items, bad = [], []
        for item in source.items:
            path = str((source.root / item["name"]).resolve())  # how a rank's index names it (a list of paths)
            found = by_path.get(path)
            if found is not None and item_key({**found, "name": item["name"]}) == item_key(item):
                items.append({**found, "name": item["name"]})
            elif path in skipped:
                bad.append({**skipped[path], "name": item["name"]})
            else:
                raise ValueError(f"recording {item['name']!r} is in no finished rank index: run the same launch again")
        previous = None if overwrite else _read_manifest(out_dir)
        if previous is not None and parts:
            _check_same_model(previous, parts[0]["fingerprint"], parts[0]["model"], out_dir)
        first = parts[0] if parts else {"model": "", "fingerprint": "", "sampling_rate": None, "dim": None, "shard_size": None}
        header = {
            "format_version": FORMAT_VERSION, "model": first["model"], "fingerprint": first["fingerprint"],
            "sampling_rate": first["sampling_rate"], "dim": first["dim"], "shard_size": first["shard_size"],
            "root": os.path.relpath(source.root, out_dir.resolve()),
        }
        _write_manifest(out_dir, header, items, bad, shards, previous)
        AudioIndex._remove_unused(out_dir)
        for folder in (out_dir / RANKS).glob("rank-*-of-*"):
            if not folder.name.endswith(f"-of-{world}"):
                shutil.rmtree(folder)  # a launch with another process count: its shards are no longer named

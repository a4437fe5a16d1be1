"""The index folder's manifest: its format, atomic writes, and reading and writing `manifest.json`."""

import json
import os
import re
import tempfile
import uuid
from pathlib import Path

from safetensors.numpy import save_file

MANIFEST = "manifest.json"
LOCK = ".lock"
FORMAT_VERSION = 3  # 3: each shard stores its rows' recording ids ("row_ids"); the fingerprint ignores the model's path
# A shard the manifest may name: one in the index folder, or in a rank's folder of a multi-process build.
SHARD_NAME = re.compile(r"(ranks/rank-\d+-of-\d+/)?shard-[0-9a-f]+\.safetensors")
# The manifest's fields and the types they must have (None: may be null).
HEADER_TYPES = {"model": (str,), "fingerprint": (str,), "complete": (bool,), "revision": (str,), "items": (list,),
                "shards": (dict,), "skipped": (list,), "root": (str, type(None)), "dim": (int, type(None)),
                "shard_size": (int, type(None)), "sampling_rate": (int, type(None))}


class BadIndexError(ValueError):
    """An index folder that cannot be trusted or read as it is: its message is one line that names the fix."""


def _bad(out_dir, what):
    return BadIndexError(f"index manifest {str(Path(out_dir) / MANIFEST)!r} {what}: rebuild the index with --overwrite "
                         "(overwrite=True)")


def new_row_id() -> int:
    """A random 63-bit id for one embedded recording, stored in its manifest item and in its shard row."""
    return uuid.uuid4().int >> 65


def safe_name(name: str) -> bool:
    """True if a recording name is a path inside its folder: relative, no `..`, no hidden part (what a build writes)."""
    return bool(name) and not name.startswith("/") and all(
        part not in ("", ".", "..") and not part.startswith(".") for part in name.split("/"))


def _atomic_write(path, data=None, tensors=None):
    """Write under a unique temporary name in the target folder, then rename: readers and rival writers never see half a file."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            if data is not None:
                f.write(data)
        if tensors is not None:
            save_file(tensors, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_manifest(out_dir, header, items, skipped, shards, previous, complete=True):
    """Write OUT/manifest.json: `header`, the items, the shards they use, and a revision that changes only with them."""
    unchanged = previous is not None and previous["items"] == items and previous.get("skipped", []) == skipped
    used = {item["shard"] for item in items}
    _atomic_write(Path(out_dir) / MANIFEST, json.dumps({
        **header, "complete": complete, "revision": previous["revision"] if unchanged else uuid.uuid4().hex, "items": items,
        "skipped": skipped, "shards": {name: entry for name, entry in shards.items() if name in used},
    }, indent=1).encode())


def _read_manifest(out_dir):
    """The parsed manifest of an index folder, None if it has none; BadIndexError naming it if it is damaged."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, OSError) as error:  # truncated, empty, not UTF-8, unreadable
        raise _bad(out_dir, f"is not readable JSON ({type(error).__name__}: {str(error).splitlines()[0][:80]})") from None
    if not isinstance(manifest, dict):
        raise _bad(out_dir, f"holds a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _bad(out_dir, f"has format {manifest.get('format_version')!r}, this atr reads {FORMAT_VERSION}")
    _check_manifest(out_dir, manifest)
    return manifest


def _check_manifest(out_dir, manifest):
    """Every field present with its type; every item names a listed shard, a row inside it and a safe path, once."""
    for key, types in HEADER_TYPES.items():
        if not isinstance(manifest.get(key), types) or (key not in manifest):
            found = "missing" if key not in manifest else type(manifest[key]).__name__
            raise _bad(out_dir, f"has {key!r} {found}, expected {' or '.join(t.__name__ for t in types)}")
    for name, entry in manifest["shards"].items():
        if not SHARD_NAME.fullmatch(name) or not isinstance(entry, dict) or not all(
                isinstance(entry.get(k), int) and entry[k] >= 0 for k in ("rows", "chunks")):
            raise _bad(out_dir, f"lists a malformed shard entry {name!r}")
    rooted, taken = manifest["root"] is not None, set()
    for position, item in enumerate(manifest["items"]):
        fields = item if isinstance(item, dict) else {}
        name, shard, row = fields.get("name"), fields.get("shard"), fields.get("shard_row")
        if not (isinstance(name, str) and isinstance(fields.get("row_id"), int) and shard in manifest["shards"]
                and isinstance(row, int) and 0 <= row < manifest["shards"][shard]["rows"] and (shard, row) not in taken):
            raise _bad(out_dir, f"has a malformed item {position} ({str(item)[:80]}): it needs a name, a row_id and a "
                       "free row of a listed shard")
        if rooted and not safe_name(name):
            raise _bad(out_dir, f"names recording {name!r}, which is outside the indexed folder or hidden")
        taken.add((shard, row))

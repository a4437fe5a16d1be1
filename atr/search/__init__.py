"""Search a collection of recordings: embed it once (incrementally, on disk), rank it by text or by example, listen to hits.

`AudioIndex` (index.py) builds, updates, loads and searches the index; backends.py has exact and FAISS search;
cli.py is `atr-search` (also `python -m atr.search`) with its `build`, `serve` and `space` words; app.py the web page.
"""

from .backends import BACKENDS, FAISS_KINDS, build_faiss_index, exact_search, faiss_search
from .cli import main
from .index import AudioIndex, SearchResult, verify_shard
from .sources import AUDIO_EXTENSIONS, model_fingerprint

__all__ = [
    "AUDIO_EXTENSIONS", "AudioIndex", "BACKENDS", "FAISS_KINDS", "SearchResult", "build_faiss_index", "exact_search",
    "faiss_search", "main", "model_fingerprint", "verify_shard",
]

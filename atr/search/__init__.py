"""Search a collection of recordings: embed it once (incrementally, on disk), rank it by text or by example, listen to hits.

`AudioIndex` (index.py) builds, updates, loads and searches the index; backends.py has exact and FAISS search;
cli.py is `atr-search` (also `python -m atr.search`) with its `build`, `serve`, `space` and `export` words; app.py the
web page. Past one machine: distributed.py (the build under `accelerate launch`), ondisk.py (IVF-PQ with lists on
disk), vectordb.py (export to Qdrant and search it there).
"""

from .backends import BACKENDS, FAISS_KINDS, build_faiss_index, exact_search, faiss_search
from .cli import main
from .distributed import build_distributed
from .index import AudioIndex, SearchResult, verify_shard
from .manifest import BadIndexError
from .ondisk import OnDiskIndex, VectorFile, build_ondisk_index
from .sources import AUDIO_EXTENSIONS, model_fingerprint
from .vectordb import QdrantIndex, export_index

__all__ = [
    "AUDIO_EXTENSIONS", "AudioIndex", "BACKENDS", "BadIndexError", "FAISS_KINDS", "OnDiskIndex", "QdrantIndex", "SearchResult", "VectorFile",
    "build_distributed", "build_faiss_index", "build_ondisk_index", "exact_search", "export_index", "faiss_search", "main",
    "model_fingerprint", "verify_shard",
]

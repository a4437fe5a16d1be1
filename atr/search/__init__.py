"""Search a collection of recordings: embed it once (incrementally, on disk), rank it by text or by example, listen to hits.

`AudioIndex` (index.py) builds, updates, loads and searches the index; backends.py has the `SearchBackend` interface,
its registry `BACKENDS` and the exact and FAISS backends; cli.py is `atr-search` (also `python -m atr.search`) with
its `build`, `serve`, `space` and `export` words; app.py the web page. Past one machine: distributed.py (the build
under `accelerate launch`), ondisk.py (IVF-PQ with lists or codes apart from the vectors on disk: the `ondisk`
backend), vectordb.py (export to Qdrant and search it there; the `qdrant` backend). Importing this package registers
every backend.
"""

from .backends import (BACKENDS, FAISS_KINDS, ExactBackend, FaissBackend, SearchBackend, build_faiss_index, exact_search, faiss_search,
                       get_backend, register_backend)
from .cli import main
from .distributed import build_distributed
from .index import AudioIndex, verify_shard
from .manifest import BadIndexError
from .ondisk import OnDiskBackend, OnDiskIndex, VectorFile, build_ondisk_index
from .results import SearchResult
from .sources import AUDIO_EXTENSIONS, model_fingerprint
from .vectordb import QdrantBackend, QdrantIndex, export_index

__all__ = [
    "AUDIO_EXTENSIONS", "AudioIndex", "BACKENDS", "BadIndexError", "ExactBackend", "FAISS_KINDS", "FaissBackend", "OnDiskBackend",
    "OnDiskIndex", "QdrantBackend", "QdrantIndex", "SearchBackend", "SearchResult", "VectorFile", "build_distributed",
    "build_faiss_index", "build_ondisk_index", "exact_search", "export_index", "faiss_search", "get_backend", "main",
    "model_fingerprint", "register_backend", "verify_shard",
]

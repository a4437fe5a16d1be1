"""Search past RAM: an IVF-PQ index whose inverted lists live on disk, re-ranked with float16 vectors read on demand.

`build_ondisk_index(VectorFile(path, dim), out_dir)` trains FAISS IVF-PQ on a sample, adds the vectors block by block
(each block written as its own file, so an interrupted build resumes), then merges the blocks into one on-disk
inverted-list file with `faiss.contrib.ondisk.merge_ondisk`. `OnDiskIndex(out_dir).search(queries, k)` scans
`nprobe` lists through the memory-mapped list file and re-scores the top `k * k_factor` candidates exactly with the
float16 rows, read with `os.pread` (they enter the page cache, never the process's own memory).

`fast_scan=True` builds IVF-PQ with 4-bit codes scanned by SIMD (`faiss.IndexIVFPQFastScan`) instead: the lists are
held in RAM (pq_m / 2 + 8 bytes a vector: 0.4 GB at 10M x PQ64), scanned about 13x faster at the same recall after
the exact re-rank (BENCHMARKS.md); the float16 rows stay on disk. FAISS cannot merge fast-scan indexes, so that build
adds the blocks to one index and rewrites it after each block: an interrupted build resumes after the last one.

`OnDiskBackend` is the `ondisk` search backend (`atr-search --backend ondisk`): the fast-scan index in one folder.
"""

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from .backends import Array, SearchBackend, _ids, _rows_to_ids, _sort_candidates, register_backend, require_faiss

logger = logging.getLogger(__name__)

SETTINGS = "ondisk.json"
TRAINED = "trained.index"
INDEX = "ivfpq.index"
LISTS = "ivfpq.ivfdata"
PARTIAL = "partial.index"
VECTORS = "vectors.bin"  # the backend's copy of the vectors, when it was given an array
IDS = "ids.npy"  # the backend's ids by row, when they are not the row numbers


class VectorFile:
    """Row-major vectors (float16 or float32) in a raw file: read by block or by row, never mapped or loaded whole."""

    def __init__(self, path: str | os.PathLike, dim: int, dtype: npt.DTypeLike = "float16"):
        self.path, self.dim, self.dtype = Path(path), int(dim), np.dtype(dtype)
        if not self.path.is_file():
            raise FileNotFoundError(f"vector file {str(self.path)!r} does not exist: write it with VectorFile.write")
        self.row_bytes = self.dim * self.dtype.itemsize
        size = self.path.stat().st_size
        if size % self.row_bytes:
            raise ValueError(
                f"vector file {str(self.path)!r} has {size} bytes, not a whole number of {self.dim}-d {self.dtype} rows: "
                "check dim and dtype"
            )
        self.rows = size // self.row_bytes
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self):
        return self.rows

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    @classmethod
    def write(cls, path: str | os.PathLike, blocks: Iterable[npt.ArrayLike], dim: int, dtype: npt.DTypeLike = "float16") -> "VectorFile":
        """Write an iterable of (rows, dim) blocks to a new file (refuses to overwrite one); returns the VectorFile."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"vector file {str(path)!r} exists: delete it or write another path")
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as f:
                for block in blocks:
                    block = np.asarray(block)
                    if block.ndim != 2 or block.shape[1] != dim:
                        raise ValueError(f"a block has shape {block.shape}, expected (rows, {dim})")
                    f.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return cls(path, dim, dtype)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32."""
        stop = min(stop, self.rows)
        data = os.pread(self._fd, (stop - start) * self.row_bytes, start * self.row_bytes)
        return np.frombuffer(data, self.dtype).reshape(-1, self.dim).astype(np.float32)

    def gather(self, ids: npt.ArrayLike) -> np.ndarray:
        """The rows `ids` (any order, repeats allowed) as float32 (len(ids), dim), one pread per run of adjacent rows."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        unique, inverse = np.unique(ids, return_inverse=True)
        if len(unique) and (unique[0] < 0 or unique[-1] >= self.rows):
            raise IndexError(f"row ids {unique[0]}..{unique[-1]} are outside the {self.rows} rows of {str(self.path)!r}")
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        parts = [os.pread(self._fd, len(run) * self.row_bytes, int(run[0]) * self.row_bytes) for run in np.split(unique, breaks)]
        rows = np.frombuffer(b"".join(parts), self.dtype).reshape(-1, self.dim)
        return rows[inverse].astype(np.float32)


def _sample_rows(vectors, count, seed, block_rows):
    """`count` rows drawn without replacement, read block by block in file order (float32)."""
    chosen = np.sort(np.random.default_rng(seed).choice(len(vectors), size=min(count, len(vectors)), replace=False))
    out = []
    for start in range(0, len(vectors), block_rows):
        wanted = chosen[(chosen >= start) & (chosen < start + block_rows)]
        if len(wanted):
            out.append(vectors.read(start, start + block_rows)[wanted - start])
    return np.concatenate(out)


def build_ondisk_index(vectors: VectorFile, out_dir: str | os.PathLike, nlist: int = 4096, pq_m: int = 64, train_rows: int = 160_000,
                       block_rows: int = 500_000, niter: int = 10, seed: int = 0, progress: Callable[[str], object] = print,
                       fast_scan: bool = False) -> "OnDiskIndex":
    """IVF-PQ (inner product) over a `VectorFile` with inverted lists on disk; resumes per block; returns an OnDiskIndex.

    Memory: one float32 block (`block_rows` x dim) and that block's codes at a time, plus the training sample (with
    `fast_scan`, every code so far: pq_m / 2 + 8 bytes a vector).
    """
    faiss = require_faiss()
    from faiss.contrib.ondisk import merge_ondisk

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"vectors": os.path.relpath(vectors.path.resolve(), out_dir.resolve()), "dim": vectors.dim,
                "dtype": str(vectors.dtype), "rows": len(vectors), "nlist": nlist, "pq_m": pq_m, "block_rows": block_rows,
                "fast_scan": bool(fast_scan)}
    if (out_dir / SETTINGS).exists():
        previous = {"fast_scan": False, **json.loads((out_dir / SETTINGS).read_text())}  # written before fast_scan existed
        if {k: previous.get(k) for k in settings} != settings:
            raise ValueError(f"{str(out_dir)!r} holds an on-disk index built with {previous}, not {settings}: use another out_dir")
        if (out_dir / INDEX).exists():
            return OnDiskIndex(out_dir)
    if vectors.dim % pq_m:
        raise ValueError(f"vectors have dimension {vectors.dim}, not a multiple of pq_m={pq_m}: pick a pq_m that divides it")
    (out_dir / SETTINGS).write_text(json.dumps(settings, indent=1))
    if not (out_dir / TRAINED).exists():
        kind = faiss.IndexIVFPQFastScan if fast_scan else faiss.IndexIVFPQ
        index = kind(faiss.IndexFlatIP(vectors.dim), vectors.dim, nlist, pq_m, 4 if fast_scan else 8, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = niter
        progress(f"training IVF{nlist},PQ{pq_m}{'x4fs' if fast_scan else ''} on {min(train_rows, len(vectors))} rows")
        index.train(_sample_rows(vectors, train_rows, seed, block_rows))
        _write_index(faiss, index, out_dir / TRAINED)
    if fast_scan:
        index = faiss.read_index(str(out_dir / (PARTIAL if (out_dir / PARTIAL).exists() else TRAINED)))
        for start in range(index.ntotal, len(vectors), block_rows):  # rows go in file order: ntotal says where to resume
            block = vectors.read(start, start + block_rows)
            index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
            _write_index(faiss, index, out_dir / PARTIAL)
            progress(f"added rows {start}..{start + len(block)} of {len(vectors)}")
        if not (out_dir / PARTIAL).exists():  # no rows to add
            _write_index(faiss, index, out_dir / PARTIAL)
        os.replace(out_dir / PARTIAL, out_dir / INDEX)  # the last block's write is the finished index: no second copy
        return OnDiskIndex(out_dir)
    block_files = []
    for number, start in enumerate(range(0, len(vectors), block_rows)):
        path = out_dir / f"block-{number:05d}.index"
        block_files.append(str(path))
        if path.exists():  # done before an interruption
            continue
        index = faiss.read_index(str(out_dir / TRAINED))
        block = vectors.read(start, start + block_rows)
        index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
        _write_index(faiss, index, path)
        progress(f"added rows {start}..{start + len(block)} of {len(vectors)}")
        del index, block
    index = faiss.read_index(str(out_dir / TRAINED))
    (out_dir / LISTS).unlink(missing_ok=True)  # a merge interrupted half-way starts again
    merge_ondisk(index, block_files, str(out_dir / LISTS))
    _write_index(faiss, index, out_dir / INDEX)
    for path in block_files:
        Path(path).unlink()
    return OnDiskIndex(out_dir)


def _write_index(faiss, index, path):
    """faiss.write_index under a temporary name, then rename: a killed build never leaves half an index file."""
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)


class OnDiskIndex:
    """A built on-disk IVF-PQ index and its float16 vectors: top-k search with exact re-ranking, in bounded memory."""

    def __init__(self, out_dir: str | os.PathLike):
        faiss = require_faiss()
        self.out_dir = Path(out_dir)
        if not (self.out_dir / INDEX).exists():
            raise FileNotFoundError(f"no on-disk index at {str(self.out_dir)!r} ({INDEX} missing): run build_ondisk_index")
        self.settings = json.loads((self.out_dir / SETTINGS).read_text())
        # the list file is looked up next to the index file, not where it was built: a moved folder still opens;
        # fast-scan lists live in the index file itself and are read into RAM
        flags = 0 if self.settings.get("fast_scan") else faiss.IO_FLAG_ONDISK_SAME_DIR
        self.index = faiss.read_index(str(self.out_dir / INDEX), flags)
        self.vectors = VectorFile(self.out_dir / self.settings["vectors"], self.settings["dim"], self.settings["dtype"])

    def __len__(self):
        return self.index.ntotal

    def search(self, queries: Array, k: int = 10, nprobe: int = 32, k_factor: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, indices) (Q, k): `nprobe` lists scanned by PQ, the top k*k_factor re-scored exactly, best first."""
        queries = torch.as_tensor(queries, dtype=torch.float32).reshape(-1, self.index.d).contiguous()
        self.index.nprobe = nprobe
        wanted = min(len(self), k * k_factor)
        _, ids = self.index.search(queries.numpy(), wanted)
        ids = torch.from_numpy(ids).long()
        missing = ids < 0  # faiss pads with -1 when the probed lists hold fewer than asked
        candidates = torch.from_numpy(self.vectors.gather(ids.clamp(min=0).numpy())).view(*ids.shape, -1)
        scores = torch.bmm(candidates, queries[:, :, None]).squeeze(2).masked_fill(missing, float("-inf"))
        return _sort_candidates(scores, ids.masked_fill(missing, torch.iinfo(torch.long).max), min(k, wanted))


@register_backend("ondisk")
class OnDiskBackend(SearchBackend):
    """The `ondisk` backend: an `OnDiskIndex` in one folder (fast-scan codes by default), its vectors on disk."""

    file_name = "ondisk-{revision}"

    def __init__(self, index: OnDiskIndex, ids: torch.Tensor | None = None):
        self.index, self.ids = index, ids

    @classmethod
    def build(cls, embeddings: Array | VectorFile, path: str | Path | None = None, ids: Array | None = None, nlist: int | None = None,
              pq_m: int | None = None, fast_scan: bool = True, dtype: npt.DTypeLike = "float16", **build_kwargs) -> "OnDiskBackend":
        """Build in folder `path` over an (N, D) array (copied there as `dtype`) or a `VectorFile` (used where it is).

        By default `nlist` is about 4 sqrt(N) (at most N / 39 and 4096) and `pq_m` the largest divisor of D up to D / 8;
        `build_kwargs` go to `build_ondisk_index`. An interrupted build resumes.
        """
        if path is None:
            raise ValueError("the ondisk backend lives in a folder: pass path= (atr-search keeps it next to the index)")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if isinstance(embeddings, VectorFile):
            vectors = embeddings
        else:
            array = np.asarray(embeddings, dtype=np.float32)
            written = (path / VECTORS).exists()  # by an interrupted build
            vectors = VectorFile(path / VECTORS, array.shape[1], dtype) if written else VectorFile.write(path / VECTORS, [array], array.shape[1], dtype)
        rows, dim = len(vectors), vectors.dim
        least = 16 if fast_scan else 256  # FAISS trains each sub-quantiser's 2^bits centroids on at least as many rows
        if rows < least:
            raise ValueError(f"the ondisk backend needs at least {least} vectors to train its product quantiser, got {rows}: "
                             "use the exact backend for a collection this small")
        nlist = nlist or max(1, min(4096, int(4 * rows**0.5), rows // 39))
        pq_m = pq_m or next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)
        if ids is not None:
            np.save(path / IDS, _ids(ids, 0, rows).numpy())
        build_ondisk_index(vectors, path, nlist=nlist, pq_m=pq_m, fast_scan=fast_scan, progress=logger.info, **build_kwargs)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path, vectors: Array | None = None, **options) -> "OnDiskBackend":
        """Open a built folder (its vectors file is found from its settings, also after a move)."""
        ids = torch.from_numpy(np.load(Path(path) / IDS)) if (Path(path) / IDS).exists() else None
        return cls(OnDiskIndex(path), ids)

    def search(self, embeddings: Array, k: int = 10, nprobe: int = 32, k_factor: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
        """`OnDiskIndex.search`: `nprobe` lists scanned, the top k*k_factor re-scored exactly with the stored rows."""
        scores, rows = self.index.search(embeddings, k, nprobe=nprobe, k_factor=k_factor)
        return scores, _rows_to_ids(self.ids, rows)

    def __len__(self):
        return len(self.index)

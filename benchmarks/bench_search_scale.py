"""Search past RAM: 10M x 512 synthetic vectors on disk, an on-disk IVF-PQ index, exact re-rank from float16 rows.

Each stage is its own process, so `/usr/bin/time -v` gives each one's peak RSS:

    D=/tmp/atr_10m
    python benchmarks/bench_search_scale.py generate --dir $D --rows 10000000     # vectors.f16 + queries.npy
    python benchmarks/bench_search_scale.py build --dir $D                        # IVF-PQ, lists on disk
    python benchmarks/bench_search_scale.py truth --dir $D                        # exact top-10, blockwise
    python benchmarks/bench_search_scale.py query --dir $D --nprobe 16 32 --k-factors 20 50
    python benchmarks/bench_search_scale.py build --dir $D --fast-scan                                # 4-bit fast scan
    python benchmarks/bench_search_scale.py query --dir $D --fast-scan --nprobe 64 128 --k-factors 20 50
    python benchmarks/bench_search_scale.py roundtrip --dir /tmp/atr_100k --rows 100000   # export to Qdrant + query

Vectors: a mixture of `--clusters` Gaussian clusters around random unit centres; the noise has a decaying spectrum
(std of dimension i proportional to 1/sqrt(i+1), total norm `--spread`), like real embeddings, whose neighbours lie
in a few dozen effective dimensions; then L2-normalised and stored as float16. Queries are fresh draws of the same
mixture (not in the corpus). Recall@10 is against exact search over the stored float16 vectors. Every stage prints
one JSON line with its timings and the load average (`os.getloadavg`) at its start and end.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from atr.search import exact_search
from atr.search.ondisk import OnDiskIndex, VectorFile, build_ondisk_index

DIM = 512


def mixture(rows, centres, spread, seed, block=250_000):
    """Blocks of unit vectors from the cluster mixture (see the module docstring), generated one block at a time."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, centres.shape[1] + 1, dtype=torch.float32).rsqrt()
    scale *= spread / scale.norm()
    for start in range(0, rows, block):
        count = min(block, rows - start)
        which = torch.randint(len(centres), (count,), generator=generator)
        x = torch.randn(count, centres.shape[1], generator=generator).mul_(scale).add_(centres[which])
        yield torch.nn.functional.normalize(x, dim=1).numpy()


def centres_of(args):
    """The cluster centres (random unit vectors, seed 0)."""
    return torch.nn.functional.normalize(torch.randn(args.clusters, DIM, generator=torch.Generator().manual_seed(0)), dim=1)


def load():
    """The 1-minute load average now."""
    return round(os.getloadavg()[0], 2)


def stage_generate(args, folder):
    centres = centres_of(args)
    VectorFile.write(folder / "vectors.f16", mixture(args.rows, centres, args.spread, seed=1), DIM)
    queries = np.concatenate(list(mixture(args.queries, centres, args.spread, seed=2)))
    np.save(folder / "queries.npy", queries)
    return {"rows": args.rows, "bytes": (folder / "vectors.f16").stat().st_size}


def stage_build(args, folder):
    vectors = VectorFile(folder / "vectors.f16", DIM)
    index = build_ondisk_index(vectors, index_dir(args, folder), nlist=args.nlist, pq_m=args.pq_m, train_rows=args.train_rows,
                               block_rows=args.block_rows, progress=lambda line: print(line, f"(load {load()})", flush=True),
                               fast_scan=args.fast_scan)
    sizes = {p.name: p.stat().st_size for p in index_dir(args, folder).iterdir()}
    return {"rows": len(index), "nlist": args.nlist, "pq_m": args.pq_m, "fast_scan": args.fast_scan, "files": sizes}


def index_dir(args, folder):
    """Where the build stage writes the index and the query stage reads it: one folder per kind."""
    return folder / ("index_fastscan" if args.fast_scan else "index")


def stage_truth(args, folder):
    vectors = VectorFile(folder / "vectors.f16", DIM)
    queries = torch.from_numpy(np.load(folder / "queries.npy"))
    best_scores = best_ids = None
    for start in range(0, len(vectors), args.block_rows):
        scores, ids = exact_search(queries, vectors.read(start, start + args.block_rows), args.k)
        ids += start
        if best_scores is not None:
            scores, ids = torch.cat([best_scores, scores], 1), torch.cat([best_ids, ids], 1)
            order = scores.argsort(dim=1, descending=True, stable=True)[:, : args.k]
            scores, ids = scores.gather(1, order), ids.gather(1, order)
        best_scores, best_ids = scores, ids
    np.save(folder / "truth.npy", best_ids.numpy())
    return {"queries": len(queries)}


def stage_query(args, folder):
    index = OnDiskIndex(index_dir(args, folder))
    queries = torch.from_numpy(np.load(folder / "queries.npy"))
    truth = np.load(folder / "truth.npy")
    index.search(queries[:1], args.k)  # warm-up: maps the index
    rows = []
    for nprobe in args.nprobe:
        for k_factor in args.k_factors:
            latencies, cpu, found = [], [], []
            load_before = load()
            for query in queries:
                start, start_cpu = time.perf_counter(), time.process_time()
                _, ids = index.search(query[None], args.k, nprobe=nprobe, k_factor=k_factor)
                latencies.append((time.perf_counter() - start) * 1e3)
                cpu.append((time.process_time() - start_cpu) * 1e3)  # without the time spent waiting for a core
                found.append(ids[0].numpy())
            recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, truth)])
            row = {"nprobe": nprobe, "k_factor": k_factor, "p50_ms": round(float(np.median(latencies)), 2),
                   "p99_ms": round(float(np.percentile(latencies, 99)), 2), "cpu_p50_ms": round(float(np.median(cpu)), 2),
                   "recall_at_10": round(float(recall), 4),
                   "load_before": load_before, "load_after": load()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {"rows": rows}


def stage_roundtrip(args, folder):
    """`AudioIndex.export` of `--rows` synthetic recordings (one chunk each) to Qdrant local mode, then top-10 queries."""
    from atr.search import AudioIndex
    from atr.search.vectordb import QdrantIndex

    centres = centres_of(args)
    vectors = torch.from_numpy(np.concatenate(list(mixture(args.rows, centres, args.spread, seed=1))))
    queries = torch.from_numpy(np.concatenate(list(mixture(args.queries, centres, args.spread, seed=2))))
    manifest = {"items": [{"name": f"rec-{i:07d}.wav"} for i in range(len(vectors))], "root": None, "fingerprint": "synthetic",
                "model": "synthetic"}
    spans = np.tile(np.array([[[0.0, 10.0]]], np.float32), (len(vectors), 1, 1))
    index = AudioIndex(folder, manifest, {"embeddings": vectors, "chunk_embeddings": vectors.half(),
                                          "chunk_offsets": torch.arange(len(vectors) + 1), "chunk_spans": spans})
    start = time.perf_counter()
    counts = index.export(folder / "qdrant", overwrite=True)
    export_s = time.perf_counter() - start
    store = QdrantIndex(folder / "qdrant")
    latencies, same = [], []
    for query in queries:
        start = time.perf_counter()
        hits = store.search_by_embedding(query, args.k)[0]
        latencies.append((time.perf_counter() - start) * 1e3)
        same.append([h.index for h in hits] == [h.index for h in index.search_by_embedding(query, args.k)[0]])
    return {**counts, "export_s": round(export_s, 1), "query_p50_ms": round(float(np.median(latencies)), 2),
            "query_p99_ms": round(float(np.percentile(latencies, 99)), 2), "same_top10_as_exact": float(np.mean(same))}


def main():
    """Run one stage and print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["generate", "build", "truth", "query", "roundtrip"])
    parser.add_argument("--dir", required=True, help="working folder (not in the repo): vectors, index, truth")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--spread", type=float, default=0.8, help="norm of the within-cluster noise (centres have norm 1)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--pq-m", type=int, default=64)
    parser.add_argument("--train-rows", type=int, default=160_000)
    parser.add_argument("--block-rows", type=int, default=500_000)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--k-factors", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fast-scan", action="store_true", help="build/query the 4-bit fast-scan variant (lists in RAM)")
    args = parser.parse_args()
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    load_start, start = load(), time.perf_counter()
    result = globals()[f"stage_{args.stage}"](args, folder)
    meta = {"stage": args.stage, "seconds": round(time.perf_counter() - start, 1), "load_start": load_start, "load_end": load(),
            "threads": args.threads, "faiss": faiss.__version__, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps({**meta, **result}), flush=True)


if __name__ == "__main__":
    main()

"""Top-10 search latency and recall over N random unit vectors: exact (torch), FAISS flat, pq (+ exact re-rank), hnsw.

    python benchmarks/bench_search.py --sizes 10000 100000 1000000 --threads 2

Queries are independent random unit vectors, searched one at a time (the latency a user waits for); recall@10 is
measured against exact search. Prints a markdown table and writes the rows as JSON (--out).
"""

import argparse
import json
import platform
import time

import numpy as np
import torch

from atr.search import build_faiss_index, exact_search, faiss_search


def random_unit(rows, dim, seed, block=100_000):
    """Random unit vectors (rows, dim) float32, generated in place block by block (one copy in memory)."""
    out = torch.empty(rows, dim)
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, rows, block):
        chunk = out[start : start + block]
        chunk.normal_(generator=generator)
        chunk.div_(chunk.norm(dim=1, keepdim=True))
    return out


def time_queries(search, queries):
    """Per-query latencies in ms (one warm-up query first) and the concatenated result indices."""
    search(queries[:1])
    latencies, found = [], []
    for query in queries:
        start = time.perf_counter()
        _, indices = search(query[None])
        latencies.append((time.perf_counter() - start) * 1e3)
        found.append(indices)
    return np.array(latencies), torch.cat(found)


def recall_at_k(found, truth):
    """Mean fraction of the true top-k found."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist())]))


def main():
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--slow-queries", type=int, default=50, help="queries timed for the full-scan methods")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--k-factors", type=int, nargs="+", default=[100, 300, 500, 1000], help="pq re-rank depths")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--hnsw-max-size", type=int, default=10_000, help="hnsw is built only up to this size (slow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results_search.json")
    args = parser.parse_args()

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rows = []

    def report(size, method, param, build_s, latencies, recall):
        row = dict(size=size, method=method, param=param, build_s=round(build_s, 1),
                   p50_ms=round(float(np.median(latencies)), 2), p95_ms=round(float(np.percentile(latencies, 95)), 2),
                   recall_at_10=round(recall, 3), queries=len(latencies))
        rows.append(row)
        print("| {size:,} | {method} | {param} | {build_s} | {p50_ms} | {p95_ms} | {recall_at_10} |".format(**row), flush=True)

    print("| N | method | parameter | build s | p50 ms | p95 ms | recall@10 |\n|---|---|---|---|---|---|---|", flush=True)
    for size in args.sizes:
        corpus = random_unit(size, args.dim, seed=0)
        queries = random_unit(args.queries, args.dim, seed=1)
        _, truth = exact_search(queries, corpus, args.k)
        slow = queries[: args.slow_queries]

        latencies, found = time_queries(lambda q: exact_search(q, corpus, args.k), slow)
        report(size, "exact (torch, blocked)", "-", 0.0, latencies, recall_at_k(found, truth[: len(slow)]))

        start = time.perf_counter()
        flat = build_faiss_index(corpus.numpy(), "flat")
        build_s = time.perf_counter() - start
        latencies, found = time_queries(lambda q: faiss_search(flat, q, args.k), slow)
        report(size, "faiss flat", "-", build_s, latencies, recall_at_k(found, truth[: len(slow)]))
        del flat

        start = time.perf_counter()
        pq = build_faiss_index(corpus.numpy(), "pq")
        build_s = time.perf_counter() - start
        for k_factor in args.k_factors:
            latencies, found = time_queries(lambda q: faiss_search(pq, q, args.k, corpus=corpus, k_factor=k_factor), queries)
            report(size, "faiss pq + exact re-rank", f"k_factor={k_factor}", build_s, latencies, recall_at_k(found, truth))
        del pq

        if size <= args.hnsw_max_size:
            start = time.perf_counter()
            hnsw = build_faiss_index(corpus.numpy(), "hnsw")
            build_s = time.perf_counter() - start
            for ef in args.ef_search:
                latencies, found = time_queries(lambda q: faiss_search(hnsw, q, args.k, ef_search=ef), queries)
                report(size, "faiss hnsw (M=32, efC=80)", f"ef_search={ef}", build_s, latencies, recall_at_k(found, truth))
            del hnsw
        del corpus

    meta = dict(machine=platform.processor() or platform.machine(), threads=args.threads, torch=torch.__version__,
                faiss=faiss.__version__, date=time.strftime("%Y-%m-%d"), dim=args.dim, k=args.k)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()

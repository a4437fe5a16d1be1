"""Time and peak memory of atr.metrics on an N x N random-embedding retrieval problem (default 100k x 100k)."""

import argparse
import platform
import resource
import time

import torch

from atr.metrics import auto_block_size, retrieval_metrics


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak since the last reset), in MiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def reset_peak_rss():
    """Restart the VmHWM peak from the current RSS, so the peak covers only what follows (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def main():
    """Embed N random unit queries and N candidates (query i's relevant item is candidate i) and time the metrics."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num", type=int, default=100_000, help="queries and candidates (N)")
    parser.add_argument("--dim", type=int, default=512, help="embedding size (the model's projection_dim)")
    parser.add_argument("--block_size", type=int, default=None, help="queries per block (default: auto, 64 MiB tile)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    candidates = torch.nn.functional.normalize(torch.randn(args.num, args.dim, generator=generator), dim=-1)
    # Queries are noisy copies of their candidate so that the ranks spread over the whole range.
    queries = torch.nn.functional.normalize(candidates + 0.5 * torch.randn(args.num, args.dim, generator=generator), dim=-1)
    relevant = torch.arange(args.num)[:, None].tolist()
    reset_peak_rss()
    rss_inputs = status_mib("VmRSS")
    block_size = args.block_size or auto_block_size(args.num)
    start = time.perf_counter()
    results = retrieval_metrics(queries, candidates, relevant, block_size=block_size)
    seconds = time.perf_counter() - start
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"problem: {args.num} queries x {args.num} candidates, dim {args.dim}, block_size {block_size}")
    print("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in results.items() if k != "per_query"))
    print(f"time: {seconds:.1f} s")
    rss_peak = status_mib("VmHWM")
    print(f"RSS before the metrics call (inputs loaded): {rss_inputs:.0f} MiB; peak during it: {rss_peak:.0f} MiB "
          f"(+{rss_peak - rss_inputs:.0f} MiB); peak of the whole process: {peak_rss_mib():.0f} MiB")
    print(f"a full N x N float32 similarity matrix would need {4 * args.num**2 / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()

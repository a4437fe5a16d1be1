"""Run a command and report its process tree's peak memory, split into anonymous and file-backed (memory-mapped) pages.

    python benchmarks/peak_memory.py [--interval 0.2] -- python train.py --dataset /tmp/scenes_4_20

`/usr/bin/time -v`'s maximum RSS counts the pages of memory-mapped files a process touched (atr's encoder cache, the
Arrow tables), which the kernel can drop and re-read; this samples the command and its children with psutil (which
accelerate installs) and reports the peaks of their anonymous pages (RSS less shared: what the processes themselves
hold), their file-backed and shared pages, and their RSS, in GB.
"""

import argparse
import json
import subprocess
import sys
import time

import psutil


def tree_memory(root: psutil.Process) -> dict[str, int]:
    """Bytes of anonymous and of file-backed or shared resident pages, summed over `root` and its live descendants."""
    totals = {"anonymous": 0, "file_or_shared": 0}
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:  # the command ended between two samples
        return totals
    for process in processes:
        try:
            memory = process.memory_info()
        except psutil.NoSuchProcess:
            continue
        totals["anonymous"] += memory.rss - memory.shared
        totals["file_or_shared"] += memory.shared
    return totals


def main(argv=None):
    """CLI: run the command after `--`, sample until it exits, print the peaks as JSON and exit with its status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.exit("error: no command given: put it after --, e.g. -- python train.py")
    started = time.time()
    process = subprocess.Popen(command)
    root = psutil.Process(process.pid)
    peaks = dict.fromkeys(("anonymous", "file_or_shared", "total"), 0)
    while process.poll() is None:
        sample = tree_memory(root)
        sample["total"] = sample["anonymous"] + sample["file_or_shared"]
        peaks = {key: max(value, sample[key]) for key, value in peaks.items()}
        time.sleep(args.interval)
    report = {f"peak_{key}_GB": round(value / 1e9, 2) for key, value in peaks.items()}
    report |= {"seconds": round(time.time() - started, 1), "exit_status": process.returncode, "command": command}
    print(json.dumps(report), flush=True)
    sys.exit(process.returncode)


if __name__ == "__main__":
    main()

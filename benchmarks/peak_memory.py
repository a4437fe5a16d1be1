"""Run a command and report its process tree's peak memory, split into anonymous and file-backed (memory-mapped) pages.

    python benchmarks/peak_memory.py [--interval 0.2] -- python train.py --dataset /tmp/scenes_4_20

`/usr/bin/time -v`'s maximum RSS counts the pages of memory-mapped files a process touched (atr's encoder cache, the
Arrow tables), which the kernel can drop and re-read; this samples `/proc/PID/status` of the command and its children
(Linux only) and reports the peaks of RssAnon (what the process itself holds), RssFile and their sum, in GB.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

FIELDS = ("RssAnon", "RssFile", "RssShmem")


def tree_rss_kb(root: int) -> dict[str, int]:
    """The sum of each RSS field (kB) over `root` and every live descendant."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            parent = int(next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("PPid:")))
        except (OSError, StopIteration, ValueError):
            continue
        children.setdefault(parent, []).append(int(status.parent.name))
    totals, stack = dict.fromkeys(FIELDS, 0), [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            name = line.split(":")[0]
            if name in totals:
                totals[name] += int(line.split()[1])
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
    peaks = dict.fromkeys(("RssAnon", "RssFile", "total"), 0)
    while process.poll() is None:
        sample = tree_rss_kb(process.pid)
        sample["total"] = sum(sample[field] for field in FIELDS)
        peaks = {key: max(value, sample[key]) for key, value in peaks.items()}
        time.sleep(args.interval)
    report = {f"peak_{key}_GB": round(value / 1e6, 2) for key, value in peaks.items()}
    report |= {"seconds": round(time.time() - started, 1), "exit_status": process.returncode, "command": command}
    print(json.dumps(report), flush=True)
    sys.exit(process.returncode)


if __name__ == "__main__":
    main()

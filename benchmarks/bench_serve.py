"""Load and soak test of `atr-search serve` on loopback: throughput, p50/p95 latency, errors and the server's RSS.

    python benchmarks/bench_serve.py [--requests 2000] [--clients 8] [--recordings 300] [--model DIR] [--source TREE]

Builds an index of synthetic recordings (with --model, or a tiny random atr model written to a temporary folder),
starts `python -m atr.search serve` on 127.0.0.1, and sends text searches from `--clients` threads through Gradio's
HTTP API (`POST /gradio_api/call/by_text`, then read the event stream), alternating k = 10 and k = 50. Each request
is a new Gradio session, as a new visitor's page would be. The server's resident memory (VmRSS of its process) is read
after the first 200 requests and after the last; the target is a difference under 50 MB. `--source` runs the server
from another checkout (e.g. an older commit, unpacked with `git archive`) to compare. Nothing leaves the machine.
"""

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORDS = "dog bark siren bell rain engine bird knock beep loud soft far near the a while then after".split()


def rss_mb(pid):
    """Resident memory of a process in MB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def tiny_model(folder):
    """A tiny random atr model and processor saved to `folder` (the one tests use): no download."""
    import torch

    sys.path.insert(0, str(ROOT))
    from atr import AtrFeatureExtractor, AtrModel, AtrProcessor
    from tests.tiny import tiny_atr_config, tiny_tokenizer

    torch.manual_seed(0)
    config = tiny_atr_config(text="bert")
    extractor = AtrFeatureExtractor.from_audio_config(config.audio_config, sampling_rate=8000, window_s=1.0, frequency_max=4000)
    AtrModel(config).save_pretrained(folder)
    AtrProcessor(extractor, tiny_tokenizer()).save_pretrained(folder)
    return folder


def write_recordings(folder, count, seed=0):
    """`count` 1-3 s recordings at 16 kHz: a tone, a noise burst and silence in a random order."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rate, seconds = 16000, rng.uniform(1, 3)
        t = np.arange(int(rate * seconds)) / rate
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) * (t < seconds / 2)
        wave += 0.1 * rng.standard_normal(t.size) * (t > seconds * 0.7)
        sf.write(folder / f"rec-{i:04d}.wav", wave.astype(np.float32), rate)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def search(port, query, k):
    """One search through Gradio's HTTP API: the result HTML's hit count (raises on an error)."""
    base = f"http://127.0.0.1:{port}/gradio_api/call/by_text"
    body = json.dumps({"data": [query, k, False]}).encode()
    request = urllib.request.Request(base, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{base}/{event_id}", timeout=120) as response:
        stream = response.read().decode()
    if "event: complete" not in stream:
        raise RuntimeError(stream[-300:])
    return stream.count("atr-hit")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--recordings", type=int, default=300)
    parser.add_argument("--model", help="model folder (default: a tiny random atr model)")
    parser.add_argument("--source", default=str(ROOT), help="the checkout the server runs from (default: this one)")
    parser.add_argument("--warmup", type=int, default=200, help="requests before the first RSS reading")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = args.model or str(tiny_model(work / "model"))
    write_recordings(work / "audio", args.recordings)
    env = {**os.environ, "PYTHONPATH": args.source, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "atr.search", "build", "--audio-dir", str(work / "audio"), "--model", model, "--quiet"],
                   check=True, env=env, cwd=args.source)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "atr.search", "serve", "--index-dir", str(work / "audio" / ".atr-index"),
                               "--model", model, "--port", str(port)], env=env, cwd=args.source,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(1)
        rss_start = rss_mb(server.pid)
        rng = np.random.default_rng(1)
        jobs = [(" ".join(rng.choice(WORDS, size=4)), 10 if i % 2 == 0 else 50) for i in range(args.requests)]
        latencies, errors, samples, lock, counter = [], [], [], threading.Lock(), iter(range(args.requests))

        def client():
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    hits = search(port, *jobs[i])
                    if hits != min(jobs[i][1], args.recordings):
                        raise RuntimeError(f"{hits} hits for k={jobs[i][1]}")
                except Exception as error:  # counted and reported, the load goes on
                    with lock:
                        errors.append(repr(error)[:200])
                with lock:
                    latencies.append(time.perf_counter() - start)
                    done = len(latencies)
                    if done == args.warmup or done % 250 == 0 or done == args.requests:
                        samples.append((done, round(rss_mb(server.pid), 1)))

        began = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
    finally:
        rss_end = rss_mb(server.pid) if server.poll() is None else float("nan")
        server.terminate()
        server.wait(timeout=30)
    after_warmup = dict(samples)[args.warmup]
    ms = np.array(latencies) * 1000
    result = {
        "requests": args.requests, "clients": args.clients, "recordings": args.recordings, "k": [10, 50],
        "model": args.model or "tiny random atr model (tests/tiny.py)", "source": args.source,
        "throughput_rps": round(args.requests / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1), "errors": len(errors), "first_errors": errors[:3],
        "rss_mb_at_start": round(rss_start, 1), f"rss_mb_after_{args.warmup}": after_warmup, "rss_mb_after_last": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - after_warmup, 1), "rss_samples": samples, "wall_s": round(wall, 1),
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

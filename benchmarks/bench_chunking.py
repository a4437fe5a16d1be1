"""Speed and peak memory of silence-aware chunking (+ HTSAT features) on one hour of 48 kHz audio, beside librosa.

    python benchmarks/bench_chunking.py                # one hour, every stage in its own process
    python benchmarks/bench_chunking.py --minutes 5    # a quick run

Each stage runs in a fresh subprocess so its peak RSS (`ru_maxrss`, which includes the hour of float32 audio itself,
691 MB at 48 kHz) is its own. Times are the best of `--repeat` runs, as times real time (audio seconds / wall seconds).
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

SR = 48_000
STAGES = ("silence", "chunking", "librosa", "features")


def make_audio(minutes, seed=0):
    """Sound events of 2-30 s (tones + noise, varied level) separated by 0.3-4 s silences, float32 at 48 kHz."""
    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * SR)
    audio = np.zeros(total, dtype=np.float32)  # silences stay digital zeros or get a -90 dBFS hiss below
    position = 0
    while position < total:
        length = min(int(rng.uniform(2, 30) * SR), total - position)
        t = np.arange(length, dtype=np.float32) / SR
        event = np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + rng.normal(0, 0.3, length).astype(np.float32)
        audio[position : position + length] = rng.uniform(0.01, 0.5) * event
        position += length + int(rng.uniform(0.3, 4) * SR)
        if rng.random() < 0.5 and position < total:
            gap = slice(position - int(0.3 * SR), position)
            audio[gap] = rng.normal(0, 10 ** (-90 / 20), audio[gap].size)
    return audio


def run_stage(stage, minutes, repeat):
    """Time one stage on the generated audio; return seconds (best of `repeat`), peak RSS in MB and a summary."""
    audio = make_audio(minutes)
    from atr import AtrFeatureExtractor

    fe = AtrFeatureExtractor()  # full-size HTSAT settings: 48 kHz, 64 mels, 10 s chunks
    if stage == "silence":
        work = lambda: fe.split_on_silence(audio)  # noqa: E731
    elif stage == "chunking":
        work = lambda: fe.chunk_spans(audio)  # noqa: E731
    elif stage == "librosa":
        import librosa

        work = lambda: librosa.effects.split(audio, top_db=fe.silence_threshold_db)  # noqa: E731
    else:
        work = lambda: fe(audio, sampling_rate=SR)  # noqa: E731
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - start)
    if stage == "features":
        summary = f"{int(result['chunk_mask'].sum())} chunks, input_features {tuple(result['input_features'].shape)}"
    else:
        summary = f"{len(result)} ranges, {sum(int(e - s) for s, e in result) / SR:.0f} s kept"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"stage": stage, "seconds": best, "realtime": minutes * 60 / best, "peak_rss_mb": peak_mb, "summary": summary}


def main():
    """Run every stage in its own process and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stage", choices=STAGES, help="internal: run one stage in this process and print JSON")
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.minutes, args.repeat)))
        return
    rows = []
    for stage in STAGES:
        repeat = 1 if stage == "features" else args.repeat
        command = [sys.executable, __file__, "--stage", stage, "--minutes", str(args.minutes), "--repeat", str(repeat)]
        rows.append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
    print(f"{args.minutes:g} min of 48 kHz audio with silences\n")
    print("| stage | seconds | x real time | peak RSS (MB) | result |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['stage']} | {row['seconds']:.2f} | {row['realtime']:.0f} | {row['peak_rss_mb']:.0f} | {row['summary']} |"
        )


if __name__ == "__main__":
    main()

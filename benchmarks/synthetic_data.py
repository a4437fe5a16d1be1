"""Synthetic dataset study: generation time and the text->audio mAP@10 ceiling that its captions allow.

    python benchmarks/synthetic_data.py [--n-train 2000 --n-validation 200 --n-test 200 --seed 0]

The ceiling assumes an oracle that recognises from the audio exactly what captions can say (the events, their order,
their relations, the background) and ranks clips that share a caption's description in random order. Clips a caption
cannot tell apart cap instance-level retrieval; the study checks that the default sizes leave room for mAP@10 >= 0.5.
"""

import argparse
import tempfile
import time
import numpy as np

from atr.data import decode_audio
from atr.synthetic import BACKGROUND_PHRASES, make_synthetic_dataset


def expected_reciprocal_rank_at_10(ties: int) -> float:
    """Mean of 1/rank (0 past rank 10) when the right clip is one of `ties` equally scored clips."""
    return sum(1 / rank for rank in range(1, min(ties, 10) + 1)) / ties


def describe(row) -> dict:
    """Everything a caption of this clip can state about it."""
    labels = tuple(e["label"] for e in row["events"])
    return {"events": tuple(sorted(labels)), "order": labels, "relations": tuple(row["relations"]),
            "background": row["background"]}


def ceiling(rows, stated) -> float:
    """Text->audio mAP@10 of the oracle that knows the attributes `stated(row, caption)` names, for every clip."""
    descriptions = [describe(row) for row in rows]
    scores = []
    for row, description in zip(rows, descriptions):
        for caption in row["captions"]:
            names = stated(row, caption)
            ties = sum(all(other[n] == description[n] for n in names) for other in descriptions)
            scores.append(expected_reciprocal_rank_at_10(ties))
    return float(np.mean(scores))


def mentions_background(row, caption) -> bool:
    """Whether the caption names the clip's background (60% of captions do)."""
    return any(phrase.strip() in caption for phrase in BACKGROUND_PHRASES[row["background"]])


def main():
    """Generates the splits once, then prints timing and the ceilings as a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-validation", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        splits = make_synthetic_dataset(args.n_train, args.n_validation, args.n_test, seed=args.seed, cache_dir=cache_dir)
        generation_s = time.perf_counter() - start
        start = time.perf_counter()
        make_synthetic_dataset(args.n_train, args.n_validation, args.n_test, seed=args.seed, cache_dir=cache_dir)
        cached_s = time.perf_counter() - start
        batch = splits["train"].select(range(64))["audio"]
        start = time.perf_counter()
        for audio in batch:
            decode_audio(audio, 16000)
        decode_ms = (time.perf_counter() - start) * 1000
        test = splits["test"].remove_columns("audio").to_list()
        hours = sum(sum(split["duration_s"]) for split in splits.values()) / 3600
        size_mb = sum(split.data.nbytes for split in splits.values()) / 1e6

    levels = {
        "which events (unordered)": lambda row, caption: ["events"],
        "events in order": lambda row, caption: ["order"],
        "order + relations": lambda row, caption: ["order", "relations"],
        "order + relations + background when named": lambda row, caption: ["order", "relations"]
        + (["background"] if mentions_background(row, caption) else []),
    }
    print("| measure | value |\n|---|---|")
    print(f"| clips (train/validation/test) | {args.n_train}/{args.n_validation}/{args.n_test} |")
    print(f"| audio | {hours:.2f} h, {size_mb:.0f} MB of WAV in Arrow |")
    print(f"| generation, first call | {generation_s:.1f} s |")
    print(f"| generation, cached call | {cached_s:.2f} s |")
    print(f"| decoding 64 training clips (WAV -> float32) | {decode_ms:.0f} ms |")
    for name, stated in levels.items():
        print(f"| t2a mAP@10 ceiling: {name} | {ceiling(test, stated):.3f} |")

if __name__ == "__main__":
    main()

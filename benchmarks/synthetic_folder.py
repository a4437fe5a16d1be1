"""Write the synthetic scenes as an audio folder (train/validation/test: WAV files + metadata.jsonl), at chosen durations.

    python benchmarks/synthetic_folder.py OUT_DIR [--sizes 2000,200,200] [--min_duration_s 4 --max_duration_s 20] [--seed 0]

`train.py --dataset synthetic` generates 4-12 s scenes in memory; this writes the same generator's scenes with other
durations to disk, as a user's folder, for runs that need them (e.g. the memory of the encoder cache on 4-20 s clips).
The generator's own layouts rarely last past 14 s, so each split is made in `--bands` equal parts whose durations
start at evenly spaced minimums from the shortest to the longest (4, 9.3, 14.7 and 20 s for 4-20 s): a clip shorter
than its band's minimum is padded with its background.
"""

import argparse
import json
import sys
from pathlib import Path

from atr.synthetic import make_synthetic_split


def main(argv=None):
    """CLI: generate each split and write its clips and captions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--sizes", default="2000,200,200", help="train,validation,test clip counts")
    parser.add_argument("--min_duration_s", type=float, default=4.0)
    parser.add_argument("--max_duration_s", type=float, default=20.0)
    parser.add_argument("--bands", type=int, default=4, help="duration bands per split (1: the generator's own durations)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    output = Path(args.output_dir)
    if output.exists() and any(output.iterdir()):
        sys.exit(f"error: {output} is not empty: choose a new OUT_DIR")
    sizes = [int(size) for size in args.sizes.split(",")]
    width = (args.max_duration_s - args.min_duration_s) / max(args.bands - 1, 1)
    for split, size in zip(("train", "validation", "test"), sizes):
        (output / split).mkdir(parents=True)
        durations = []
        with open(output / split / "metadata.jsonl", "w") as metadata:
            for band in range(args.bands):
                count = size // args.bands + (band < size % args.bands)
                shortest = args.min_duration_s + band * width
                clips = make_synthetic_split(split, n=count, seed=args.seed * 1000 + band, min_duration_s=shortest, max_duration_s=args.max_duration_s)
                for row in clips:
                    name = f"band{band}_{row['clip_id']}.wav"
                    (output / split / name).write_bytes(row["audio"]["bytes"])
                    metadata.write(json.dumps({"file_name": name, "captions": row["captions"], "duration_s": row["duration_s"]}) + "\n")
                durations += clips["duration_s"]
        print(f"{split}: {size} clips, {min(durations):.1f}-{max(durations):.1f} s, {sum(durations) / 3600:.2f} h")


if __name__ == "__main__":
    main()

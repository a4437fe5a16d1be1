"""Claim (c), long-form audio: silence-aware chunking + attention pooling vs a single 10 s crop (LAION-CLAP style).

Test clips are 30-60 s long: each test clip (a captioned scene) is placed at a random, seeded position inside a longer
background, either near-silent (pink noise 60 dB under the scene; chunking drops it) or audible (white or brown noise
25 dB under the scene; chunking keeps it). These long clips, and two 10 s crops of each (the first 10 s, and one
seeded random 10 s window), are written as audiofolders. The heads are trained on the ordinary train split (one
`train.py` run per seed on the frozen study encoder with `--cache_encoder_outputs`), and `evaluate.py` tests each
model on the three folders: every chunk + the learned attention pooling (the method) vs one 10 s crop.

python benchmarks/study_long_form.py [--min_long_s 30] [--max_long_s 60] [--seeds 0,1,2] [--dataset ...]
"""

import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402
from atr import AtrFeatureExtractor  # noqa: E402
from atr.data import decode_audio, load_audio_text_dataset  # noqa: E402
from atr.synthetic import colored_noise  # noqa: E402

NAME = "study_long_form"
BACKGROUNDS = {"near-silent": ("pink", -60.0), "white noise": ("white", -25.0), "brown noise": ("brown", -25.0)}
METHOD = "all chunks + attention pooling"


def long_form_layout(index, num_samples, sampling_rate, min_s, max_s, seed=0):
    """Seeded layout of long clip `index`: total length, scene start (samples) and background name."""
    rng = np.random.default_rng([seed, index])
    total = max(int(rng.uniform(min_s, max_s) * sampling_rate), num_samples)
    start = int(rng.integers(0, total - num_samples + 1))
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    return total, start, background


def make_long_form(wave, index, sampling_rate, min_s=30.0, max_s=60.0, seed=0):
    """Place a captioned clip at a random (seeded) position inside a 30-60 s background; float32 waveform."""
    wave = np.asarray(wave, dtype=np.float64)
    total, start, background = long_form_layout(index, wave.size, sampling_rate, min_s, max_s, seed)
    color, level_db = BACKGROUNDS[background]
    rms = max(float(np.sqrt(np.mean(wave**2))), 1e-6)
    out = colored_noise(total, color, np.random.default_rng([seed, index, 1])) * rms * 10 ** (level_db / 20)
    out[start : start + wave.size] += wave
    return (out * min(1.0, 0.9 / np.abs(out).max())).astype(np.float32)


def crop(seconds, sampling_rate, where, seed=0):
    """A transform(wave, index) keeping one `seconds` window: the first one, or one at a seeded random offset."""

    def transform(wave, index):
        size = int(seconds * sampling_rate)
        offset = 0 if where == "first" else int(np.random.default_rng([seed, index, 2]).integers(0, max(1, wave.size - size + 1)))
        return wave[offset : offset + size]

    return transform


def write_long_form_folders(args, dataset, feature_extractor, root):
    """Write the long clips and their crops as audiofolders under `root`; {condition: folder}, overlap share, chunk counts."""
    rate = feature_extractor.sampling_rate
    conditions = {METHOD: None, f"first {args.crop_s:g} s only": "first", f"random {args.crop_s:g} s only": "random"}
    folders = {name: root / ("full" if where is None else where) for name, where in conditions.items()}
    for folder in folders.values():
        (folder / "test").mkdir(parents=True, exist_ok=True)
    metadata = {name: [] for name in conditions}
    overlap, chunks = [], []
    for index, (audio, captions) in enumerate(zip(dataset["audio"], dataset["captions"])):
        scene = decode_audio(audio, rate)
        wave = make_long_form(scene, index, rate, args.min_long_s, args.max_long_s)
        _, start, _ = long_form_layout(index, scene.size, rate, args.min_long_s, args.max_long_s)
        overlap.append(start < args.crop_s * rate)  # whether the first window holds any of the scene: the crop's ceiling
        chunks.append(len(feature_extractor.chunk_spans(wave)))
        for name, where in conditions.items():
            clip = wave if where is None else crop(args.crop_s, rate, where)(wave, index)
            file_name = f"clip{index:05d}.flac"
            sf.write(folders[name] / "test" / file_name, clip, rate)
            metadata[name].append({"file_name": file_name, "captions": list(captions)})
    for name, rows in metadata.items():
        (folders[name] / "test" / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folders, float(np.mean(overlap)), np.array(chunks)


def plot(rows, conditions):
    """Grouped bars: one group per way of embedding the long clips, t2a and a2t mAP@10 with seed std."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(conditions))
    for offset, metric in ((-0.2, "t2a_mAP10"), (0.2, "a2t_mAP10")):
        points = [next(r for r in rows if r["input"] == c) for c in conditions]
        axis.bar(x + offset, [p[metric] for p in points], 0.4, yerr=[p[metric + "_std"] for p in points], capsize=3, label=metric)
    axis.set_xticks(x, [c.replace(" + ", "\n+ ") for c in conditions], fontsize=8)
    axis.set_ylabel("test mAP@10 (long clips)")
    axis.legend()
    return figure


def main(argv=None):
    """Train heads per seed with train.py, write the long test clips, evaluate each model on them with evaluate.py."""
    parser = _study.study_parser(__doc__, NAME)
    parser.add_argument("--min_long_s", type=float, default=30.0)
    parser.add_argument("--max_long_s", type=float, default=60.0)
    parser.add_argument("--crop_s", type=float, default=10.0)
    args = parser.parse_args(argv)
    started = _study.setup(args)
    output_dir = Path(args.output_dir)
    sizes = dict(zip(("train", "validation", "test"), args.synthetic_sizes.split(",")))
    test = load_audio_text_dataset(args.dataset, "test", load_kwargs={"n": int(sizes["test"])} if args.dataset == "synthetic" else None)

    runs, folders = [], None
    for seed in _study.parse_seeds(args.seeds):
        run_dir = output_dir / "runs" / f"seed{seed}"
        run = _study.train_run(args, run_dir, seed, train_flags=["--evaluate_test", "false"])
        if folders is None:  # the clips are written at the trained model's sampling rate
            folders, overlap, chunks = write_long_form_folders(args, test, AtrFeatureExtractor.from_pretrained(run_dir), output_dir / "data")
        for condition, folder in folders.items():
            metrics, command = _study.evaluate_run(args, run_dir, run_dir / "evaluation" / folder.name, ["--dataset", str(folder), "--split", "test"])
            runs.append({"input": condition, **run, "metrics": metrics["clean"], "evaluate_command": command})
            _study.logger.info("seed %d, %s: t2a mAP@10 %.3f a2t mAP@10 %.3f", seed, condition, metrics["clean"]["t2a_mAP10"], metrics["clean"]["a2t_mAP10"])
    rows = _study.summarise(runs, ("input",))
    table = _study.markdown_table(rows, ("input",)) + (
        f"\n{len(chunks)} test clips of {args.min_long_s:g}-{args.max_long_s:g} s; the captioned scene overlaps the first "
        f"{args.crop_s:g} s in {100 * overlap:.0f}% of them; chunks per clip after silence-aware chunking: "
        f"mean {chunks.mean():.1f}, max {int(chunks.max())}.\n"
    )
    _study.write_outputs(args, NAME, runs, rows, table, plot(rows, list(folders)), started, argv)
    return rows


if __name__ == "__main__":
    main()

"""Claim (b), noise robustness: heads trained with and without SNR 5-15 dB noise augmentation, tested clean and at 15/10/5 dB.

Training noise: each clip is replaced, with probability `--noise_probability`, by one of `--noisy_copies` cached noisy
versions (white, pink or brown noise at a uniform SNR in [5, 15] dB, seeded per clip): the cached form of train.py's
on-the-fly augmentation. Test noise: `atr.data.mix_at_snr` at exactly each SNR, noise colour `--test_noise`, seeded per clip.

python benchmarks/study_noise.py [--seeds 0,1,2] [--samples_seen 2400] [--test_snrs 15,10,5] [--dataset ...]
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402
from atr.data import mix_at_snr  # noqa: E402

NAME = "study_noise"
NOISE_COLORS = ("white", "pink", "brown")


def random_noise(seed, min_snr_db, max_snr_db):
    """A transform(wave, index) adding noise of a random colour at a random SNR, seeded by (seed, index)."""

    def transform(wave, index):
        rng = np.random.default_rng([seed, index])
        return mix_at_snr(wave, NOISE_COLORS[rng.integers(len(NOISE_COLORS))], rng.uniform(min_snr_db, max_snr_db), rng=rng)

    return transform


def fixed_noise(color, snr_db, seed=1234):
    """A transform(wave, index) adding `color` noise at exactly `snr_db`, seeded by (seed, index)."""
    return lambda wave, index: mix_at_snr(wave, color, snr_db, rng=np.random.default_rng([seed, index]))


def plot(rows, conditions):
    """mAP@10 vs test condition, one line per training regime, one panel per direction."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for axis, metric in zip(axes, ("t2a_mAP10", "a2t_mAP10")):
        for training in ("clean", "noise-augmented"):
            points = [next(r for r in rows if r["training"] == training and r["test"] == c) for c in conditions]
            axis.errorbar(conditions, [p[metric] for p in points], yerr=[p[metric + "_std"] for p in points], marker="o", capsize=3, label=f"trained {training}")
        axis.set_xlabel("test condition")
        axis.set_title(metric)
    axes[0].set_ylabel("test mAP@10")
    axes[0].legend()
    return figure


def main(argv=None):
    """Train heads with and without noise at each seed, evaluate each at every test condition; write the table and plot."""
    parser = _study.study_parser(__doc__, NAME)
    parser.add_argument("--noise_probability", type=float, default=0.5, help="chance a training clip is noisy (train.py's default)")
    parser.add_argument("--noisy_copies", type=int, default=2, help="cached noisy versions of each training clip")
    parser.add_argument("--min_snr_db", type=float, default=5.0)
    parser.add_argument("--max_snr_db", type=float, default=15.0)
    parser.add_argument("--test_snrs", default="15,10,5")
    parser.add_argument("--test_noise", default="white", choices=NOISE_COLORS)
    args = parser.parse_args(argv)
    _study.setup(args)
    started = time.perf_counter()
    encoder, processor, splits, data = _study.study_data(args)

    noisy_train = [
        _study.audio_cache(args, encoder, processor, splits["train"], f"noise{copy}-{args.min_snr_db}-{args.max_snr_db}",
                           random_noise(1000 + copy, args.min_snr_db, args.max_snr_db))
        for copy in range(args.noisy_copies)
    ]
    test_audio = {"clean": data["test"]["audio"]}
    for snr in (float(s) for s in args.test_snrs.split(",")):
        test_audio[f"{snr:g} dB"] = _study.audio_cache(args, encoder, processor, splits["test"], f"{args.test_noise}-snr{snr:g}",
                                                       fixed_noise(args.test_noise, snr))

    runs = []
    for training, variants, probability in (("clean", [data["train"]["audio"]], 0.0),
                                            ("noise-augmented", [data["train"]["audio"], *noisy_train], args.noise_probability)):
        for seed in _study.parse_seeds(args.seeds):
            run_start = time.perf_counter()
            model = _study.head_model(encoder, seed)
            history = _study.train_heads(model, variants, data["train"]["text"], samples_seen=args.samples_seen, batch_size=args.batch_size,
                                         learning_rate=args.learning_rate, seed=seed, noise_probability=probability)
            for condition, audio in test_audio.items():
                metrics = _study.evaluate_cached(model, audio, data["test"]["text"])
                runs.append({"training": training, "test": condition, "seed": seed, "steps": len(history), "metrics": metrics})
                _study.logger.info("trained %s seed %d, test %s: t2a mAP@10 %.3f a2t mAP@10 %.3f", training, seed, condition,
                                   metrics["t2a_mAP10"], metrics["a2t_mAP10"])
            _study.logger.info("run took %.0f s", time.perf_counter() - run_start)
    rows = _study.summarise(runs, ("training", "test"))
    table = _study.markdown_table(rows, ("training", "test"))
    _study.write_outputs(args, NAME, runs, rows, table, plot(rows, list(test_audio)), started, argv)
    return rows


if __name__ == "__main__":
    main()

"""Claim (b), noise robustness: heads trained with and without noise augmentation, tested clean and at SNR 15/10/5 dB.

Training: `train.py --noise_probability 0` vs `--noise_probability 0.5` (train.py's default: white or coloured noise at
a uniform SNR in [5, 15] dB), both on the frozen study encoder with `--cache_encoder_outputs` (the cache stores
`--cache_num_views` noisy views per clip). Testing: `evaluate.py --snr clean 15 10 5 --noise white` on each model.

python benchmarks/study_noise.py [--seeds 0,1,2] [--samples_seen 2400] [--test_snrs 15,10,5] [--dataset ...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402

NAME = "study_noise"


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
    """One train.py run per training regime and seed, each evaluated by evaluate.py at every test condition."""
    parser = _study.study_parser(__doc__, NAME)
    parser.add_argument("--noise_probability", type=float, default=0.5, help="train.py --noise_probability of the noise-augmented runs")
    parser.add_argument("--cache_num_views", type=int, default=4, help="train.py --cache_num_views: cached noisy views per training clip")
    parser.add_argument("--test_snrs", default="15,10,5")
    parser.add_argument("--test_noise", default="white", help="evaluate.py --noise: white, pink, brown or a folder of recordings")
    parser.add_argument("--test_noise_seed", type=int, default=1234, help="evaluate.py --seed")
    args = parser.parse_args(argv)
    started = _study.setup(args)
    snrs = [s for s in args.test_snrs.split(",") if s]
    evaluate_flags = [*_study.test_data_flags(args), "--snr", "clean", *snrs, "--noise", args.test_noise, "--seed", str(args.test_noise_seed)]

    runs = []
    for training, probability in (("clean", 0.0), ("noise-augmented", args.noise_probability)):
        for seed in _study.parse_seeds(args.seeds):
            run_dir = Path(args.output_dir) / "runs" / f"{training}-seed{seed}"
            run = _study.train_run(args, run_dir, seed, train_flags=[
                "--noise_probability", str(probability), "--cache_num_views", str(args.cache_num_views), "--evaluate_test", "false"])
            conditions, command = _study.evaluate_run(args, run_dir, run_dir / "evaluation", evaluate_flags)
            for condition, metrics in conditions.items():
                test = condition.removeprefix(f"{Path(args.test_noise).name} ")
                runs.append({"training": training, "test": test, **run, "metrics": metrics, "evaluate_command": command})
                _study.logger.info("trained %s seed %d, test %s: t2a mAP@10 %.3f a2t mAP@10 %.3f", training, seed, test,
                                   metrics["t2a_mAP10"], metrics["a2t_mAP10"])
    rows = _study.summarise(runs, ("training", "test"))
    table = _study.markdown_table(rows, ("training", "test")) + f"\nTest noise: {args.test_noise} (evaluate.py --seed {args.test_noise_seed}).\n"
    _study.write_outputs(args, NAME, runs, rows, table, plot(rows, ["clean", *[f"{float(s):g} dB" for s in snrs]]), started, argv)
    return rows


if __name__ == "__main__":
    main()

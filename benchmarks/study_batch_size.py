"""Claim (a), batch-size robustness: hybrid loss vs contrastive only (λ_cos = λ_L1 = 0) at batch sizes 4, 8, 32 and 128.

Each setting is one `train.py` run on the frozen study encoder with `--cache_encoder_outputs`; every run sees the same
number of training pairs (`--samples_seen`), so batch 4 takes 32x the steps of batch 128; with `--equal_steps N` every run
takes N steps instead (equal pairs seen confounds batch size with step count). Test mAP@10 and R@1 in both
directions (train.py's final test evaluation), mean and standard deviation over seeds.

python benchmarks/study_batch_size.py [--batch_sizes 4,8,32,128] [--seeds 0,1,2] [--samples_seen 2400] [--dataset ...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402

NAME = "study_batch_size"
LOSSES = {"hybrid": {}, "contrastive only": {"lambda_cosine": 0.0, "lambda_l1": 0.0}}


def plot(rows, batch_sizes):
    """mAP@10 vs batch size, one line per loss, one panel per direction, seed std as error bars."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for axis, metric in zip(axes, ("t2a_mAP10", "a2t_mAP10")):
        for loss in LOSSES:
            points = sorted((r["batch_size"], r[metric], r[metric + "_std"]) for r in rows if r["loss"] == loss)
            axis.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o", capsize=3, label=loss)
        axis.set_xscale("log", base=2)
        axis.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        axis.set_xlabel("batch size (same samples seen)")
        axis.set_title(metric)
    axes[0].set_ylabel("test mAP@10")
    axes[0].legend()
    return figure


def main(argv=None):
    """One train.py run per loss, batch size and seed; write the table and plot."""
    parser = _study.study_parser(__doc__, NAME)
    parser.add_argument("--batch_sizes", default="4,8,32,128")
    parser.add_argument("--equal_steps", type=int, default=None,
                        help="every run takes this many steps (larger batches see more pairs) instead of equal --samples_seen")
    args = parser.parse_args(argv)
    started = _study.setup(args)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    runs = []
    for loss, overrides in LOSSES.items():
        for batch_size in batch_sizes:
            for seed in _study.parse_seeds(args.seeds):
                output_dir = Path(args.output_dir) / "runs" / f"{loss.replace(' ', '_')}-b{batch_size}-seed{seed}"
                steps = ("--max_steps", str(args.equal_steps)) if args.equal_steps else ()  # the last --max_steps wins
                run = _study.train_run(args, output_dir, seed, batch_size=batch_size, model_config=overrides, train_flags=steps, keep_model=False)
                runs.append({"loss": loss, **run})
                _study.logger.info("%s batch %d seed %d: t2a mAP@10 %.3f a2t mAP@10 %.3f (%.0f s)", loss, batch_size, seed,
                                   run["metrics"]["t2a_mAP10"], run["metrics"]["a2t_mAP10"], run["seconds"])
    rows = _study.summarise(runs, ("loss", "batch_size"))
    table = _study.markdown_table(rows, ("loss", "batch_size"))
    _study.write_outputs(args, NAME, runs, rows, table, plot(rows, batch_sizes), started, argv)
    return rows


if __name__ == "__main__":
    main()

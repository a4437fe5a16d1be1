"""Claim (a), batch-size robustness: hybrid loss vs contrastive only (λ_cos = λ_L1 = 0) at batch sizes 4, 16 and 64.

Every run sees the same number of training pairs (`--samples_seen`), so batch 4 takes 16x the steps of batch 64.
Test mAP@10 in both directions, mean and standard deviation over seeds; heads trained on frozen, cached encoders.

python benchmarks/study_batch_size.py [--batch_sizes 4,16,64] [--seeds 0,1,2] [--samples_seen 2400] [--dataset ...]
"""

import sys
import time
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
    """Train hybrid and contrastive-only heads at each batch size and seed; write the table and plot."""
    parser = _study.study_parser(__doc__, NAME)
    parser.add_argument("--batch_sizes", default="4,16,64")
    args = parser.parse_args(argv)
    _study.setup(args)
    started = time.perf_counter()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    encoder, _, _, data = _study.study_data(args)

    runs = []
    for loss, overrides in LOSSES.items():
        for batch_size in batch_sizes:
            for seed in _study.parse_seeds(args.seeds):
                run_start = time.perf_counter()
                model = _study.head_model(encoder, seed, **overrides)
                history = _study.train_heads(model, [data["train"]["audio"]], data["train"]["text"], samples_seen=args.samples_seen, batch_size=batch_size,
                                             learning_rate=args.learning_rate, seed=seed)
                metrics = _study.evaluate_cached(model, data["test"]["audio"], data["test"]["text"])
                runs.append({"loss": loss, "batch_size": batch_size, "seed": seed, "steps": len(history), "final_loss": history[-1],
                             "seconds": time.perf_counter() - run_start, "metrics": metrics})
                _study.logger.info("%s batch %d seed %d: t2a mAP@10 %.3f a2t mAP@10 %.3f (%.0f s)", loss, batch_size, seed,
                                   metrics["t2a_mAP10"], metrics["a2t_mAP10"], runs[-1]["seconds"])
    rows = _study.summarise(runs, ("loss", "batch_size"))
    table = _study.markdown_table(rows, ("loss", "batch_size"))
    _study.write_outputs(args, NAME, runs, rows, table, plot(rows, batch_sizes), started, argv)
    return rows


if __name__ == "__main__":
    main()

"""Claim (d), ablation: the full method vs cross-modal attention off, and each loss term removed in turn.

Heads trained on frozen, cached encoders with the same samples seen and batch size; test mAP@10 and R@1 in both
directions, mean and standard deviation over seeds.

python benchmarks/study_ablation.py [--batch_size 16] [--seeds 0,1,2] [--samples_seen 2400] [--dataset ...]
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402

NAME = "study_ablation"
VARIANTS = {
    "full (hybrid + cross-modal attention)": {},
    "no cross-modal attention": {"cross_modal_attention": False},
    "no cosine term": {"lambda_cosine": 0.0},
    "no L1 term": {"lambda_l1": 0.0},
    "no contrastive term": {"lambda_contrastive": 0.0},
}


def plot(rows):
    """Grouped bars: one group per variant, t2a and a2t mAP@10 with seed std as error bars."""
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(9, 3.8))
    x = np.arange(len(rows))
    for offset, metric in ((-0.2, "t2a_mAP10"), (0.2, "a2t_mAP10")):
        axis.bar(x + offset, [r[metric] for r in rows], 0.4, yerr=[r[metric + "_std"] for r in rows], capsize=3, label=metric)
    axis.set_xticks(x, [r["variant"].replace(" (", "\n(") for r in rows], fontsize=8)
    axis.set_ylabel("test mAP@10")
    axis.legend()
    return figure


def main(argv=None):
    """Train every variant at each seed; write the table and plot."""
    parser = _study.study_parser(__doc__, NAME)
    args = parser.parse_args(argv)
    _study.setup(args)
    started = time.perf_counter()
    encoder, _, _, data = _study.study_data(args)

    runs = []
    for variant, overrides in VARIANTS.items():
        for seed in _study.parse_seeds(args.seeds):
            run_start = time.perf_counter()
            model = _study.head_model(encoder, seed, **overrides)
            history = _study.train_heads(model, [data["train"]["audio"]], data["train"]["text"], samples_seen=args.samples_seen,
                                         batch_size=args.batch_size, learning_rate=args.learning_rate, seed=seed)
            metrics = _study.evaluate_cached(model, data["test"]["audio"], data["test"]["text"])
            runs.append({"variant": variant, "seed": seed, "steps": len(history), "final_loss": history[-1],
                         "seconds": time.perf_counter() - run_start, "metrics": metrics})
            _study.logger.info("%s seed %d: t2a mAP@10 %.3f a2t mAP@10 %.3f (%.0f s)", variant, seed,
                               metrics["t2a_mAP10"], metrics["a2t_mAP10"], runs[-1]["seconds"])
    rows = _study.summarise(runs, ("variant",))
    table = _study.markdown_table(rows, ("variant",))
    _study.write_outputs(args, NAME, runs, rows, table, plot(rows), started, argv)
    return rows


if __name__ == "__main__":
    main()

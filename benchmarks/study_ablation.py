"""Claim (d), ablation: the full method vs cross-modal attention off, each loss term removed in turn, and contrastive only.

Each variant is one `train.py` run per seed on the frozen study encoder with `--cache_encoder_outputs`, the same
samples seen and batch size; test mAP@10 and R@1 in both directions, mean and standard deviation over seeds.

python benchmarks/study_ablation.py [--batch_size 16] [--seeds 0,1,2] [--samples_seen 2400] [--dataset ...] [--variants 0,6,7]
"""

import sys
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
    "contrastive only": {"lambda_cosine": 0.0, "lambda_l1": 0.0, "cross_modal_attention": False},
    # Two principled variants of the alignment (issue 27): align what inference uses, or also contrast the pair vectors.
    "alignment on the inference embeddings": {"alignment_pairs": "inference", "cross_modal_attention": False},
    "full + contrastive pair vectors": {"lambda_pair_contrastive": 1.0},
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
    """One train.py run per variant and seed; write the table and plot."""
    parser = _study.study_parser(__doc__, NAME)
    parser.add_argument("--variants", default=None, help="comma-separated indices into VARIANTS (default: all)")
    args = parser.parse_args(argv)
    chosen = range(len(VARIANTS)) if args.variants is None else [int(i) for i in args.variants.split(",")]
    started = _study.setup(args)

    runs = []
    for index, (variant, overrides) in enumerate(VARIANTS.items()):
        if index not in chosen:
            continue
        for seed in _study.parse_seeds(args.seeds):
            run = _study.train_run(args, Path(args.output_dir) / "runs" / f"variant{index}-seed{seed}", seed, model_config=overrides, keep_model=False)
            runs.append({"variant": variant, **run})
            _study.logger.info("%s seed %d: t2a mAP@10 %.3f a2t mAP@10 %.3f (%.0f s)", variant, seed,
                               run["metrics"]["t2a_mAP10"], run["metrics"]["a2t_mAP10"], run["seconds"])
    rows = _study.summarise(runs, ("variant",))
    table = _study.markdown_table(rows, ("variant",))
    _study.write_outputs(args, NAME, runs, rows, table, plot(rows), started, argv)
    return rows


if __name__ == "__main__":
    main()

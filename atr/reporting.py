"""Reports of evaluate.py runs: the paper-shaped markdown table, plots, model-card records, and the paired significance test.

`compare_results` pairs per-query scores of two runs on the same rows (every condition embeds the same rows in the
same order, see `atr.evaluation`) and tests them with the Wilcoxon signed-rank test.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .evaluation import DIRECTIONS, PER_QUERY_METRIC, TABLE_METRICS, ZERO_SHOT_METRICS


# ---------------------------------------------------------------- tables and plots


def results_markdown(results: dict) -> str:
    """The paper-shaped table: one row per condition; T2A and A2T R@1/5/10 and mAP@10 (or the zero-shot metrics)."""
    lines = [
        f"# {results['model']} on {results['dataset']} ({results['split']})", "",
        f"- task: {results['task']}", f"- audio protocol: {results['audio_protocol']}",
        f"- noise: {results['noise']}, seed {results['seed']}; atr {results['atr_version']}", "",
    ]
    if results["task"] == "retrieval":
        header = [f"{d.upper()} {m.replace('R', 'R@').replace('mAP10', 'mAP@10')}" for d in DIRECTIONS for m in TABLE_METRICS]
        keys = [f"{d}_{m}" for d in DIRECTIONS for m in TABLE_METRICS]
    else:
        header = ["Acc", "R@5", "R@10", "mAP@10"]
        keys = list(ZERO_SHOT_METRICS)
    lines += ["| condition | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for record in results["conditions"]:
        cells = [f"{record['metrics'][k]:.4f}" if k in record["metrics"] else "" for k in keys]
        lines.append(f"| {record['condition']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: dict, output_dir: str | os.PathLike) -> list[Path]:
    """PNG plots: each metric against SNR per direction, and hit rate R@K against K per condition."""
    plt = _pyplot()
    output_dir = Path(output_dir)
    records = results["conditions"]
    retrieval = results["task"] == "retrieval"
    panels = DIRECTIONS if retrieval else ("zero_shot",)
    labels = [r["condition"] for r in records]
    paths = []
    for panel in panels:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for metric in TABLE_METRICS if retrieval else ZERO_SHOT_METRICS:
            key = f"{panel}_{metric}" if retrieval else metric
            ax.plot(range(len(records)), [r["metrics"][key] for r in records], marker="o", label=metric)
        ax.set_xticks(range(len(records)), labels, rotation=20)
        ax.set(xlabel="condition (SNR)", ylabel="score", ylim=(0, 1.02), title=f"{panel} vs SNR: {Path(results['model']).name}")
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = output_dir / f"metrics_vs_snr_{panel}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for record in records:
            ranks = np.asarray(record["per_query"][panel]["rank"])
            ks = np.arange(1, max(2, min(int(ranks.max()), 100)) + 1)
            ax.plot(ks, [(ranks <= k).mean() for k in ks], label=record["condition"])
        ax.set(xlabel="K", ylabel="R@K (hit rate)", ylim=(0, 1.02), title=panel)
        ax.legend(fontsize="small")
    fig.tight_layout()
    path = output_dir / "recall_at_k.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [*paths, path]


def card_records(results: dict) -> list[dict]:
    """Results as atr.model_card records (one per condition) for `update_model_card`."""
    task = "audio-text-retrieval" if results["task"] == "retrieval" else "zero-shot-audio-classification"
    return [
        {"dataset": results["dataset"], "split": results["split"], "condition": record["condition"], "task": task,
         "metrics": {k: v for k, v in record["metrics"].items() if isinstance(v, (int, float))}}
        for record in results["conditions"]
    ]


# ---------------------------------------------------------------- significance


def compare_results(a: dict, b: dict) -> list[dict]:
    """Wilcoxon signed-rank test (scipy.stats.wilcoxon, two-sided) of A vs B on paired per-query scores, per condition/direction/metric."""
    from scipy.stats import wilcoxon

    for key in ("task", "dataset", "split"):
        if a.get(key) != b.get(key):
            raise ValueError(f"the two results differ in {key} ({a.get(key)!r} vs {b.get(key)!r}): compare runs of the same task, dataset and split")
    if a.get("dataset_fingerprint") != b.get("dataset_fingerprint"):
        raise ValueError("the two results were computed on different rows (dataset_fingerprint differs): per-query "
                         "scores do not pair up; evaluate both models on the same dataset, split and sample limit")
    b_by_condition = {r["condition"]: r for r in b["conditions"]}
    shared = [r for r in a["conditions"] if r["condition"] in b_by_condition]
    if not shared:
        raise ValueError(f"no condition in common ({[r['condition'] for r in a['conditions']]} vs {list(b_by_condition)})")
    rows = []
    for record_a in shared:
        record_b = b_by_condition[record_a["condition"]]
        for direction, scores_a in record_a["per_query"].items():
            scores_b = record_b["per_query"][direction]
            for metric, key in PER_QUERY_METRIC.items():
                x, y = np.asarray(scores_a[key], dtype=np.float64), np.asarray(scores_b[key], dtype=np.float64)
                if len(x) != len(y):
                    raise ValueError(f"{record_a['condition']} {direction}: {len(x)} vs {len(y)} queries, they must pair up")
                differing = int(np.count_nonzero(x != y))
                statistic = p_value = None  # no differing pair: nothing to test (scipy would return NaN)
                if differing:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)  # small-sample / ties notes
                        test = wilcoxon(x, y)
                    statistic, p_value = float(test.statistic), float(test.pvalue)
                rows.append({
                    "condition": record_a["condition"], "direction": direction, "metric": metric,
                    "mean_a": float(x.mean()), "mean_b": float(y.mean()), "num_queries": int(len(x)),
                    "num_differing": differing, "statistic": statistic, "p_value": p_value,
                })
    return rows


def comparison_markdown(rows: list[dict], name_a: str, name_b: str) -> str:
    """The comparison as a markdown table with p-values."""
    lines = [
        "Wilcoxon signed-rank test (scipy.stats.wilcoxon, two-sided, zero differences dropped) on per-query scores.",
        f"A = {name_a}", f"B = {name_b}", "",
        "| condition | direction | metric | A | B | queries | differing | statistic | p-value |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['condition']} | {r['direction']} | {r['metric']} | {r['mean_a']:.4f} | {r['mean_b']:.4f} | "
            f"{r['num_queries']} | {r['num_differing']} | "
            + ("n/a | n/a (identical) |" if r["p_value"] is None else f"{r['statistic']:.1f} | {r['p_value']:.3g} |")
        )
    return "\n".join(lines) + "\n"


__all__ = ["card_records", "compare_results", "comparison_markdown", "results_markdown", "write_plots"]

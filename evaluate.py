"""Evaluate an atr model (or a transformers ClapModel) on a dataset, clean and with noise; compare two result files.

    python evaluate.py --model outputs/demo --dataset synthetic --split test --snr clean 15 10 5 --output_dir results/demo
    python evaluate.py --model laion/clap-htsat-unfused --dataset synthetic --split test --snr clean 15 10 5 --output_dir results/clap
    python evaluate.py --compare results/demo/results.json results/clap/results.json --output_dir results/demo_vs_clap
    python evaluate.py --model outputs/esc50 --dataset ./esc50 --task zero-shot --label_column label --output_dir results/esc50

See docs/evaluation.md.
"""

import os
import sys

# `python evaluate.py` puts this folder first on sys.path, where this file would shadow the `evaluate` library for any
# later `import evaluate` in the process; moving the folder last lets the library win while `import atr` still works
# from a checkout that is not pip-installed.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.getcwd()) == _HERE:
    sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

logger = logging.getLogger("atr.evaluate")
OUTPUT_FILES = ("results.json", "comparison.json")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (each `--a_b` also as `--a-b`)."""
    from atr.cli_errors import both_spellings, one_line_errors

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="A trained atr directory or Hub id, or a transformers ClapModel (e.g. laion/clap-htsat-unfused).")
    parser.add_argument("--dataset", default="synthetic", help="What train.py accepts: 'synthetic', a Hub id, an audiofolder or a CSV/JSONL manifest.")
    parser.add_argument("--dataset_config", default=None, help="Hub dataset config name.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--audio_column", default=None, help="Audio column (default: audio, file_name, path, ...).")
    parser.add_argument("--caption_columns", default="", help="Comma-separated caption columns (default: caption or captions).")
    parser.add_argument("--group_by", default=None, help="Merge rows of the same clip (one caption per row, e.g. AudioCaps).")
    parser.add_argument("--caption_separator", default=None, help="Split caption strings that join several captions on this.")
    parser.add_argument("--max_samples", type=int, default=None, help="Evaluate the first N clips only.")
    parser.add_argument("--synthetic_size", type=int, default=None, help="Clips in the synthetic split (default: its standard size).")
    parser.add_argument("--skip_bad_audio", action="store_true", help="Skip unreadable audio files instead of stopping.")
    parser.add_argument("--batch_size", type=int, default=16, help="Clips per embedding batch.")
    parser.add_argument("--snr", nargs="+", default=["clean"], help="Conditions: 'clean' and/or SNRs in dB, e.g. clean 15 10 5.")
    parser.add_argument("--noise", default="white", help="white, pink, brown, or a folder of noise recordings.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the noise (same clips get the same noise in every run).")
    parser.add_argument("--task", choices=["retrieval", "zero-shot"], default="retrieval")
    parser.add_argument("--label_column", default="label", help="zero-shot: the label column (int, name, or a list of them).")
    parser.add_argument("--class_names", nargs="+", default=None, help="zero-shot: class names in index order (default: ClassLabel names or sorted label strings).")
    parser.add_argument("--label_separator", default=None, help="zero-shot: split string labels on this (multi-label, e.g. ',').")
    parser.add_argument("--prompt_template", default=None, help="zero-shot prompt with {label} (default: 'This is a sound of {label}.').")
    parser.add_argument("--label_underscores_to_spaces", action="store_true",
                        help="zero-shot: read string labels with '_' as spaces (ESC-50's chirping_birds, FSD50K's Bird_vocalization).")
    parser.add_argument("--output_dir", default=None, help="Where results.json, results.md and the plots go.")
    parser.add_argument("--overwrite", action="store_true", help="Replace results already in --output_dir.")
    parser.add_argument("--update_model_card", action="store_true", help="Write the results into the (local) model's README.md model-index.")
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="Wilcoxon signed-rank test of two results.json files.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="Run code shipped in the --model repo (only for repos you trust; atr models need none).")
    parser.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                        help="torch, or ONNX Runtime on a `python -m atr.export onnx` folder (onnx-int8: its --int8 graphs).")
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bars.")
    return one_line_errors(both_spellings(parser))


def check_output_dir(output_dir: str, overwrite: bool, name: str = "results.json") -> Path:
    """The output folder, refusing to replace earlier results unless --overwrite."""
    path = Path(output_dir)
    if (path / name).exists() and not overwrite:
        raise FileExistsError(f"{path / name} already exists: pass --overwrite to replace it, or choose another --output_dir")
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_eval_dataset(args):
    """The evaluation split, with the label column as text in zero-shot mode."""
    from atr.data import load_audio_text_dataset

    if args.task == "zero-shot":
        caption_columns = args.label_column
    else:
        caption_columns = tuple(c for c in args.caption_columns.split(",") if c) or None
    load_kwargs = {"n": args.synthetic_size} if args.dataset == "synthetic" and args.synthetic_size else None
    dataset = load_audio_text_dataset(
        args.dataset, args.split, config_name=args.dataset_config, audio_column=args.audio_column,
        caption_columns=caption_columns, skip_bad_audio=args.skip_bad_audio, group_by=args.group_by, load_kwargs=load_kwargs,
        caption_separator=args.caption_separator,
    )
    if args.task == "zero-shot" and args.label_underscores_to_spaces:
        column = args.label_column
        dataset = dataset.map(lambda labels: {column: [v.replace("_", " ") if isinstance(v, str) else v for v in labels]},
                              input_columns=column, batched=True)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"split {args.split!r} of {args.dataset} has no rows to evaluate")
    return dataset


def run_evaluation(args) -> dict:
    """Evaluate, then write results.json, results.md and the plots (and the model card when asked)."""
    import atr
    from atr import evaluation, reporting
    from atr.metrics import save_results

    if not args.model:
        raise ValueError("--model is required (or use --compare A.json B.json)")
    output_dir = check_output_dir(args.output_dir, args.overwrite) if args.output_dir else None
    conditions = evaluation.parse_conditions(args.snr)
    model, processor, info = evaluation.load_model_for_evaluation(args.model, args.device, args.backend, args.trust_remote_code)
    dataset = load_eval_dataset(args)
    common = dict(noise=args.noise, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress)
    extra = {}
    if args.task == "zero-shot":
        template = args.prompt_template or evaluation.DEFAULT_PROMPT_TEMPLATE
        records, class_names = evaluation.evaluate_zero_shot(
            model, processor, dataset, conditions, label_column=args.label_column, class_names=args.class_names,
            separator=args.label_separator, prompt_template=template, **common,
        )
        extra = {"class_names": class_names, "prompt_template": template, "label_column": args.label_column}
    else:
        records = evaluation.evaluate_retrieval(model, processor, dataset, conditions, **common)
    results = {
        "model": args.model, **info, "task": args.task, "dataset": args.dataset, "dataset_config": args.dataset_config,
        "split": args.split, "num_clips": len(dataset), "max_samples": args.max_samples,
        "dataset_fingerprint": evaluation.dataset_fingerprint(dataset), "noise": evaluation.noise_label(args.noise),
        "seed": args.seed, "atr_version": atr.__version__, "command": ["evaluate.py", *args.argv], **extra,
        "conditions": records,
    }
    for record in records:
        logger.info("%s: %s", record["condition"], {k: round(v, 4) for k, v in record["metrics"].items() if isinstance(v, float)})
    if output_dir is not None:
        saved = save_results(output_dir / "results.json", **results)
        results = json.loads(saved.read_text())  # with the provenance fields save_results adds
        (output_dir / "results.md").write_text(reporting.results_markdown(results))
        reporting.write_plots(results, output_dir)
        print(f"wrote {output_dir}/results.json, results.md and plots")
    print(reporting.results_markdown(results))
    if args.update_model_card:
        from atr.model_card import update_model_card

        if not os.path.isdir(args.model):
            raise ValueError(f"--update_model_card needs a local model directory, but --model is {args.model!r}: "
                             "download the model, evaluate that folder, then push its README.md")
        update_model_card(Path(args.model) / "README.md", reporting.card_records(results))
        print(f"updated {Path(args.model) / 'README.md'}")
    return results


def run_comparison(args) -> list[dict]:
    """Wilcoxon signed-rank tests between two results.json files; the table printed and, with --output_dir, saved."""
    from atr import reporting
    from atr.metrics import save_results

    path_a, path_b = args.compare
    loaded = []
    for path in (path_a, path_b):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--compare file {path} does not exist: pass two results.json files from evaluate.py")
        loaded.append(json.loads(Path(path).read_text()))
    rows = reporting.compare_results(*loaded)
    table = reporting.comparison_markdown(rows, f"{loaded[0]['model']} ({path_a})", f"{loaded[1]['model']} ({path_b})")
    if args.output_dir:
        output_dir = check_output_dir(args.output_dir, args.overwrite, "comparison.json")
        save_results(output_dir / "comparison.json", a=path_a, b=path_b, model_a=loaded[0]["model"], model_b=loaded[1]["model"],
                     test="scipy.stats.wilcoxon(a, b), two-sided, zero_method='wilcox'", rows=rows)
        (output_dir / "comparison.md").write_text(table)
    print(table)
    return rows


def main(argv=None):
    """Run the CLI: evaluation, or --compare."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.compare:
        return run_comparison(args)
    return run_evaluation(args)


if __name__ == "__main__":
    from atr.cli_errors import run_cli

    sys.exit(run_cli("evaluate.py", main))  # a user error: status 2 and one line (ATR_DEBUG=1: traceback)

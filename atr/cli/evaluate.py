"""atr-evaluate (and the repo's evaluate.py): evaluate a model on a dataset, clean and with noise; compare two result files.

Imported as `atr.cli.evaluate`, never as a top-level `evaluate`: that name is the Hugging Face library (DESIGN.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from transformers import HfArgumentParser

from atr.cli.flags import DatasetArguments, RemoteCodeArguments, dataset_source_kwargs
from atr.cli_errors import both_spellings, one_line_errors, run_cli

__all__ = ["build_parser", "cli", "main", "run_comparison", "run_evaluation"]

logger = logging.getLogger("atr.evaluate")
OUTPUT_FILES = ("results.json", "comparison.json")
DESCRIPTION = """\
Evaluate an atr model (or a transformers ClapModel such as laion/clap-htsat-unfused) on a dataset:
retrieval in both directions (R@1/5/10, mAP@10) or zero-shot classification, clean and with noise at
the SNRs given, written as results.json, results.md and plots to --output_dir; --compare tests two
results.json files against each other (Wilcoxon signed-rank). The data flags are those of training.
Every flag takes --a_b and --a-b. See docs/evaluation.md."""
EXAMPLES = """\
examples:
  {prog} --model outputs/demo --dataset synthetic --split test --snr clean 15 10 5 --output_dir results/demo
  {prog} --model laion/clap-htsat-unfused --dataset synthetic --split test --snr clean 15 10 5 --output_dir results/clap
  {prog} --compare results/demo/results.json results/clap/results.json --output_dir results/demo_vs_clap
  {prog} --model outputs/esc50 --dataset ./esc50 --task zero-shot --label_column label --output_dir results/esc50"""


def build_parser(prog: str = "atr-evaluate") -> argparse.ArgumentParser:
    """The command-line options: --model first, then the data flags shared with atr-train (each `--a_b` also as `--a-b`)."""
    usage = f"{prog} --model MODEL [--dataset DATASET] [--flag VALUE ...]   or   {prog} --compare A.json B.json"
    parser = HfArgumentParser((DatasetArguments, RemoteCodeArguments), prog=prog, usage=usage, description=DESCRIPTION,
                              epilog=EXAMPLES.format(prog=f"python {prog}" if prog.endswith(".py") else prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="A trained atr directory or Hub id, or a transformers ClapModel (e.g. laion/clap-htsat-unfused).")
    data = next(group for group in parser._action_groups if group.title == DatasetArguments._argument_group_name)
    data.add_argument("--split", default="test", help="The split to evaluate.")
    data.add_argument("--max_samples", type=int, default=None, help="Evaluate the first N clips only.")
    data.add_argument("--synthetic_size", type=int, default=None, help="Clips in the synthetic split (default: its standard size).")
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
    parser.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                        help="torch, or ONNX Runtime on a `python -m atr.export onnx` folder (onnx-int8: its --int8 graphs).")
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bars.")
    return one_line_errors(both_spellings(parser), prog)


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

    source = dataset_source_kwargs(args)
    if args.task == "zero-shot":
        source["caption_columns"] = args.label_column
    load_kwargs = {"n": args.synthetic_size} if args.dataset == "synthetic" and args.synthetic_size else None
    dataset = load_audio_text_dataset(args.dataset, args.split, load_kwargs=load_kwargs, **source)
    if args.task == "zero-shot" and args.label_underscores_to_spaces:
        column = args.label_column
        dataset = dataset.map(lambda labels: {column: [v.replace("_", " ") if isinstance(v, str) else v for v in labels]},
                              input_columns=column, batched=True)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"split {args.split!r} of {args.dataset} has no rows to evaluate")
    return dataset


def run_evaluation(args: argparse.Namespace) -> dict:
    """Evaluate, then write results.json, results.md and the plots (and the model card when asked)."""
    import atr
    from atr import evaluation, reporting
    from atr.loading import load_model
    from atr.metrics import save_results

    if not args.model:
        raise ValueError("--model is required (or use --compare A.json B.json)")
    output_dir = check_output_dir(args.output_dir, args.overwrite) if args.output_dir else None
    conditions = evaluation.parse_conditions(args.snr)
    model, processor, info = load_model(args.model, args.device, args.backend, args.trust_remote_code)
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
        "seed": args.seed, "atr_version": atr.__version__, "command": [args.prog, *args.argv], **extra,
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


def run_comparison(args: argparse.Namespace) -> list[dict]:
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


def main(argv: list[str] | None = None, prog: str = "atr-evaluate") -> dict | list[dict]:
    """Run the CLI: evaluation (returns its results), or --compare (returns its rows)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(argv)
    args.argv, args.prog = argv, prog
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.compare:
        return run_comparison(args)
    return run_evaluation(args)


def cli(prog: str = "atr-evaluate") -> None:
    """The `atr-evaluate` command: main() with a user error as status 2 and one line (ATR_DEBUG=1: the traceback)."""
    sys.exit(run_cli(prog, lambda argv: main(argv, prog)))


if __name__ == "__main__":
    cli()

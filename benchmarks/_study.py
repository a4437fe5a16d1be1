"""Shared parts of the paper-claim studies: the study encoder, one `train.py` / `evaluate.py` run per setting, tables, plots.

A study is a set of ordinary `train.py` runs that differ in a few flags, plus `evaluate.py` for extra test conditions,
so every number is measured on the path users run (AtrTrainer, `atr.cache`, CachedCollator, atr.evaluation).

The paper's setting freezes pretrained encoders and trains fresh heads. Offline we have one pretrained text encoder
(all-MiniLM-L6-v2) and no pretrained audio encoder, so by default every study starts from one *study encoder*: the
demo's small Whisper-style audio encoder trained once by `train.py` (contrastive loss only, no noise, no cross-modal
attention, so that no studied ingredient is baked into it), saved under `outputs/study_encoder` and exported as a
Whisper checkpoint. Each head run is then `train.py --audio_backbone <that checkpoint>` with both encoders frozen and
`--cache_encoder_outputs`: fresh heads on cached encoder outputs. `--audio_backbone` skips the study encoder and
uses a real pretrained CLAP or Whisper checkpoint instead.
"""

import argparse
import copy
import gc
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended, not prepended: the repo's evaluate.py must not shadow the `evaluate` library
from atr.cli import evaluate as evaluate_cli  # noqa: E402  (the code of the repo's evaluate.py)
from atr.cli import train  # noqa: E402  (the code of the repo's train.py)

from atr.metrics import save_results  # noqa: E402

logger = logging.getLogger("atr.study")
# What the study encoder is trained without: the studied head ingredients, and (for a shared pretrained text side) text training.
ENCODER_OVERRIDES = {"lambda_cosine": 0.0, "lambda_l1": 0.0, "cross_modal_attention": False, "freeze_text_encoder": True}
# Heads start from the paper's method; frozen encoders cannot collapse, so the alignment terms have full weight from
# step 0 (no alignment warm-up).
HEAD_DEFAULTS = {
    "lambda_cosine": 1.0, "lambda_l1": 1.0, "lambda_contrastive": 1.0, "cross_modal_attention": True, "alignment_warmup_steps": 0,
    "freeze_audio_encoder": True, "freeze_text_encoder": True,
}
METRIC_KEYS = ("t2a_mAP10", "a2t_mAP10", "t2a_R1", "a2t_R1")


def study_parser(description, name, **defaults):
    """The command-line options every study shares; `defaults` overrides their default values."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"), help="train.py config of every run (head settings, data)")
    parser.add_argument("--dataset", default="synthetic", help="'synthetic', a Hub dataset id, an audiofolder dir or a CSV/JSONL manifest")
    parser.add_argument("--synthetic_sizes", default="2000,200,200", help="train,validation,test clip counts of the synthetic set")
    parser.add_argument("--audio_backbone", default=None, help="pretrained CLAP/Whisper checkpoint to freeze (default: the study encoder)")
    parser.add_argument("--encoder", default=str(ROOT / "outputs" / "study_encoder"), help="the study encoder; trained by train.py when missing")
    parser.add_argument("--encoder_steps", type=int, default=None, help="train.py --max_steps of the study encoder (default: the config's)")
    parser.add_argument("--text_backbone", default=None, help="text encoder (default: the config's)")
    parser.add_argument("--samples_seen", type=int, default=2400, help="training pairs each head run sees (steps = samples_seen / batch size)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; the table reports mean and std over them")
    parser.add_argument("--train_args", default="", help="extra train.py flags for every head run, e.g. '--max_eval_samples 100'")
    parser.add_argument("--output_dir", default=str(ROOT / "outputs" / "studies" / name))
    parser.add_argument("--encoder_cache_dir", default=None, help="train.py --encoder_cache_dir (default: outputs/studies/encoder_cache)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --output_dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.set_defaults(**defaults)
    return parser


def parse_seeds(text):
    """'0,1,2' -> [0, 1, 2]."""
    return [int(s) for s in str(text).split(",") if s != ""]


def setup(args):
    """Logging, CPU threads and the output folder (refusing to replace earlier results unless --overwrite)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if (Path(args.output_dir) / "results.json").exists() and not args.overwrite:
        raise FileExistsError(f"{args.output_dir}/results.json exists: pass --overwrite to replace it, or choose another --output_dir")
    if args.encoder_cache_dir is None:
        args.encoder_cache_dir = str(Path(args.output_dir).parent / "encoder_cache")
    import matplotlib

    matplotlib.use("Agg")
    # Every run ends in Accelerate's free_memory(), a full gc.collect(): keep the long-lived imported modules out of
    # it (1.3 s a run otherwise); what the runs allocate is still collected.
    gc.freeze()
    return time.perf_counter()


def _config_model_settings(config_path):
    return (yaml.safe_load(Path(config_path).read_text()) or {}).get("model_config") or {}


def _text_args(args):
    return ["--text_backbone", args.text_backbone] if args.text_backbone else []


def _data_args(args):
    return ["--dataset", args.dataset, "--synthetic_sizes", args.synthetic_sizes]


# ---------------------------------------------------------------- the study encoder


def export_audio_encoder(model_dir, target):
    """Save the audio encoder of a trained atr model (Whisper-style) as a WhisperModel checkpoint for --audio_backbone."""
    from transformers import WhisperModel

    from atr import AtrModel

    model = AtrModel.from_pretrained(model_dir)  # the installed class: no code from the folder runs
    if model.config.audio_config.model_type != "whisper":
        raise ValueError(f"{model_dir} has a {model.config.audio_config.model_type} audio encoder: only Whisper ones can be exported")
    config = copy.deepcopy(model.config.audio_config)
    # Only the encoder is used; the unused decoder just has to be constructible at the encoder's width.
    config.decoder_attention_heads, config.decoder_ffn_dim = config.encoder_attention_heads, config.encoder_ffn_dim
    whisper = WhisperModel(config)
    whisper.encoder.load_state_dict(model.audio_model.encoder.state_dict())
    whisper.save_pretrained(target)
    return Path(target)


def audio_backbone(args):
    """The frozen audio backbone of the head runs: `--audio_backbone`, or the study encoder (trained by train.py if missing)."""
    if args.audio_backbone:
        return args.audio_backbone
    encoder = Path(args.encoder)
    exported = encoder / "audio_backbone"
    if not (exported / "config.json").exists():
        if not (encoder / "config.json").exists():
            head = {**_config_model_settings(args.config), **ENCODER_OVERRIDES}
            steps = ["--max_steps", str(args.encoder_steps)] if args.encoder_steps else []
            argv = ["--config", args.config, *_data_args(args), *_text_args(args), "--output_dir", str(encoder), *steps,
                    "--noise_probability", "0", "--model_config", json.dumps(head), "--save_strategy", "no", "--eval_split", "",
                    "--evaluate_test", "false", "--disable_tqdm", "true"]
            logger.info("training the study encoder: python train.py %s", shlex.join(argv))
            train.main(argv)
        export_audio_encoder(encoder, exported)
    return str(exported)


# ---------------------------------------------------------------- runs


def train_run(args, output_dir, seed, *, batch_size=None, model_config=None, train_flags=(), keep_model=True):
    """One `train.py` head run on the frozen backbones with `--cache_encoder_outputs`; a record of its settings and test metrics.

    `model_config` changes the heads (on top of the config's model_config and HEAD_DEFAULTS); `train_flags`, then
    `--train_args`, are more train.py flags (the last of a repeated flag wins). Training is clean (`--noise_probability
    0`) unless they say otherwise, so that only the studied setting differs between runs. Without `keep_model` the
    saved weights are deleted once the test metrics are in.
    """
    batch_size = batch_size or args.batch_size
    steps = max(1, args.samples_seen // batch_size)
    head = {**_config_model_settings(args.config), **HEAD_DEFAULTS, **(model_config or {})}
    argv = [
        "--config", args.config, *_data_args(args), "--audio_backbone", audio_backbone(args), *_text_args(args),
        "--model_config", json.dumps(head), "--cache_encoder_outputs", "--encoder_cache_dir", args.encoder_cache_dir,
        "--per_device_train_batch_size", str(batch_size), "--max_steps", str(steps), "--learning_rate", str(args.learning_rate),
        "--warmup_steps", "0.05", "--seed", str(seed), "--output_dir", str(output_dir), "--eval_strategy", "no",
        "--save_strategy", "no", "--eval_split", "", "--overwrite_output_dir", "true", "--disable_tqdm", "true",
        "--noise_probability", "0", *train_flags, *shlex.split(args.train_args),
    ]
    logger.info("python train.py %s", shlex.join(argv))
    start = time.perf_counter()
    trainer, results = train.main(argv)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    record = {
        "seed": seed, "batch_size": batch_size, "steps": trainer.state.global_step, "final_loss": losses[-1] if losses else None,
        "seconds": round(time.perf_counter() - start, 1), "model_dir": str(output_dir), "command": ["train.py", *argv],
        "metrics": {k.removeprefix("test_"): v for k, v in results.items() if k.removeprefix("test_") in METRIC_KEYS},
    }
    del trainer
    if not keep_model:
        for weights in Path(output_dir).glob("*.safetensors"):
            weights.unlink()
    return record


def evaluate_run(args, model_dir, output_dir, flags):
    """`evaluate.py --model model_dir ...flags`; {condition name: metrics} plus the command."""
    argv = ["--model", str(model_dir), "--output_dir", str(output_dir), "--overwrite", "--no_progress", *flags]
    logger.info("python evaluate.py %s", shlex.join(argv))
    results = evaluate_cli.main(argv, prog="evaluate.py")
    conditions = {r["condition"]: {k: float(r["metrics"][k]) for k in METRIC_KEYS} for r in results["conditions"]}
    return conditions, ["evaluate.py", *argv]


def test_data_flags(args):
    """evaluate.py flags for the test split the head runs were tested on."""
    flags = ["--dataset", args.dataset, "--split", "test"]
    if args.dataset == "synthetic":
        flags += ["--synthetic_size", args.synthetic_sizes.split(",")[2]]
    return flags


# ---------------------------------------------------------------- tables and plots


def summarise(runs, group_keys, metric_keys=METRIC_KEYS):
    """Mean and standard deviation (over seeds, ddof=0) of each metric per group of runs."""
    groups = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in group_keys), []).append(run)
    rows = []
    for key, members in groups.items():
        row = dict(zip(group_keys, key), seeds=len(members))
        for metric in metric_keys:
            values = np.array([m["metrics"][metric] for m in members])
            row[metric] = float(values.mean())
            row[f"{metric}_std"] = float(values.std())
        rows.append(row)
    return rows


def markdown_table(rows, group_keys, metric_keys=METRIC_KEYS):
    """A markdown table of `summarise` rows: 'mean ± std' per metric."""
    header = [*group_keys, *metric_keys, "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[k]) for k in group_keys]
        cells += [f"{row[m]:.3f} ± {row[m + '_std']:.3f}" for m in metric_keys]
        lines.append("| " + " | ".join(cells + [str(row["seeds"])]) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(args, name, runs, rows, table, figure, started, argv=None):
    """Write results.json (runs, summary, settings, provenance), results.md (the table) and the plot PNG to output_dir."""
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    elapsed = time.perf_counter() - started
    load = tuple(round(x, 2) for x in os.getloadavg()) if hasattr(os, "getloadavg") else None
    save_results(output_dir / "results.json", study=name, settings=vars(args), runs=runs, summary=rows, seconds=elapsed, load_average=load)
    command = f"python benchmarks/{name}.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    (output_dir / "results.md").write_text(
        f"{table}\n`{command.strip()}`: {elapsed / 60:.1f} min on {os.cpu_count()} CPU cores, load average {load}\n"
    )
    figure.savefig(output_dir / f"{name}.png", dpi=120, bbox_inches="tight")
    print(table)
    print(f"wrote {output_dir}/results.json, results.md and {name}.png in {elapsed / 60:.1f} min")

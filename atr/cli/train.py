"""atr-train (and the repo's train.py): resolve the run's settings, then build the model and data once, train, save, card.

The settings come first and whole: the YAML file (--config), the short-clip switch (a config made for short recordings
when the training clips are mostly padding) and the command-line flags; only then is the model built.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoProcessor, AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed

from atr import AtrConfig, AtrFeatureExtractor, AtrModel, AtrProcessor
from atr.augmentation import make_training_augmentation
from atr.cli.flags import MINILM_ID, DataArguments, ModelArguments, RunArguments
from atr.cli_errors import one_line_errors, run_cli
from atr.collator import AtrCollator
from atr.data import estimated_chunk_counts, median_duration_if_short
from atr.pretrained import resolve_backbone
from atr.settings import parse_with_config
from atr.splits import load_splits
from atr.trainer import AtrTrainer, last_complete_checkpoint

__all__ = ["MINILM_ID", "build_model_and_processor", "cli", "main", "parse_args", "parse_settings"]

logger = logging.getLogger("atr.train")
# configs/ sits beside the package in a checkout (and an editable install)
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pretrained.yaml"
LAUNCH = {"train.py": "accelerate launch train.py ...", "atr-train": "accelerate launch -m atr.cli.train ..."}
DESCRIPTION = (
    "Train an atr audio-text retrieval model and save it, with its processor and model card, to --output_dir. A YAML "
    "file (--config, default configs/pretrained.yaml: offline, CPU, about 5 minutes) gives every setting; the flags below "
    "override it, and the JSON blocks (--model_config, ...) update its blocks key by key. Every flag takes --a_b and "
    "--a-b. atr's own flags come first, then transformers' TrainingArguments. See README.md and docs/data.md."
)


def split_config(argv):
    """(the `--config` path, default configs/pretrained.yaml, and the other arguments)."""
    given = [arg for arg in argv if arg.startswith("--config=")]
    if given:  # --config=FILE.yaml
        return given[0].split("=", 1)[1], [arg for arg in argv if arg != given[0]]
    if "--config" not in argv:
        return DEFAULT_CONFIG, list(argv)
    index = argv.index("--config")
    return argv[index + 1], argv[:index] + argv[index + 2 :]


def help_ordered_parser(prog: str = "atr-train") -> HfArgumentParser:
    """The flags' parser: --help shows the description and --config, atr's groups, then TrainingArguments; a bad flag is one line."""
    usage = f"{prog} [--config FILE.yaml] [--flag VALUE ...]   (on GPUs: {LAUNCH.get(prog, LAUNCH['atr-train'])})"
    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments, TrainingArguments), prog=prog, usage=usage,
                              description=DESCRIPTION, add_help=False)
    start = parser.add_argument_group("start here")
    start.add_argument("-h", "--help", action="help", help="show this help and exit")
    # read before parsing (split_config), listed here for --help only
    start.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE.yaml",
                       help=f"YAML file of settings; the flags override it (default: {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])})")
    parser._optionals.title = "training arguments (transformers.TrainingArguments)"
    groups = parser._action_groups
    parser._action_groups = [start, *(g for g in groups if g not in (start, parser._optionals)), parser._optionals]
    return one_line_errors(parser, prog)


def parse_settings(argv: list[str], prog: str = "atr-train") -> tuple[tuple, list[str]]:
    """(the four argument dataclasses, the settings that differ from the config file's, as 'name: file -> effective')."""
    parser = help_ordered_parser(prog)
    # Batches of clips with similar chunk counts: one long file no longer pads a whole batch to its length.
    parser.set_defaults(train_sampling_strategy="group_by_length")
    config_path, argv = split_config(argv)
    if config_path == DEFAULT_CONFIG and not DEFAULT_CONFIG.is_file():
        raise FileNotFoundError(f"the default config {DEFAULT_CONFIG} is not here (atr installed without its repo): pass --config FILE.yaml")
    return parse_with_config(parser, config_path, argv)


def parse_args(argv: list[str]) -> tuple:
    """Parse `--config file.yaml` (default: configs/pretrained.yaml) with CLI flags overriding it."""
    return parse_settings(argv)[0]


def _json(value):
    return json.loads(value) if isinstance(value, str) else (value or {})


def kept_depth_warning(model_args, changes: list[str]) -> str | None:
    """A warning when the flags swap the config's audio backbone but keep the encoder depth the config chose for it."""
    swapped = next((line for line in changes if line.startswith("audio_backbone: ")), None)
    depth = _json(model_args.audio_config_overrides).get("encoder_layers")
    if swapped is None or depth is None or any(line.startswith("audio_config_overrides.encoder_layers: ") for line in changes):
        return None
    chosen_for = swapped.split(": ", 1)[1].split(" -> ")[0]
    return (f"--audio_backbone {model_args.audio_backbone} keeps only its first {depth} encoder layers, the depth the config "
            f"chose for {chosen_for}: pass --audio_config_overrides '{{\"encoder_layers\": N}}' for the depth it needs (docs/pretrained.md)")


def backbone_paths(model_args) -> tuple[str | None, str | None]:
    """(audio, text) loadable paths of the backbones, each resolved once (a faster-whisper folder is hashed to find its conversion)."""
    if model_args.model_name_or_path:
        return None, None
    audio_path = resolve_backbone(model_args.audio_backbone) if model_args.audio_backbone else None
    return audio_path, resolve_backbone(model_args.text_backbone)


def audio_encoder_config(model_args, audio_path=None):
    """The audio encoder's config, read without loading weights: the pretrained backbone's (with its overrides) or a new one."""
    if audio_path:
        return AutoConfig.from_pretrained(audio_path, **_json(model_args.audio_config_overrides))
    if model_args.audio_encoder_config:
        audio_config = _json(model_args.audio_encoder_config)
        return AutoConfig.for_model(audio_config.pop("model_type"), **audio_config)
    raise ValueError("no audio encoder given: pass --audio_backbone (pretrained) or --audio_encoder_config (from scratch)")


def backbone_feature_extractor(model_args, audio_config, audio_path=None):
    """The extractor of the pretrained audio backbone at `audio_path` (its preprocessor config), else one from the audio config."""
    overrides = _json(model_args.feature_extractor_config)
    if audio_path:
        try:  # a CLAP/Whisper checkpoint's preprocessor_config.json: mel scale, range, rate, fused or not
            # the window follows the encoder's config (Whisper's positions) unless overrides set window_s
            return AtrFeatureExtractor.from_pretrained_backbone(audio_path, audio_config=audio_config, **overrides)
        except OSError:
            logger.warning("%s has no preprocessor config: using the feature settings its audio config implies", model_args.audio_backbone)
    return AtrFeatureExtractor.from_audio_config(audio_config, **overrides)


def build_processor(model_args, audio_path=None, text_path=None) -> AtrProcessor:
    """The processor of the model `model_args` name, from config files only: the short-clip switch reads its window."""
    if model_args.model_name_or_path:
        return AutoProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    feature_extractor = backbone_feature_extractor(model_args, audio_encoder_config(model_args, audio_path), audio_path)
    return AtrProcessor(feature_extractor, AutoTokenizer.from_pretrained(text_path, trust_remote_code=model_args.trust_remote_code))


def build_model(model_args, audio_path=None, text_path=None) -> AtrModel:
    """The model: a trained atr model, or pretrained (or new) audio and pretrained text backbones under new heads."""
    head = _json(model_args.model_config)
    if model_args.model_name_or_path:
        return AtrModel.from_pretrained(model_args.model_name_or_path, **head)
    if audio_path:
        model = AtrModel.from_pretrained_backbones(
            audio=audio_path, text=text_path, audio_config_overrides=_json(model_args.audio_config_overrides), **head
        )
    else:
        text_model = AutoModel.from_pretrained(text_path, trust_remote_code=model_args.trust_remote_code)
        model = AtrModel(AtrConfig(audio_config=audio_encoder_config(model_args), text_config=text_model.config, **head))
        model.text_model.load_state_dict(text_model.state_dict())
    # the config keeps the names given, not the resolved paths
    model.config.text_backbone_id = model_args.text_backbone
    if model_args.audio_backbone:
        model.config.audio_backbone_id = model_args.audio_backbone
    return model


def build_model_and_processor(model_args: ModelArguments) -> tuple[AtrModel, AtrProcessor]:
    """The model and its processor, from a trained atr model or from backbones."""
    paths = backbone_paths(model_args)
    return build_model(model_args, *paths), build_processor(model_args, *paths)


@dataclass
class Run:
    """A training run's final settings and what they name: the splits, the processor and the backbones' loadable paths."""

    model_args: ModelArguments
    data_args: DataArguments
    run_args: RunArguments
    training_args: TrainingArguments
    splits: dict
    processor: AtrProcessor
    backbone_paths: tuple[str | None, str | None]


def prepare_run(argv, prog: str = "atr-train") -> Run:
    """The settings `argv` gives (logged where they differ from the config file), checked, with the data and processor they name."""
    (model_args, data_args, run_args, training_args), changes = parse_settings(argv, prog)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARN, format="%(asctime)s %(name)s: %(message)s")
    if changes:
        logger.info("settings that differ from %s: %s", split_config(argv)[0], "; ".join(changes))
    if warning := kept_depth_warning(model_args, changes):
        logger.warning(warning)
    check_output_dir(training_args, run_args)
    # The collator needs the raw audio/caption columns, and equal batches keep gathered negatives valid.
    training_args.remove_unused_columns = False
    # the shipped configs keep their worker alive; with no workers (e.g. --dataloader_num_workers 0) there is none to keep
    training_args.dataloader_persistent_workers &= training_args.dataloader_num_workers > 0
    paths = backbone_paths(model_args)
    return Run(model_args, data_args, run_args, training_args, load_splits(data_args, training_args),
               build_processor(model_args, *paths), paths)


def short_clip_argv(argv, model_args, data_args, run_args, train_dataset, window_s):
    """The arguments that train with --short_clip_config when the median clip fills under a quarter of the window, else None."""
    median = None if data_args.streaming else median_duration_if_short(train_dataset, window_s)
    if median is None:
        return None
    share = f"the training clips' median duration is {median:.2f} s, {100 * median / window_s:.0f}% of the {window_s:.2f} s window"
    if run_args.short_clip_config:
        logger.warning("%s: training with %s instead, made for short recordings (--short_clip_config '' keeps the window)",
                       share, run_args.short_clip_config)
        return ["--config", run_args.short_clip_config, *split_config(argv)[1], "--short_clip_config", ""]
    if model_args.audio_backbone:  # a pretrained encoder keeps its front end: only the window shrinks
        advice = ("--config configs/pretrained_short_clips.yaml, or for this backbone a shorter window, e.g. "
                  "--audio_config_overrides '{\"max_source_positions\": 125}' (2.5 s for Whisper)")
    else:
        advice = "--config configs/short_clips.yaml (1.24 s windows at a 10 ms hop; docs/benchmarks/quality.md)"
    logger.warning("%s: the rest is padding and the time resolution is coarse for them; for short recordings train with %s", share, advice)
    return None


def resolve_run(argv, prog: str = "atr-train") -> Run:
    """The run's final settings: the config file, switched to --short_clip_config for short clips, with the flags on top."""
    run = prepare_run(argv, prog)
    window_s = run.processor.feature_extractor.window_s
    switched = short_clip_argv(argv, run.model_args, run.data_args, run.run_args, run.splits["train"], window_s)
    # the switched arguments end with --short_clip_config '': they never switch again
    return prepare_run(switched, prog) if switched else run


def cached_training_data(model, processor, dataset, data_args, training_args, collator_kwargs):
    """Training rows and a CachedCollator reading the frozen encoders' outputs from disk (built on first use)."""
    from atr.cache import CachedCollator, build_audio_cache, build_text_cache

    config = model.config
    if not (config.freeze_audio_encoder or config.freeze_text_encoder):
        raise ValueError(
            "--cache_encoder_outputs needs a frozen encoder: set freeze_audio_encoder and/or freeze_text_encoder to true "
            "in --model_config (a trained encoder's outputs change every step)"
        )
    noisy = data_args.noise_probability > 0 and data_args.cache_num_views > 0
    if config.freeze_audio_encoder and data_args.speed_perturbation and not noisy:  # only the cached noisy views are resampled
        raise ValueError("--speed_perturbation reaches a cached frozen audio encoder through its noisy views: set --cache_num_views "
                         "and --noise_probability above 0, set --speed_perturbation 0, or drop --cache_encoder_outputs")
    noise = {"min_snr_db": data_args.noise_min_snr_db, "max_snr_db": data_args.noise_max_snr_db, "background_dir": data_args.background_noise_dir}
    if data_args.speed_perturbation:  # in the key only when on: caches built without it stay valid
        noise["speed_perturbation"] = data_args.speed_perturbation
    cache_kwargs = {"cache_root": data_args.encoder_cache_dir, "dtype": data_args.cache_dtype}
    model.to(training_args.device)
    text_cache = audio_cache = None
    # The main process builds, the others then find the finished cache.
    with training_args.main_process_first(desc="encoder output cache"):
        if config.freeze_text_encoder:
            text_cache = build_text_cache(model, processor, dataset, **cache_kwargs)
        if config.freeze_audio_encoder:
            # every view gets noise; half of them are resampled first when --speed_perturbation is on
            augment = make_training_augmentation(processor.feature_extractor.sampling_rate, 1.0, **noise) if noisy else None
            audio_cache = build_audio_cache(model, processor, dataset, num_views=data_args.cache_num_views, seed=training_args.seed,
                                            augment=augment, noise_settings=noise, **cache_kwargs)
    rows = dataset
    if audio_cache is not None:  # the audio column is never read again: keep the DataLoader off it
        rows = rows.select_columns([c for c in ("clip_index", "captions", training_args.length_column_name) if c in rows.column_names])
    collator = CachedCollator(processor, text_cache=text_cache, audio_cache=audio_cache, noise_probability=data_args.noise_probability, **collator_kwargs)
    return rows, collator


def training_data(model, run: Run):
    """The training rows (with the per-row seed index and, when grouping by length, chunk counts) and their collator."""
    data_args, training_args, processor = run.data_args, run.training_args, run.processor
    augment = make_training_augmentation(processor.feature_extractor.sampling_rate, data_args.noise_probability, data_args.noise_min_snr_db,
                                         data_args.noise_max_snr_db, data_args.background_noise_dir, data_args.speed_perturbation)
    collator_kwargs = dict(augment=augment, seed=training_args.seed, processor_kwargs={"max_train_chunks": data_args.max_train_chunks})
    train_dataset = run.splits["train"]
    # per-row random draws are keyed by (seed, epoch, clip_index); a streamed row's index is its place in the stream
    if data_args.streaming:
        train_dataset = train_dataset.map(lambda row, index: {"clip_index": index}, with_indices=True)
    else:
        train_dataset = train_dataset.add_column("clip_index", list(range(len(train_dataset))))
    if training_args.train_sampling_strategy == "group_by_length" and not data_args.streaming:
        lengths = estimated_chunk_counts(train_dataset, processor.feature_extractor.window_s)
        train_dataset = train_dataset.add_column(training_args.length_column_name, lengths)
    if data_args.cache_encoder_outputs:
        return cached_training_data(model, processor, train_dataset, data_args, training_args, collator_kwargs)
    return train_dataset, AtrCollator(processor, training=True, **collator_kwargs)


def check_output_dir(training_args, run_args):
    """Refuse to write over a saved model unless asked to, or resuming."""
    saved = Path(training_args.output_dir) / "config.json"
    if saved.exists() and not run_args.overwrite_output_dir and not training_args.resume_from_checkpoint:
        raise FileExistsError(
            f"{training_args.output_dir} already holds a saved model: pass --overwrite_output_dir to replace it, "
            "--resume_from_checkpoint to continue it, or choose another --output_dir"
        )


def push_folder(output_dir, repo_id, token=None, private=None):
    """Upload the final model folder (weights, config, Hub code, processor, tokenizer, card), never the checkpoints."""
    from huggingface_hub import create_repo, upload_folder

    create_repo(repo_id, token=token, private=private, exist_ok=True)
    return upload_folder(
        repo_id=repo_id, folder_path=output_dir, token=token, commit_message="Upload atr model",
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "run-*/**", "runs/**", "*.pt", "training_args.bin"],
    )


def search_hyperparameters(run: Run, trainer_kwargs, n_trials):
    """Run the optuna search over loss weights and learning rate; return a fresh model with the best, lr set in args."""
    from atr import hp_search

    model_args, training_args = run.model_args, run.training_args

    def build(overrides):
        config = json.dumps({**_json(model_args.model_config), **overrides})
        return build_model(dataclasses.replace(model_args, model_config=config), *run.backbone_paths)

    search_trainer = AtrTrainer(model_init=hp_search.make_model_init(build), **trainer_kwargs)
    best = hp_search.run(search_trainer, n_trials, seed=training_args.seed)
    logger.info("hyperparameter search: best validation objective %.4f with %s", best.objective, best.hyperparameters)
    training_args.learning_rate = best.hyperparameters["learning_rate"]
    weights = {name: best.hyperparameters[name] for name in hp_search.LOSS_WEIGHTS}
    model_args.model_config = json.dumps({**_json(model_args.model_config), **weights})
    set_seed(training_args.seed)  # the final model starts from the same initialisation as the trials did
    return build(weights)


def main(argv: list[str] | None = None, prog: str = "atr-train") -> tuple[AtrTrainer, dict]:
    """Train, save model + processor + card, evaluate the test split, optionally push to the Hub; returns (trainer, test results)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    run = resolve_run(argv, prog)
    data_args, run_args, training_args, splits = run.data_args, run.run_args, run.training_args, run.splits
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    set_seed(training_args.seed)
    model = build_model(run.model_args, *run.backbone_paths)
    train_dataset, train_collator = training_data(model, run)
    trainer_kwargs = dict(
        args=training_args, train_dataset=train_dataset, eval_dataset=splits["eval"], data_collator=train_collator,
        eval_collator=AtrCollator(run.processor, training=False), processing_class=run.processor,
    )
    default_threads = torch.get_num_threads()
    if run_args.torch_threads is not None:  # training only: the cache build and the evaluation keep every core
        torch.set_num_threads(run_args.torch_threads)
    try:
        if run_args.hp_search:
            model = search_hyperparameters(run, trainer_kwargs, run_args.hp_search)
        trainer = AtrTrainer(model=model, **trainer_kwargs)
        resume = training_args.resume_from_checkpoint
        if resume in ("True", "true", "latest"):
            resume = last_complete_checkpoint(training_args.output_dir)
        train_result = trainer.train(resume_from_checkpoint=resume)
    finally:
        torch.set_num_threads(default_threads)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)

    results = {}
    if run_args.evaluate_test and splits["test"] is not None:
        results = trainer.evaluate(splits["test"], metric_key_prefix="test")
        trainer.log_metrics("test", results)
        trainer.save_metrics("test", results)
    trainer.create_model_card(results={k.removeprefix("test_"): v for k, v in results.items()}, dataset=data_args.dataset,
                              split=data_args.test_split, data_args=vars(data_args))
    if push_to_hub and trainer.is_world_process_zero():
        if not training_args.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id <user>/<name>")
        push_folder(training_args.output_dir, training_args.hub_model_id, token=training_args.hub_token, private=training_args.hub_private_repo)
    return trainer, results


def cli(prog: str = "atr-train") -> None:
    """The `atr-train` command: main() with a user error as status 2 and one line (ATR_DEBUG=1: the traceback)."""
    # debug_flag=False: TrainingArguments has its own --debug
    sys.exit(run_cli(prog, lambda argv: main(argv, prog), debug_flag=False))


if __name__ == "__main__":
    cli()

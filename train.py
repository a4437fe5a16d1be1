"""Train an atr model: `accelerate launch train.py --config configs/X.yaml [--flag value ...]`; no arguments = configs/pretrained.yaml."""

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor, AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed

from atr import AtrConfig, AtrFeatureExtractor, AtrModel, AtrProcessor
from atr.augmentation import make_noise_augmentation, make_training_augmentation
from atr.collator import AtrCollator
from atr.data import estimated_chunk_counts, median_duration_if_short
from atr.pretrained import resolve_backbone
from atr.settings import parse_with_config
from atr.splits import load_splits
from atr.trainer import AtrTrainer, last_complete_checkpoint

logger = logging.getLogger("atr.train")
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "pretrained.yaml"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MERGED = ": updates the config file's block key by key (null clears it); unknown keys are refused."
USAGE = "train.py [--config FILE.yaml] [--flag VALUE ...]   (on GPUs: accelerate launch train.py ...)"
DESCRIPTION = (
    "Train an atr audio-text retrieval model and save it, with its processor and model card, to --output_dir. A YAML "
    "file (--config, default configs/pretrained.yaml: offline, CPU, about 5 minutes) gives every setting; the flags below "
    "override it, and the JSON blocks (--model_config, ...) update its blocks key by key. Every flag takes --a_b and "
    "--a-b. atr's own flags come first, then transformers' TrainingArguments. See README.md and docs/data.md."
)


@dataclass
class ModelArguments:
    """Which model to train: a trained atr model to continue, or pretrained / from-scratch backbones plus head settings."""

    _argument_group_name = "model: a trained atr model, or the backbones and head settings"

    model_name_or_path: str | None = field(default=None, metadata={"help": "A trained atr model (dir or Hub id) to fine-tune."})
    audio_backbone: str | None = field(default=None, metadata={"help": "CLAP or Whisper checkpoint (Hub id or path)."})
    audio_encoder_config: str | None = field(
        default=None, metadata={"help": "JSON config of an audio encoder trained from scratch, e.g. a small Whisper."}
    )
    audio_config_overrides: str | None = field(default=None, metadata={"help": "JSON changes to the pretrained audio config" + MERGED})
    text_backbone: str = field(default=MINILM_ID, metadata={"help": "Any transformers text encoder (Hub id or path)."})
    model_config: str | None = field(default=None, metadata={"help": "JSON AtrConfig settings (head, pooling, loss weights, freezing)" + MERGED})
    feature_extractor_config: str | None = field(default=None, metadata={"help": "JSON AtrFeatureExtractor settings" + MERGED})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped in --model_name_or_path / --text_backbone repos (only ones you trust; atr models need none)."}
    )


@dataclass
class DataArguments:
    """Where the audio-caption pairs come from and how training audio is augmented."""

    _argument_group_name = "data: the audio-caption pairs and training-time noise"

    dataset: str = field(default="synthetic", metadata={"help": "'synthetic', a Hub dataset id, an audiofolder dir or a CSV/JSONL manifest."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    train_split: str = "train"
    eval_split: str | None = "validation"
    test_split: str | None = "test"
    audio_column: str | None = field(default=None, metadata={"help": "Audio column (default: audio, file_name, path, ...)."})
    caption_columns: str = field(default="", metadata={"help": "Comma-separated caption column names (default: caption or captions)."})
    streaming: bool = False
    group_by: str | None = field(default=None, metadata={"help": "Merge rows of the same clip (one caption per row, e.g. AudioCaps) by this column."})
    caption_separator: str | None = field(default=None, metadata={"help": "Split caption strings that join several captions on this (e.g. '\\n')."})
    validation_fraction: float = field(
        default=0.1, metadata={"help": "With no eval split in the data and evaluation on: the share of train clips held out for it (seeded)."}
    )
    test_fraction: float = field(default=0.1, metadata={"help": "A manifest without a split column: the share of its clips held out as the test split (seeded)."})
    skip_bad_audio: bool = field(default=False, metadata={"help": "Skip missing or corrupt audio files (and report them) instead of stopping."})
    noise_probability: float = field(default=0.5, metadata={"help": "Chance that a training clip gets noise."})
    noise_min_snr_db: float = 5.0
    noise_max_snr_db: float = 15.0
    background_noise_dir: str | None = field(default=None, metadata={"help": "Folder of noise recordings mixed into training audio."})
    speed_perturbation: float = field(default=0.0, metadata={"help": "Resample half the training clips by a random factor in [1-s, 1+s] (0: off)."})
    max_train_chunks: int | None = field(default=None, metadata={"help": "Cap on chunks per training clip (sampled)."})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    synthetic_sizes: str = field(default="2000,200,200", metadata={"help": "train,validation,test clip counts of the synthetic set."})
    cache_encoder_outputs: bool = field(
        default=False, metadata={"help": "Encode training clips and captions once with the frozen encoder(s) and train the heads from the cache."}
    )
    cache_num_views: int = field(default=4, metadata={"help": "Noisy views cached per training clip (besides the clean one)."})
    encoder_cache_dir: str | None = field(default=None, metadata={"help": "Where encoder caches live (default: next to the datasets cache)."})
    cache_dtype: str = field(default="float32", metadata={"help": "Storage type of cached encoder states: float32 or float16 (half the disk)."})


@dataclass
class RunArguments:
    """What to do around training: overwrite protection and the final evaluation."""

    _argument_group_name = "run: overwrite protection, final evaluation, hyperparameter search"

    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing over a model already saved in output_dir."})
    evaluate_test: bool = field(default=True, metadata={"help": "Evaluate the test split at the end and write the numbers into the card."})
    hp_search: int = field(
        default=0, metadata={"help": "First search this many optuna trials over the loss weights and learning rate (scored on validation), then train with the best."}
    )
    short_clip_config: str | None = field(
        default=None, metadata={"help": "Train with this config instead when the median training clip fills under a quarter of "
                                "the window (set in a YAML file: a path beside it); '' never switches."}
    )
    torch_threads: int | None = field(
        default=None, metadata={"help": "PyTorch CPU threads of the main process (default: PyTorch's). On a small CPU with "
                                "--dataloader_num_workers, fewer leave cores to the workers' audio decoding."}
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


def parse_args(argv):
    """Parse `--config file.yaml` (default: configs/pretrained.yaml) with CLI flags overriding it."""
    return parse_settings(argv)[0]


def help_ordered_parser():
    """The flags' parser: --help shows the description and --config, atr's groups, then TrainingArguments; a bad flag is one line."""
    from atr.cli_errors import one_line_errors

    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments, TrainingArguments), prog="train.py", usage=USAGE,
                              description=DESCRIPTION, add_help=False)
    start = parser.add_argument_group("start here")
    start.add_argument("-h", "--help", action="help", help="show this help and exit")
    # read before parsing (split_config), listed here for --help only
    start.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE.yaml",
                       help=f"YAML file of settings; the flags override it (default: {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])})")
    parser._optionals.title = "training arguments (transformers.TrainingArguments)"
    groups = parser._action_groups
    parser._action_groups = [start, *(g for g in groups if g not in (start, parser._optionals)), parser._optionals]
    return one_line_errors(parser, "train.py")


def parse_settings(argv):
    """(the four argument dataclasses, the settings that differ from the config file's, as 'name: file -> effective')."""
    parser = help_ordered_parser()
    # Batches of clips with similar chunk counts: one long file no longer pads a whole batch to its length.
    parser.set_defaults(train_sampling_strategy="group_by_length")
    config_path, argv = split_config(argv)
    return parse_with_config(parser, config_path, argv)


def _json(value):
    return json.loads(value) if isinstance(value, str) else (value or {})


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


def build_model_and_processor(model_args):
    """The model and its processor, from a trained atr model or from backbones."""
    if model_args.model_name_or_path:
        model = AtrModel.from_pretrained(model_args.model_name_or_path, **_json(model_args.model_config))
        return model, AutoProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    # resolved once (a faster-whisper folder is hashed to find its conversion); the config keeps the names given, below
    text_path = resolve_backbone(model_args.text_backbone)
    audio_path = resolve_backbone(model_args.audio_backbone) if model_args.audio_backbone else None
    head = _json(model_args.model_config)
    if audio_path:
        model = AtrModel.from_pretrained_backbones(
            audio=audio_path, text=text_path, audio_config_overrides=_json(model_args.audio_config_overrides), **head
        )
    elif model_args.audio_encoder_config:
        from transformers import AutoConfig, AutoModel

        audio_config = _json(model_args.audio_encoder_config)
        audio_config = AutoConfig.for_model(audio_config.pop("model_type"), **audio_config)
        text_model = AutoModel.from_pretrained(text_path, trust_remote_code=model_args.trust_remote_code)
        model = AtrModel(AtrConfig(audio_config=audio_config, text_config=text_model.config, **head))
        model.text_model.load_state_dict(text_model.state_dict())
    else:
        raise ValueError("no audio encoder given: pass --audio_backbone (pretrained) or --audio_encoder_config (from scratch)")
    model.config.text_backbone_id = model_args.text_backbone
    if model_args.audio_backbone:
        model.config.audio_backbone_id = model_args.audio_backbone
    feature_extractor = backbone_feature_extractor(model_args, model.config.audio_config, audio_path)
    processor = AtrProcessor(feature_extractor, AutoTokenizer.from_pretrained(text_path, trust_remote_code=model_args.trust_remote_code))
    return model, processor


def cached_training_data(model, processor, dataset, data_args, training_args, collator_kwargs):
    """Training rows and a CachedCollator reading the frozen encoders' outputs from disk (built on first use)."""
    from atr.cache import CachedCollator, build_audio_cache, build_text_cache

    config = model.config
    if not (config.freeze_audio_encoder or config.freeze_text_encoder):
        raise ValueError(
            "--cache_encoder_outputs needs a frozen encoder: set freeze_audio_encoder and/or freeze_text_encoder to true "
            "in --model_config (a trained encoder's outputs change every step)"
        )
    if config.freeze_audio_encoder and data_args.speed_perturbation:  # the cached views hold noise only
        raise ValueError("--speed_perturbation never reaches a cached frozen audio encoder: set it to 0 or drop --cache_encoder_outputs")
    noise = {"min_snr_db": data_args.noise_min_snr_db, "max_snr_db": data_args.noise_max_snr_db, "background_dir": data_args.background_noise_dir}
    cache_kwargs = {"cache_root": data_args.encoder_cache_dir, "dtype": data_args.cache_dtype}
    model.to(training_args.device)
    text_cache = audio_cache = None
    # The main process builds, the others then find the finished cache.
    with training_args.main_process_first(desc="encoder output cache"):
        if config.freeze_text_encoder:
            text_cache = build_text_cache(model, processor, dataset, **cache_kwargs)
        if config.freeze_audio_encoder:
            noisy = data_args.noise_probability > 0 and data_args.cache_num_views > 0
            audio_cache = build_audio_cache(
                model, processor, dataset, num_views=data_args.cache_num_views, seed=training_args.seed,
                augment=make_noise_augmentation(p=1.0, **noise) if noisy else None, noise_settings=noise, **cache_kwargs,
            )
    rows = dataset
    if audio_cache is not None:  # the audio column is never read again: keep the DataLoader off it
        rows = rows.select_columns([c for c in ("clip_index", "captions", training_args.length_column_name) if c in rows.column_names])
    collator = CachedCollator(processor, text_cache=text_cache, audio_cache=audio_cache, noise_probability=data_args.noise_probability, **collator_kwargs)
    return rows, collator


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
        advice = "--config configs/short_clips.yaml (1.24 s windows at a 10 ms hop; BENCHMARKS.md, 'Spoken words')"
    logger.warning("%s: the rest is padding and the time resolution is coarse for them; for short recordings train with %s", share, advice)
    return None


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


def search_hyperparameters(model_args, training_args, trainer_kwargs, n_trials):
    """Run the optuna search over loss weights and learning rate; return a fresh model with the best, lr set in args."""
    from atr import hp_search

    def build(overrides):
        config = json.dumps({**_json(model_args.model_config), **overrides})
        return build_model_and_processor(dataclasses.replace(model_args, model_config=config))[0]

    search_trainer = AtrTrainer(model_init=hp_search.make_model_init(build), **trainer_kwargs)
    best = hp_search.run(search_trainer, n_trials, seed=training_args.seed)
    logger.info("hyperparameter search: best validation objective %.4f with %s", best.objective, best.hyperparameters)
    training_args.learning_rate = best.hyperparameters["learning_rate"]
    weights = {name: best.hyperparameters[name] for name in hp_search.LOSS_WEIGHTS}
    model_args.model_config = json.dumps({**_json(model_args.model_config), **weights})
    set_seed(training_args.seed)  # the final model starts from the same initialisation as the trials did
    return build(weights)


def main(argv=None):
    """Train, save model + processor + card, evaluate the test split, optionally push to the Hub."""
    argv = sys.argv[1:] if argv is None else list(argv)
    (model_args, data_args, run_args, training_args), changes = parse_settings(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARN, format="%(asctime)s %(name)s: %(message)s")
    if changes:
        logger.info("settings that differ from %s: %s", split_config(argv)[0], "; ".join(changes))
    check_output_dir(training_args, run_args)
    # The collator needs the raw audio/caption columns, and equal batches keep gathered negatives valid.
    training_args.remove_unused_columns = False
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    # the shipped configs keep their worker alive; with no workers (e.g. --dataloader_num_workers 0) there is none to keep
    training_args.dataloader_persistent_workers &= training_args.dataloader_num_workers > 0
    set_seed(training_args.seed)

    model, processor = build_model_and_processor(model_args)
    splits = load_splits(data_args, training_args)
    short_argv = short_clip_argv(argv, model_args, data_args, run_args, splits["train"], processor.feature_extractor.window_s)
    if short_argv:
        return main(short_argv)
    augment = make_training_augmentation(processor.feature_extractor.sampling_rate, data_args.noise_probability, data_args.noise_min_snr_db,
                                         data_args.noise_max_snr_db, data_args.background_noise_dir, data_args.speed_perturbation)
    collator_kwargs = dict(augment=augment, seed=training_args.seed, processor_kwargs={"max_train_chunks": data_args.max_train_chunks})
    train_dataset = splits["train"]
    # per-row random draws are keyed by (seed, epoch, clip_index); a streamed row's index is its place in the stream
    if data_args.streaming:
        train_dataset = train_dataset.map(lambda row, index: {"clip_index": index}, with_indices=True)
    else:
        train_dataset = train_dataset.add_column("clip_index", list(range(len(train_dataset))))
    if training_args.train_sampling_strategy == "group_by_length" and not data_args.streaming:
        lengths = estimated_chunk_counts(train_dataset, processor.feature_extractor.window_s)
        train_dataset = train_dataset.add_column(training_args.length_column_name, lengths)
    if data_args.cache_encoder_outputs:
        train_dataset, train_collator = cached_training_data(model, processor, train_dataset, data_args, training_args, collator_kwargs)
    else:
        train_collator = AtrCollator(processor, training=True, **collator_kwargs)
    eval_collator = AtrCollator(processor, training=False)
    card_kwargs = {"dataset": data_args.dataset, "data_args": vars(data_args)}
    trainer_kwargs = dict(
        args=training_args, train_dataset=train_dataset, eval_dataset=splits["eval"], data_collator=train_collator,
        eval_collator=eval_collator, processing_class=processor, card_kwargs=card_kwargs,
    )
    default_threads = torch.get_num_threads()
    if run_args.torch_threads is not None:  # training only: the cache build and the evaluation keep every core
        torch.set_num_threads(run_args.torch_threads)
    try:
        if run_args.hp_search:
            model = search_hyperparameters(model_args, training_args, trainer_kwargs, run_args.hp_search)
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
    card_kwargs["results"] = {k.removeprefix("test_"): v for k, v in results.items()}
    card_kwargs["split"] = data_args.test_split
    trainer.create_model_card()
    if push_to_hub and trainer.is_world_process_zero():
        if not training_args.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id <user>/<name>")
        push_folder(training_args.output_dir, training_args.hub_model_id, token=training_args.hub_token, private=training_args.hub_private_repo)
    return trainer, results


if __name__ == "__main__":
    from atr.cli_errors import run_cli

    sys.exit(run_cli("train.py", main, debug_flag=False))  # a user error: status 2 and one line (ATR_DEBUG=1: traceback)

"""The flags of atr-train and atr-evaluate, each defined once: the data and model flags they share, then train's own.

Each group is a dataclass read by transformers' `HfArgumentParser` (a field's name is its flag, its default and help
are the flag's); train.py's YAML configs set the same names.
"""

import argparse
from dataclasses import dataclass, field

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MERGED = ": updates the config file's block key by key (null clears it); unknown keys are refused."


@dataclass
class DatasetArguments:
    """Where the audio-caption pairs come from: the data flags atr-train and atr-evaluate share."""

    _argument_group_name = "data: the audio-caption pairs"

    dataset: str = field(default="synthetic", metadata={"help": "'synthetic', a Hub dataset id, an audiofolder dir or a CSV/JSONL manifest."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    audio_column: str | None = field(default=None, metadata={"help": "Audio column (default: audio, file_name, path, ...)."})
    caption_columns: str = field(default="", metadata={"help": "Comma-separated caption column names (default: caption or captions)."})
    group_by: str | None = field(default=None, metadata={"help": "Merge rows of the same clip (one caption per row, e.g. AudioCaps) by this column."})
    caption_separator: str | None = field(default=None, metadata={"help": "Split caption strings that join several captions on this (e.g. '\\n')."})
    skip_bad_audio: bool = field(default=False, metadata={"help": "Skip missing or corrupt audio files (and report them) instead of stopping."})


@dataclass
class RemoteCodeArguments:
    """Whether code shipped in a model repo may run: the model flag atr-train and atr-evaluate share."""

    _argument_group_name = "model code"

    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped in the model or backbone repos given (only ones you trust; atr models need none)."}
    )


def dataset_source_kwargs(args: DatasetArguments | argparse.Namespace) -> dict:
    """`load_audio_text_dataset`'s keywords from the shared data flags (on DatasetArguments or a parsed namespace)."""
    return dict(
        config_name=args.dataset_config, audio_column=args.audio_column, skip_bad_audio=args.skip_bad_audio,
        caption_columns=tuple(c for c in args.caption_columns.split(",") if c) or None, group_by=args.group_by,
        caption_separator=args.caption_separator,
    )


@dataclass
class ModelArguments(RemoteCodeArguments):
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


@dataclass
class DataArguments(DatasetArguments):
    """The shared data flags, plus the training run's splits, sampling, training-time noise and encoder-output cache."""

    _argument_group_name = "data: the audio-caption pairs and training-time noise"

    train_split: str = "train"
    eval_split: str | None = "validation"
    test_split: str | None = "test"
    streaming: bool = False
    validation_fraction: float = field(
        default=0.1, metadata={"help": "With no eval split in the data and evaluation on: the share of train clips held out for it (seeded)."}
    )
    test_fraction: float = field(default=0.1, metadata={"help": "A manifest without a split column: the share of its clips held out as the test split (seeded)."})
    noise_probability: float = field(default=0.5, metadata={"help": "Chance that a training clip gets noise."})
    noise_min_snr_db: float = 5.0
    noise_max_snr_db: float = 15.0
    background_noise_dir: str | None = field(default=None, metadata={"help": "Folder of noise recordings mixed into training audio."})
    speed_perturbation: float = field(default=0.0, metadata={"help": "Resample half the training clips (cached: half the noisy views) by a random factor in [1-s, 1+s] (0: off)."})
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

"""The train, eval and test datasets of a training run (atr-train's `DataArguments`): loaded splits and seeded hold-outs.

A source without an eval split (an audiofolder without validation/, a manifest without 'validation' rows) gives a
seeded slice of train to evaluation during training. A CSV/JSONL manifest without a `split` column gives a seeded
slice of its rows to the test split, so no run ever tests on the rows it trained on.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from .cli.flags import DataArguments, dataset_source_kwargs
from .data import has_split, hold_out, is_unsplit_manifest, load_audio_text_dataset

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset
    from transformers import TrainingArguments

logger = logging.getLogger("atr.train")


def _evaluating(training_args) -> bool:
    """Whether the run evaluates during training (or picks its best checkpoint, which needs evaluations)."""
    return training_args is not None and (training_args.eval_strategy != "no" or training_args.load_best_model_at_end)


def load_splits(data_args: DataArguments, training_args: TrainingArguments | None = None) -> dict[str, Dataset | IterableDataset | None]:
    """Train, eval and test datasets (eval/test None when their split name is empty).

    With no eval split in the source, a seeded slice of train is held out when `training_args` evaluate during
    training, and evaluation is skipped otherwise; the log says which. A manifest without a `split` column holds out
    `test_fraction` of its rows (seeded) as the test split first.
    """
    seed = training_args.seed if training_args is not None else 0
    unsplit = is_unsplit_manifest(data_args.dataset)
    test_split = data_args.test_split
    if unsplit:  # one table for every split: train loads it whole, test and eval are cut from it below
        data_args = dataclasses.replace(data_args, test_split=None)
    holdout = False
    if data_args.eval_split and (unsplit or not has_split(data_args.dataset, data_args.eval_split, data_args.dataset_config)):
        evaluating = _evaluating(training_args)
        where = f"{data_args.dataset} has no {data_args.eval_split!r} split"
        if evaluating and data_args.streaming:
            raise ValueError(f"{where} to evaluate on, and a streamed train split cannot be sliced: pass --eval_split "
                             "with an existing split, or --eval_strategy no")
        if evaluating:
            logger.info("%s: holding out %.0f%% of the train clips (seed %d) for evaluation during training",
                        where, 100 * data_args.validation_fraction, seed)
        else:
            logger.info("%s and evaluation during training is off: no validation set, training on all of train", where)
        holdout, data_args = evaluating, dataclasses.replace(data_args, eval_split=None)
    synthetic_sizes = dict(zip(("train", "validation", "test"), (int(n) for n in data_args.synthetic_sizes.split(","))))
    splits = {}
    for name, split, limit in (
        ("train", data_args.train_split, data_args.max_train_samples),
        ("eval", data_args.eval_split, data_args.max_eval_samples),
        ("test", data_args.test_split, data_args.max_eval_samples),
    ):
        if not split:
            splits[name] = None
            continue
        load_kwargs = {"n": synthetic_sizes.get(split)} if data_args.dataset == "synthetic" else None
        dataset = load_audio_text_dataset(data_args.dataset, split, streaming=data_args.streaming, load_kwargs=load_kwargs,
                                          **dataset_source_kwargs(data_args))
        if limit is not None and not data_args.streaming:
            dataset = dataset.select(range(min(limit, len(dataset))))
        splits[name] = dataset
    if unsplit and test_split:
        rows = len(splits["train"])
        splits["train"], splits["test"] = hold_out(splits["train"], data_args.test_fraction, seed, name="test")
        logger.info("%s has no 'split' column: held out %d of %d rows as the test split (--test_fraction %s, seed %d)",
                    data_args.dataset, len(splits["test"]), rows, data_args.test_fraction, seed)
    if holdout:
        splits["train"], splits["eval"] = hold_out(splits["train"], data_args.validation_fraction, seed)
        logger.info("held out %d of %d train clips for evaluation", len(splits["eval"]), len(splits["eval"]) + len(splits["train"]))
    return splits

"""The batch collator: rows with audio and captions -> model inputs, with seeded per-row draws."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .data import _audio_name, decode_audio

if TYPE_CHECKING:
    from transformers import ProcessorMixin


class AtrCollator:
    """Rows with `audio` and `captions` -> model inputs: decode, resample, augment (training) and run the processor.

    Training: one caption per clip, its noise and its chunk draw come from a stream seeded by (seed, epoch, the row's
    `clip_index`: its index in the training set), so the draws depend neither on the number of processes or
    DataLoader workers nor on batch order, and a resumed run draws exactly what the uninterrupted run drew. The
    Trainer sets the epoch (`set_epoch`) before it makes each epoch's DataLoader iterator; it lives in shared memory,
    so persistent DataLoader workers, which keep their copy of the collator, see it too.
    Evaluation: every caption of every clip plus `caption_to_audio` (the clip index of each caption).
    """

    def __init__(self, processor: ProcessorMixin, training: bool = True, seed: int = 0, augment: Callable | None = None,
                 processor_kwargs: dict | None = None):
        self.processor = processor
        self.training = training
        self.seed = seed
        self.augment = augment
        self.processor_kwargs = dict(processor_kwargs or {})
        # shared memory: a worker's copy (forked, or pickled by torch.multiprocessing) reads what set_epoch writes
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    @property
    def sampling_rate(self) -> int:
        """The audio backbone's sampling rate, from the processor's feature extractor."""
        return self.processor.feature_extractor.sampling_rate

    @property
    def epoch(self) -> int:
        """The epoch whose draws the next batches get."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's captions, noise and chunks, in this process and in its DataLoader workers."""
        self._epoch.fill_(int(epoch))

    def _row_seeds(self, rows: list[dict]) -> list[int]:
        """One seed per row from (seed, epoch, clip_index): the same wherever and whenever the row is collated."""
        if "clip_index" not in rows[0]:
            raise ValueError("training rows need a clip_index column (each row's index in the training set): "
                             "dataset.add_column('clip_index', list(range(len(dataset))))")
        return [int(np.random.default_rng([self.seed, self.epoch, int(row["clip_index"])]).integers(0, 2**32)) for row in rows]

    def _augment(self, wave: np.ndarray, seed: int) -> np.ndarray:
        """Apply the augmentation with the global RNGs audiomentations reads seeded per row, then restore them."""
        python_state, numpy_state = random.getstate(), np.random.get_state()
        random.seed(int(seed))
        np.random.seed(int(seed))
        try:
            return self.augment(samples=wave, sample_rate=self.sampling_rate)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    def __call__(self, rows: list[dict]):
        """Collates a list of dataset rows into one batch."""
        if not rows:
            raise ValueError("AtrCollator got an empty list of rows: the DataLoader produced an empty batch")
        sampling_rate = self.sampling_rate
        waves = [decode_audio(row["audio"], sampling_rate) for row in rows]
        for index, row in enumerate(rows):
            if not row["captions"]:
                raise ValueError(f"row {index} of the batch ({_audio_name(row['audio'])}) has no captions")
        options = dict(self.processor_kwargs)
        if self.training:
            seeds = self._row_seeds(rows)
            if self.augment is not None:
                waves = [self._augment(wave, seed) for wave, seed in zip(waves, seeds)]
            texts = [row["captions"][int(seed % len(row["captions"]))] for row, seed in zip(rows, seeds)]
            # seeded choice of chunks when a clip has too many
            options.update(training=True, generator=np.random.default_rng([self.seed, int(seeds[0])]))
        else:
            texts = [caption for row in rows for caption in row["captions"]]
            caption_to_audio = [i for i, row in enumerate(rows) for _ in row["captions"]]
        batch = self.processor(audio=waves, text=texts, sampling_rate=sampling_rate, return_tensors="pt", **options)
        if self.training:
            batch["return_loss"] = True
        else:
            batch["caption_to_audio"] = torch.tensor(caption_to_audio, dtype=torch.long)
        return batch

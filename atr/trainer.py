"""AtrTrainer: a transformers Trainer for the hybrid loss, with retrieval metrics at evaluation and our model card."""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate.utils import gather_object
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from .embedding import embed_dataset
from .loss_atr import LOSS_TERMS
from .metrics import audio_text_retrieval_metrics

if TYPE_CHECKING:
    from datasets import Dataset
    from torch import nn

    from .modeling_atr import AtrOutput

logger = logging.getLogger(__name__)
# Inference Endpoints run handler.py (atr/handler.py) and install requirements.txt from a model repo
ENDPOINT_REQUIREMENTS = "soundfile\nsoxr\n"


def write_endpoint_handler(output_dir: str | os.PathLike) -> None:
    """Write the Inference Endpoints custom handler (handler.py) and the packages it needs (requirements.txt) into a model folder."""
    output_dir = Path(output_dir)
    (output_dir / "handler.py").write_text(Path(__file__).with_name("handler.py").read_text())
    (output_dir / "requirements.txt").write_text(ENDPOINT_REQUIREMENTS)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` of `output_dir` that holds trainer_state.json (written last), else None.

    A run killed while saving leaves a newer checkpoint without it, which transformers' get_last_checkpoint would
    pick and then fail on every resume; such checkpoints are skipped and named in a warning.
    """
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    found.sort(key=lambda p: int(p.name.split("-")[1]), reverse=True)
    complete = next((p for p in found if (p / "trainer_state.json").is_file()), None)
    partial = [p.name for p in found[: found.index(complete) if complete else len(found)]]
    if partial:
        logger.warning("skipping %s: no trainer_state.json (a save was interrupted); %s", ", ".join(partial),
                       f"resuming from {complete}" if complete else "no complete checkpoint is left")
    return None if complete is None else str(complete)


class _CollatorEpoch(TrainerCallback):
    """Tell the training collator the epoch before the epoch's DataLoader iterator is made (also the resumed one's)."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is whole at an epoch's start and epoch + fraction in a resumed checkpoint's state
        self.collator.set_epoch(int(state.epoch))


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' LengthGroupedSampler with the order drawn from (seed, epoch), so a resumed epoch has the same batches."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        # a plain list: datasets 5 hands over a lazy Column, and one Arrow lookup per item per epoch costs seconds
        super().__init__(batch_size, lengths=[int(length) for length in lengths], generator=torch.Generator())
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Trainer / accelerate before each epoch."""
        self.epoch = int(epoch)

    def __iter__(self):
        # seed + epoch, as accelerate's SeedableRandomSampler does for the default shuffled order
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class _ClampLogitScale(TrainerCallback):
    """After each optimizer step, clamp the model's logit scale to the configured cap (open_clip's convention)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.accelerator.unwrap_model(self.trainer.model).clamp_logit_scale_()


class AtrTrainer(Trainer):
    """Trainer whose loss is the model's hybrid loss; evaluation ranks the whole eval split (R@K, mAP@10, both directions)."""

    # The model returns a batch-mean loss; Trainer divides by the accumulation steps exactly once.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, eval_collator: Callable[[list[dict]], dict] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator
        self._term_sums = defaultdict(float)
        self._term_count = 0
        self.add_callback(_ClampLogitScale(self))
        if hasattr(self.data_collator, "set_epoch"):
            self.add_callback(_CollatorEpoch(self.data_collator))

    def _save(self, output_dir=None, state_dict=None):
        """Save as Trainer does, plus the Inference Endpoints handler: every saved model folder can be deployed."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # the main process only: the others never create the folder
            write_endpoint_handler(output_dir or self.args.output_dir)

    def _get_train_sampler(self, train_dataset=None):
        """Trainer's sampler; its length-grouped one (unseeded in transformers) reseeded per epoch for exact resumes."""
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
        return sampler

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Trainer's choice minus the temperature and the learned pooling query: decaying them pulls them to 0."""
        return [n for n in super().get_decay_parameter_names(model) if not n.endswith(("logit_scale", "chunk_pooling.query"))]

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor | tuple[torch.Tensor, AtrOutput]:
        """Hybrid loss from the model's forward, its alignment weights warmed up by step; its terms are accumulated for logging."""
        scale = self.accelerator.unwrap_model(model).hybrid_loss.warmup_scale(self.state.global_step)
        outputs = model(**{**inputs, "return_loss": True, "alignment_scale": scale})
        if model.training:
            for term in LOSS_TERMS:
                self._term_sums[term] += outputs[term].detach().float().item()
            self._term_count += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each hybrid-loss term since the last training log."""
        if "loss" in logs and self._term_count:
            for term, total in self._term_sums.items():
                logs[term] = round(total / self._term_count, 4)
            self._term_sums.clear()
            self._term_count = 0
        super().log(logs, start_time)

    def evaluate(self, eval_dataset: Dataset | None = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Embed the whole eval split (sharded over processes) and report retrieval metrics in both directions."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if self.eval_collator is None:
            raise ValueError("AtrTrainer.evaluate needs eval_collator= (a collator that keeps every caption)")
        accelerator = self.accelerator
        shard = dataset.shard(accelerator.num_processes, accelerator.process_index, contiguous=True)
        model = accelerator.unwrap_model(self.model)
        was_training = model.training
        embedded = embed_dataset(
            model, self.eval_collator, shard, self.args.per_device_eval_batch_size, progress=not self.args.disable_tqdm and accelerator.is_main_process
        )
        audio, text, caption_to_audio = embedded.audio, embedded.text, embedded.caption_to_audio
        model.train(was_training)
        parts = gather_object([(audio.numpy(), text.numpy(), caption_to_audio.numpy())])
        audio_offset = np.cumsum([0] + [p[0].shape[0] for p in parts])[:-1]
        audio = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        text = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        caption_to_audio = np.concatenate([p[2] + off for p, off in zip(parts, audio_offset)]).tolist()
        results = audio_text_retrieval_metrics(audio, text, caption_to_audio)
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in results.items() if np.isscalar(v)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def create_model_card(self, results: dict[str, float] | None = None, *, dataset: str | None = None, split: str | None = None,
                          data_args: dict | None = None, **trainer_card_kwargs) -> None:
        """Write atr's model card (config, loss, training set-up, the given results) instead of Trainer's generic one."""
        from .model_card import write_model_card

        # Trainer.push_to_hub passes its own card keywords (model_name, tags, ...): atr's card does not use them
        if self.is_world_process_zero():
            model = self.accelerator.unwrap_model(self.model)
            write_model_card(self.args.output_dir, model.config, training_args=self.args.to_dict(), results=results, model=model,
                             processor=self.processing_class, dataset=dataset, split=split, data_args=data_args)

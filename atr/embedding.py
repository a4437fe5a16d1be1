"""The one embedding loop: clips and captions in batches, for evaluation, the search index and the benchmarks.

Clips are grouped by chunk count (and captions by token count) before batching, so a batch is padded only to
lengths close to its own, and the outputs come back in input order. Any model with `AtrModel`'s
`get_audio_features` / `get_text_features` works: `AtrModel`, `atr.onnx.AtrOnnxModel`, the evaluation's CLAP adapter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import datasets

    from .loading import RetrievalModel, RetrievalProcessor

AUDIO_KEYS = ("input_features", "chunk_mask", "audio_attention_mask")
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
# Clips featurised ahead of the model, in batches: the pool the chunk-count ordering sorts within.
SORT_WINDOW_BATCHES = 8


@dataclass
class AudioEmbeddings:
    """Clip embeddings (N, D) and, per clip i, its chunk embeddings (C_i, D), chunk weights (C_i,) and boundaries (C_i, 2) s.

    `chunk_spans` (C_i, S_i, 2) holds every source stretch (start, end) s a chunk packs, -1 where unused.
    A list is None when the model (chunk embeddings, weights) or the processor (boundaries, spans) does not give it.
    """

    embeds: torch.Tensor
    chunk_embeds: list[torch.Tensor] | None = None
    chunk_weights: list[torch.Tensor] | None = None
    chunk_boundaries: list[np.ndarray] | None = None
    chunk_spans: list[np.ndarray] | None = None


@dataclass
class DatasetEmbeddings:
    """Every clip (N, D) and every caption (M, D) of a dataset, `caption_to_audio` (M,) the clip of each caption."""

    audio: torch.Tensor
    text: torch.Tensor
    caption_to_audio: torch.Tensor
    chunks: AudioEmbeddings | None = None


# Config fields that say where a model was loaded from or which code saved it, not how it embeds.
CONFIG_PROVENANCE = ("_name_or_path", "_commit_hash", "architectures", "auto_map", "transformers_version")


def _settings(value):
    """A config dict (nested sub-configs too) without its provenance fields."""
    if isinstance(value, dict):
        return {key: _settings(item) for key, item in value.items() if key not in CONFIG_PROVENANCE}
    return value


def module_fingerprint(module: RetrievalModel) -> str:
    """SHA-256 of a model's config settings (when it has one) and every weight in its `state_dict`: names, dtypes,
    shapes, bytes. The folder or Hub id it was loaded from is left out: the same weights from another path match."""
    digest = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        digest.update(json.dumps(_settings(config.to_dict()), sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        tensor = torch.as_tensor(tensor).detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_device_dtype(model: RetrievalModel) -> tuple[torch.device, torch.dtype]:
    """Where a model's inputs go and which float dtype they take (`model.device`/`dtype`, else its first parameter)."""
    if hasattr(model, "device") and hasattr(model, "dtype"):
        return torch.device(model.device), model.dtype
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _to_model(value, device, dtype):
    value = torch.as_tensor(value)
    return value.to(device, dtype) if value.is_floating_point() else value.to(device)


def _per_clip(inputs) -> list[dict]:
    """Split a processor's audio output (B, C_max, ...) into one dict per clip holding only its real chunks."""
    features = np.asarray(inputs["input_features"])
    mask = inputs.get("chunk_mask")
    real = np.asarray(mask).astype(bool) if mask is not None else np.ones(features.shape[:2], dtype=bool)
    spans = inputs.get("chunk_spans")
    frames = inputs.get("audio_attention_mask")
    rows = []
    for i in range(len(features)):
        row = {"features": features[i][real[i]]}
        if frames is not None:
            row["frame_mask"] = np.asarray(frames[i])[real[i]]
        if spans is not None:
            # (C, S, 2) spans, -1 where unused: a chunk's extent runs from its first start to its last end
            clip_spans = np.asarray(spans[i], dtype=np.float32)[real[i]]
            row["boundaries"] = np.stack([clip_spans[:, 0, 0], clip_spans[:, :, 1].max(axis=1)], axis=1)
            row["spans"] = clip_spans
        rows.append(row)
    return rows


def _length_groups(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index groups of at most batch_size, by ascending length (stable), so each batch pads to similar lengths."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def _embed_clip_rows(model, rows: list[dict], batch_size: int) -> list[dict]:
    """Embed per-clip rows (from `_per_clip`), batched by chunk count; one output dict per row, in row order."""
    device, dtype = model_device_dtype(model)
    outputs = [None] * len(rows)
    for group in _length_groups([len(row["features"]) for row in rows], batch_size):
        counts = [len(rows[i]["features"]) for i in group]
        first = rows[group[0]]["features"]
        features = np.zeros((len(group), max(counts), *first.shape[1:]), dtype=first.dtype)
        mask = np.zeros((len(group), max(counts)), dtype=np.int64)
        frame_mask = None
        if "frame_mask" in rows[group[0]]:
            frame_mask = np.zeros((len(group), max(counts), rows[group[0]]["frame_mask"].shape[-1]), dtype=np.int64)
        for slot, (i, count) in enumerate(zip(group, counts)):
            features[slot, :count] = rows[i]["features"]
            mask[slot, :count] = 1
            if frame_mask is not None:
                frame_mask[slot, :count] = rows[i]["frame_mask"]
        audio_inputs = {"input_features": _to_model(features, device, dtype), "chunk_mask": _to_model(mask, device, dtype)}
        if frame_mask is not None:
            audio_inputs["audio_attention_mask"] = _to_model(frame_mask, device, dtype)
        out = model.get_audio_features(**audio_inputs)
        chunk_embeds, weights = getattr(out, "last_hidden_state", None), getattr(out, "chunk_weights", None)
        for slot, (i, count) in enumerate(zip(group, counts)):
            outputs[i] = {
                "embed": torch.as_tensor(out.pooler_output[slot]).float().cpu(),
                "chunk_embeds": None if chunk_embeds is None else torch.as_tensor(chunk_embeds[slot, :count]).float().cpu(),
                "chunk_weights": None if weights is None else torch.as_tensor(weights[slot, :count]).float().cpu(),
                "boundaries": rows[i].get("boundaries"),
                "spans": rows[i].get("spans"),
            }
    return outputs


def _gather_audio(outputs: list[dict], dim: int | None = None) -> AudioEmbeddings:
    """Stack per-clip outputs into an `AudioEmbeddings`."""
    if not outputs:
        return AudioEmbeddings(embeds=torch.empty(0, dim or 0))

    def listed(key):
        values = [o[key] for o in outputs]
        return None if any(v is None for v in values) else values

    return AudioEmbeddings(
        torch.stack([o["embed"] for o in outputs]), listed("chunk_embeds"), listed("chunk_weights"), listed("boundaries"),
        listed("spans"),
    )


@torch.no_grad()
def _embed_text_inputs(model, inputs, batch_size: int) -> torch.Tensor:
    """Embed tokenised captions (padded arrays), batched by token count with all-padding columns dropped; input order."""
    device, dtype = model_device_dtype(model)
    inputs = {key: torch.as_tensor(np.asarray(inputs[key])) for key in TEXT_KEYS if key in inputs}
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    embeds = [None] * len(mask)
    for group in _length_groups(mask.sum(1).tolist(), batch_size):
        group = torch.as_tensor(group)
        keep = mask[group].bool().any(0)  # left or right padding: drop the columns no caption in the group uses
        batch = {key: _to_model(value[group][:, keep], device, dtype) for key, value in inputs.items()}
        out = torch.as_tensor(model.get_text_features(**batch).pooler_output).float().cpu()
        for slot, i in enumerate(group.tolist()):
            embeds[i] = out[slot]
    return torch.stack(embeds)


def _eval_mode(model):
    if hasattr(model, "eval"):
        model.eval()


def embed_texts(model: RetrievalModel, processor: RetrievalProcessor, texts: Sequence[str], batch_size: int = 64, progress: bool = False,
                description: str = "embedding text") -> torch.Tensor:
    """L2-normalised embeddings (M, D) of captions or queries, float32 on the CPU, in input order."""
    _eval_mode(model)
    texts = list(texts)
    window = batch_size * SORT_WINDOW_BATCHES
    parts = []
    for start in tqdm(range(0, len(texts), window), desc=description, disable=not progress):
        inputs = processor(text=texts[start : start + window], return_tensors="np")
        parts.append(_embed_text_inputs(model, inputs, batch_size))
    return torch.cat(parts)


def embed_clips(model: RetrievalModel, processor: RetrievalProcessor, clips: Iterable, batch_size: int = 8, progress: bool = False,
                description: str = "embedding audio", total: int | None = None) -> AudioEmbeddings:
    """Embed waveforms (at the processor's sampling rate; a lazy iterable is fine) with their per-chunk outputs."""
    _eval_mode(model)
    rate = processor.feature_extractor.sampling_rate
    total = total if total is not None else (len(clips) if hasattr(clips, "__len__") else None)
    iterator, outputs = iter(clips), []
    with tqdm(total=total, desc=description, unit="clip", disable=not progress) as bar:
        while window := list(islice(iterator, batch_size * SORT_WINDOW_BATCHES)):
            # One clip at a time: a long recording in the window never pads every other clip to its length.
            rows = [row for wave in window for row in _per_clip(processor(audio=[wave], sampling_rate=rate, return_tensors="np"))]
            outputs.extend(_embed_clip_rows(model, rows, batch_size))
            bar.update(len(window))
    return _gather_audio(outputs)


@torch.no_grad()
def embed_dataset(model: RetrievalModel, collator: Callable, dataset: datasets.Dataset, batch_size: int = 32, progress: bool = True,
                  description: str = "embedding", keep_chunks: bool = False) -> DatasetEmbeddings:
    """Embed every clip and caption of `dataset` through an evaluation collator (`AtrCollator(training=False)` or alike).

    The collator gives a window of rows at a time (audio features, all their captions and `caption_to_audio`);
    inside it clips are batched by chunk count and captions by token count.
    """
    _eval_mode(model)
    window = batch_size * SORT_WINDOW_BATCHES
    fetch = getattr(dataset, "__getitems__", None) or (lambda indices: [dataset[i] for i in indices])
    audio, text, caption_to_audio, offset = [], [], [], 0
    with tqdm(total=len(dataset), desc=description, unit="clip", disable=not progress) as bar:
        for start in range(0, len(dataset), window):
            rows = fetch(list(range(start, min(len(dataset), start + window))))
            batch = collator(rows)
            audio.extend(_embed_clip_rows(model, _per_clip(batch), batch_size))
            text.append(_embed_text_inputs(model, batch, batch_size))
            caption_to_audio.append(torch.as_tensor(batch["caption_to_audio"]).cpu() + offset)
            offset += len(rows)
            bar.update(len(rows))
    gathered = _gather_audio(audio)
    return DatasetEmbeddings(gathered.embeds, torch.cat(text), torch.cat(caption_to_audio), gathered if keep_chunks else None)


__all__ = [
    "AudioEmbeddings", "DatasetEmbeddings", "embed_clips", "embed_dataset", "embed_texts", "model_device_dtype",
    "module_fingerprint",
]

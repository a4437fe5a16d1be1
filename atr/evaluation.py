"""Library side of evaluate.py: noise conditions, the ClapModel adapter, retrieval and zero-shot runs (reports: atr.reporting).

Every condition embeds the same rows in the same order, so per-query scores pair up across conditions and across
models evaluated on the same dataset and split (what the Wilcoxon signed-rank test in `atr.reporting.compare_results` needs).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoFeatureExtractor, AutoProcessor, AutoTokenizer, ClapModel
from transformers.feature_extraction_utils import BatchFeature
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .augmentation import NOISE_COLORS, load_noise_files, mix_at_snr
from .collator import AtrCollator
from .data import decode_audio
from .embedding import embed_dataset, embed_texts
from .feature_extraction_atr import AtrFeatureExtractor
from .metrics import DEFAULT_PROMPT_TEMPLATE, audio_text_retrieval_metrics, class_prompts, zero_shot_classification_metrics
from .modeling_atr import AtrModel

CLEAN = "clean"
DIRECTIONS = ("t2a", "a2t")
# The paper's table: R@1/5/10 and mAP@10 per direction (docs/metrics.md defines them).
TABLE_METRICS = ("R1", "R5", "R10", "mAP10")
ZERO_SHOT_METRICS = ("accuracy", "R5", "R10", "mAP10")
# Per-query arrays kept in results.json for --compare and the recall@K plot (`AP10` is the per-query mAP10).
PER_QUERY_KEYS = ("R1", "R5", "R10", "AP10", "rank")
PER_QUERY_METRIC = {"R1": "R1", "R5": "R5", "R10": "R10", "mAP10": "AP10"}
CLAP_PROTOCOL = (
    "ClapModel adapter: silence-aware chunks of at most the extractor's max_length_s (no random crop), the model's "
    "own ClapFeatureExtractor per chunk, is_longer=False, mean of the L2-normalised chunk embeddings, re-normalised"
)
ATR_PROTOCOL = "AtrModel: silence-aware chunks, attention pooling with the learned query"


# ---------------------------------------------------------------- conditions and noise


def parse_conditions(values: Sequence[str]) -> list[float | None]:
    """`["clean", "15", "10"]` -> `[None, 15.0, 10.0]` (None is the clean condition), in the order given."""
    conditions = []
    for value in values:
        if str(value).lower() == CLEAN:
            conditions.append(None)
            continue
        try:
            snr = float(value)
        except ValueError:
            raise ValueError(f"--snr value {value!r} is neither 'clean' nor a number of dB: e.g. --snr clean 15 10 5") from None
        if not math.isfinite(snr):
            raise ValueError(f"--snr value {value!r} is not finite: pass a number of dB such as 10")
        conditions.append(snr)
    if not conditions:
        raise ValueError("no --snr condition given: pass e.g. --snr clean 15 10 5")
    return conditions


def condition_name(snr_db: float | None, noise: str = "white") -> str:
    """'clean' or e.g. 'white 10 dB' (a noise folder is named by its last path part)."""
    if snr_db is None:
        return CLEAN
    return f"{noise_label(noise)} {snr_db:g} dB"


def noise_label(noise: str) -> str:
    """The noise's name in results: 'white', 'pink', 'brown' or the recordings folder's name."""
    return noise if noise in NOISE_COLORS else Path(noise).name or str(noise)


def load_noise(noise: str, sampling_rate: int):
    """A colour name as is, or the recordings of a folder decoded at `sampling_rate`."""
    if noise in NOISE_COLORS:
        return noise
    if not os.path.isdir(noise):
        raise ValueError(f"--noise {noise!r} is neither one of {list(NOISE_COLORS)} nor an existing folder of recordings")
    return load_noise_files(noise, sampling_rate)


def noisy_clip(wave: np.ndarray, noise, snr_db: float, seed: int, index: int) -> np.ndarray:
    """Clip `index` with noise at exactly `snr_db`; the noise depends only on (seed, index), so every SNR scales the same noise."""
    try:
        return mix_at_snr(wave, noise, snr_db, rng=np.random.default_rng([seed, index]))
    except ValueError as error:
        raise ValueError(f"clip at row {index}: {error}") from error


def realised_snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """10·log10(P_clean / P_noise) with the noise recovered as `noisy - clean`."""
    clean = np.asarray(clean, dtype=np.float64)
    residual = np.asarray(noisy, dtype=np.float64) - clean
    return float(10 * np.log10(np.mean(clean**2) / np.mean(residual**2)))


class NoisyEvalCollator:
    """An evaluation collator whose rows get noise at one SNR before featurising (rows carry `eval_index`)."""

    def __init__(self, collator: AtrCollator, noise, snr_db: float, seed: int):
        self.collator, self.noise, self.snr_db, self.seed = collator, noise, snr_db, seed

    def __call__(self, rows: list[dict]):
        """Decode, mix noise into each clip, then collate as the wrapped collator does."""
        rate = self.collator.sampling_rate
        noisy_rows = []
        for row in rows:
            wave = decode_audio(row["audio"], rate)
            wave = noisy_clip(wave, self.noise, self.snr_db, self.seed, int(row["eval_index"]))
            noisy_rows.append({**row, "audio": {"array": wave, "sampling_rate": rate}})
        return self.collator(noisy_rows)


# ---------------------------------------------------------------- ClapModel adapter


class ClapChunkProcessor:
    """Processor for `ClapRetrievalAdapter`: silence-aware chunks (AtrFeatureExtractor) featurised by CLAP's own extractor."""

    def __init__(self, feature_extractor, tokenizer):
        self.feature_extractor = feature_extractor  # the checkpoint's ClapFeatureExtractor
        self.tokenizer = tokenizer
        window_s = feature_extractor.nb_max_samples / feature_extractor.sampling_rate
        # Only its chunk boundaries are used: each chunk is at most one CLAP window, so rand_trunc never crops.
        self.chunker = AtrFeatureExtractor(
            backbone="clap", sampling_rate=feature_extractor.sampling_rate, feature_size=feature_extractor.feature_size,
            window_s=window_s, hop_length=feature_extractor.hop_length, n_fft=feature_extractor.fft_window_size,
        )

    def __call__(self, text=None, audio=None, sampling_rate=None, return_tensors="pt", **kwargs):
        """Captions -> input_ids/attention_mask; clips -> input_features (B, C, channels, frames, mels) + chunk_mask."""
        data = {}
        if text is not None:
            data.update(self.tokenizer(text, padding=True, truncation=True, return_tensors="pt"))
        if audio is not None:
            data.update(self._audio(audio, sampling_rate))
        return BatchFeature(data)

    def _audio(self, clips, sampling_rate):
        if sampling_rate != self.feature_extractor.sampling_rate:
            raise ValueError(
                f"audio has sampling rate {sampling_rate}, expected {self.feature_extractor.sampling_rate}: resample it first"
            )
        chunks, packed = [], []
        for clip in clips:
            clip = np.asarray(clip, dtype=np.float32)
            packed.append(self.chunker.chunk_spans(clip))
            chunks.extend(np.concatenate([clip[start:end] for start, end in spans]) for spans in packed[-1])
        features = self.feature_extractor(chunks, sampling_rate=sampling_rate, return_tensors="np")["input_features"]
        most = max(len(p) for p in packed)
        batch = np.zeros((len(clips), most, *features.shape[1:]), dtype=np.float32)
        mask = np.zeros((len(clips), most), dtype=np.int64)
        # where each chunk's audio came from, in seconds, as AtrFeatureExtractor gives it: (B, C, S, 2), -1 unused
        seconds = np.full((len(clips), most, max(len(s) for p in packed for s in p), 2), -1.0, dtype=np.float32)
        for index, clip_chunks in enumerate(packed):
            mask[index, : len(clip_chunks)] = 1
            for c, spans in enumerate(clip_chunks):
                seconds[index, c, : len(spans)] = np.asarray(spans) / sampling_rate
        batch[mask.astype(bool)] = features
        return {"input_features": torch.from_numpy(batch), "chunk_mask": torch.from_numpy(mask), "chunk_spans": torch.from_numpy(seconds)}


class ClapRetrievalAdapter(nn.Module):
    """A transformers `ClapModel` behind AtrModel's embedding interface (chunk embeddings averaged per clip)."""

    def __init__(self, clap: ClapModel):
        super().__init__()
        self.clap = clap
        self.config, self.name_or_path = clap.config, clap.name_or_path  # projection_dim and the id an index records

    def get_audio_features(self, input_features, chunk_mask=None, **kwargs):
        """L2-normalised clip embeddings (B, D), the mean of the clip's normalised chunk embeddings (last_hidden_state,
        (B, C, D); chunk_weights, 1/C per real chunk)."""
        if chunk_mask is None:
            chunk_mask = torch.ones(input_features.shape[:2], dtype=torch.long, device=input_features.device)
        real = chunk_mask.bool()
        chunks = input_features[real]
        # The fused checkpoint reads is_longer; no chunk is longer than its window, and passing it avoids the
        # extractor's random choice of one "longer" clip.
        is_longer = torch.zeros(len(chunks), 1, dtype=torch.bool, device=chunks.device)
        chunk_embeds = self.clap.get_audio_features(input_features=chunks, is_longer=is_longer).pooler_output
        grid = chunk_embeds.new_zeros(*chunk_mask.shape, chunk_embeds.shape[-1])
        grid[real] = chunk_embeds  # ClapModel's audio embeddings are L2-normalised
        mean = grid.sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        weights = real.to(grid.dtype) / real.sum(1, keepdim=True).clamp(min=1)
        output = BaseModelOutputWithPooling(pooler_output=nn.functional.normalize(mean, dim=-1), last_hidden_state=grid)
        output["chunk_weights"] = weights
        return output

    def get_text_features(self, input_ids, attention_mask=None, **kwargs):
        """L2-normalised caption embeddings (B, D) from ClapModel."""
        return self.clap.get_text_features(input_ids=input_ids, attention_mask=attention_mask)


# ---------------------------------------------------------------- loading


BACKENDS = ("torch", "onnx", "onnx-int8")


def load_model_for_evaluation(name: str, device: str | torch.device = "cpu", backend: str = "torch",
                              trust_remote_code: bool = False):
    """(model, processor, info) for an atr model or a transformers ClapModel (dir or Hub id); info names the protocol.

    The one model loader of evaluate.py, atr-search and the search page: a ClapModel comes back behind
    `ClapRetrievalAdapter` / `ClapChunkProcessor`, with AtrModel's embedding interface and atr's chunk spans.

    `backend="onnx"` / `"onnx-int8"` loads an `atr.export` ONNX folder into `atr.onnx.AtrOnnxModel` (ONNX Runtime, CPU).
    No code from the repo runs unless `trust_remote_code=True`: `import atr` registers the atr classes, so atr models
    need none.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend is {backend!r}, expected one of {BACKENDS}")
    if backend != "torch":
        from .onnx import AtrOnnxModel, is_onnx_export

        if not is_onnx_export(name):
            raise ValueError(f"--backend {backend} needs an ONNX export folder, and {name!r} is not one: run "
                             f"`python -m atr.export onnx {name} OUT_DIR{' --int8' if backend == 'onnx-int8' else ''}` "
                             "and pass --model OUT_DIR")
        if str(device) != "cpu":
            raise ValueError(f"--backend {backend} runs on the CPU (ONNX Runtime), not {device!r}: pass --device cpu")
        model = AtrOnnxModel.from_pretrained(name, int8=backend == "onnx-int8")
        processor = AutoProcessor.from_pretrained(name)
        return model, processor, {"model_type": "atr", "audio_protocol": ATR_PROTOCOL, "backend": backend}
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise ValueError(f"--model {name!r} could not be loaded without running its code: it is not an atr model and "
                             "needs its repository's own code to load; it was not run. Pass --trust_remote_code, if you trust it") from error
        hint = "" if trust_remote_code else " (a repo that needs its own code also needs --trust_remote_code, if you trust it)"
        raise ValueError(f"--model {name!r} could not be loaded ({error}): pass a trained atr directory, a ClapModel "
                         f"directory or a Hub id{hint}") from error
    if config.model_type == "clap":
        model = ClapRetrievalAdapter(ClapModel.from_pretrained(name))
        processor = ClapChunkProcessor(AutoFeatureExtractor.from_pretrained(name), AutoTokenizer.from_pretrained(name))
        info = {"model_type": "clap", "audio_protocol": CLAP_PROTOCOL}
    elif config.model_type == "atr":
        model = AtrModel.from_pretrained(name)
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        info = {"model_type": "atr", "audio_protocol": ATR_PROTOCOL}
    else:
        raise ValueError(f"--model {name!r} is a {config.model_type!r} model: pass an atr model, its ONNX export or a transformers ClapModel")
    return model.to(device).eval(), processor, info


def dataset_fingerprint(dataset, text_column: str = "captions") -> str:
    """sha256 of the rows' audio paths and texts in order: two results pair up query by query only if these match."""
    digest = hashlib.sha256()
    for row in dataset.select_columns(["audio", text_column]):
        audio = row["audio"]
        path = audio.get("path") if isinstance(audio, dict) else audio
        digest.update(repr((path, row[text_column])).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- runs


def _embed(model, processor, dataset, snr_db, noise, seed, batch_size, progress, description):
    collator = AtrCollator(processor, training=False)
    if snr_db is not None:
        collator = NoisyEvalCollator(collator, noise, snr_db, seed)
    embedded = embed_dataset(model, collator, dataset, batch_size=batch_size, progress=progress, description=description)
    return embedded.audio, embedded.text, embedded.caption_to_audio


def _kept_per_query(per_query: dict) -> dict:
    return {key: np.asarray(per_query[key]).tolist() for key in PER_QUERY_KEYS if key in per_query}


def evaluate_retrieval(model, processor, dataset, conditions, noise="white", seed=0, batch_size=16, progress=True) -> list[dict]:
    """One record per condition: `{condition, snr_db, metrics, per_query: {t2a, a2t}}` for text<->audio retrieval."""
    dataset = dataset.add_column("eval_index", list(range(len(dataset))))
    noise_source = load_noise(noise, processor.feature_extractor.sampling_rate)
    records = []
    for snr_db in conditions:
        name = condition_name(snr_db, noise)
        audio, text, caption_to_audio = _embed(model, processor, dataset, snr_db, noise_source, seed, batch_size, progress, f"embedding ({name})")
        results = audio_text_retrieval_metrics(audio, text, caption_to_audio.tolist())
        per_query = results.pop("per_query")
        records.append({
            "condition": name, "snr_db": snr_db, "metrics": results,
            "per_query": {direction: _kept_per_query(per_query[direction]) for direction in DIRECTIONS},
        })
    return records


def class_names_and_labels(dataset, label_column: str, class_names: Sequence[str] | None = None, separator: str | None = None):
    """(class names, label index list per clip) from ints, names, lists of either, or `separator`-joined names."""
    raw = dataset[label_column]
    feature = dataset.features.get(label_column)
    if class_names is None and hasattr(feature, "names"):
        class_names = list(feature.names)  # a datasets ClassLabel
    values = []
    for value in raw:
        if isinstance(value, str) and separator:
            value = [part.strip() for part in value.split(separator) if part.strip()]
        values.append(list(value) if isinstance(value, (list, tuple)) else [value])
    if class_names is None:
        if any(not isinstance(v, str) for clip in values for v in clip):
            raise ValueError(f"label column {label_column!r} holds class indices but no class names are known: "
                             "pass --class_names in index order")
        class_names = sorted({v for clip in values for v in clip})
    index_of = {name: i for i, name in enumerate(class_names)}
    labels = []
    for row, clip in enumerate(values):
        indices = []
        for v in clip:
            if isinstance(v, str) and v in index_of:
                indices.append(index_of[v])
            elif isinstance(v, (int, np.integer)) and 0 <= v < len(class_names):
                indices.append(int(v))
            else:
                raise ValueError(f"row {row} has label {v!r}, which is not among the {len(class_names)} class names "
                                 f"({list(class_names)[:5]}...): fix the label or pass the full --class_names")
        if not indices:
            raise ValueError(f"row {row} has no label in column {label_column!r}: drop it or label it")
        labels.append(indices)
    return list(class_names), labels


def evaluate_zero_shot(model, processor, dataset, conditions, *, label_column, class_names=None, separator=None,
                       prompt_template=DEFAULT_PROMPT_TEMPLATE, noise="white", seed=0, batch_size=16, progress=True) -> tuple[list[dict], list[str]]:
    """Records per condition for zero-shot classification (clips rank one prompt per class), and the class names used."""
    class_names, labels = class_names_and_labels(dataset, label_column, class_names, separator)
    prompt_embeds = embed_texts(model, processor, class_prompts(class_names, prompt_template), batch_size)
    dataset = dataset.add_column("eval_index", list(range(len(dataset))))
    noise_source = load_noise(noise, processor.feature_extractor.sampling_rate)
    records = []
    for snr_db in conditions:
        name = condition_name(snr_db, noise)
        # The loader put each clip's label text in `captions`: embedding them too costs one short text per clip.
        audio, _, _ = _embed(model, processor, dataset, snr_db, noise_source, seed, batch_size, progress, f"embedding ({name})")
        results = zero_shot_classification_metrics(audio, prompt_embeds, labels)
        per_query = results.pop("per_query")
        records.append({"condition": name, "snr_db": snr_db, "metrics": results, "per_query": {"zero_shot": _kept_per_query(per_query)}})
    return records, class_names


__all__ = [
    "ClapChunkProcessor",
    "ClapRetrievalAdapter",
    "NoisyEvalCollator",
    "class_names_and_labels",
    "condition_name",
    "dataset_fingerprint",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "load_model_for_evaluation",
    "load_noise",
    "noisy_clip",
    "parse_conditions",
    "realised_snr_db",
]

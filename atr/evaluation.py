"""Library side of evaluate.py: noise conditions, retrieval and zero-shot runs (models: atr.loading; reports: atr.reporting).

Every condition embeds the same rows in the same order, so per-query scores pair up across conditions and across
models evaluated on the same dataset and split (what the Wilcoxon signed-rank test in `atr.reporting.compare_results` needs).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .augmentation import NOISE_COLORS, load_noise_files, mix_at_snr
from .collator import AtrCollator
from .data import decode_audio
from .embedding import embed_dataset, embed_texts
from .metrics import DEFAULT_PROMPT_TEMPLATE, audio_text_retrieval_metrics, class_prompts, zero_shot_classification_metrics

if TYPE_CHECKING:
    import datasets

    from .loading import RetrievalModel, RetrievalProcessor

CLEAN = "clean"
DIRECTIONS = ("t2a", "a2t")
# The paper's table: R@1/5/10 and mAP@10 per direction (docs/metrics.md defines them).
TABLE_METRICS = ("R1", "R5", "R10", "mAP10")
ZERO_SHOT_METRICS = ("accuracy", "R5", "R10", "mAP10")
# Per-query arrays kept in results.json for --compare and the recall@K plot (`AP10` is the per-query mAP10).
PER_QUERY_KEYS = ("R1", "R5", "R10", "AP10", "rank")
PER_QUERY_METRIC = {"R1": "R1", "R5": "R5", "R10": "R10", "mAP10": "AP10"}


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


def load_noise(noise: str, sampling_rate: int) -> str | list[np.ndarray]:
    """A colour name as is, or the recordings of a folder decoded at `sampling_rate`."""
    if noise in NOISE_COLORS:
        return noise
    if not os.path.isdir(noise):
        raise ValueError(f"--noise {noise!r} is neither one of {list(NOISE_COLORS)} nor an existing folder of recordings")
    return load_noise_files(noise, sampling_rate)


def noisy_clip(wave: np.ndarray, noise: str | list[np.ndarray], snr_db: float, seed: int, index: int) -> np.ndarray:
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

    def __init__(self, collator: AtrCollator, noise: str | list[np.ndarray], snr_db: float, seed: int):
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


def dataset_fingerprint(dataset: datasets.Dataset, text_column: str = "captions") -> str:
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


def evaluate_retrieval(model: RetrievalModel, processor: RetrievalProcessor, dataset: datasets.Dataset, conditions: Sequence[float | None],
                       noise: str = "white", seed: int = 0, batch_size: int = 16, progress: bool = True) -> list[dict]:
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


def class_names_and_labels(dataset: datasets.Dataset, label_column: str, class_names: Sequence[str] | None = None,
                           separator: str | None = None) -> tuple[list[str], list[list[int]]]:
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


def evaluate_zero_shot(model: RetrievalModel, processor: RetrievalProcessor, dataset: datasets.Dataset, conditions: Sequence[float | None], *,
                       label_column: str, class_names: Sequence[str] | None = None, separator: str | None = None,
                       prompt_template: str = DEFAULT_PROMPT_TEMPLATE, noise: str = "white", seed: int = 0, batch_size: int = 16,
                       progress: bool = True) -> tuple[list[dict], list[str]]:
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
    "NoisyEvalCollator",
    "class_names_and_labels",
    "condition_name",
    "dataset_fingerprint",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "load_noise",
    "noisy_clip",
    "parse_conditions",
    "realised_snr_db",
]

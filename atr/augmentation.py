"""Training augmentation and evaluation noise: noise at an exact SNR, audiomentations noise and speed perturbation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .data import decode_audio
from .synthetic import colored_noise

if TYPE_CHECKING:
    from audiomentations import Compose, OneOf, Resample

NOISE_COLORS = ("white", "pink", "brown")


def noise_files(folder: str | os.PathLike) -> list[Path]:
    """The audio files under `folder` (sorted, recursive), without hidden ones such as macOS `._x.wav` AppleDouble files."""
    from audiomentations.core.utils import find_audio_files

    root = Path(os.path.abspath(folder))  # find_audio_files returns absolute paths under os.path.abspath(folder)
    paths = sorted(p for p in find_audio_files(root) if not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not paths:
        raise ValueError(f"noise folder {folder} has no audio files: add .wav/.flac recordings or use white/pink noise")
    return paths


def load_noise_files(folder: str | os.PathLike, sampling_rate: int) -> list[np.ndarray]:
    """Every audio file `noise_files(folder)` finds, decoded to mono float32 at `sampling_rate`."""
    return [decode_audio(path, sampling_rate) for path in noise_files(folder)]


def mix_at_snr(clean: np.ndarray, noise: str | np.ndarray | Sequence[np.ndarray], snr_db: float, *,
               rng: np.random.Generator | int | None = None) -> np.ndarray:
    """`clean` plus noise scaled so that 10·log10(P_clean / P_noise) equals `snr_db` exactly.

    `noise` is "white", "pink" or "brown", a recording (looped or cropped to length at a random offset) or a list of
    recordings (one picked at random). All randomness comes from `rng` (a Generator or a seed).
    """
    rng = np.random.default_rng(rng)
    clean = np.asarray(clean, dtype=np.float64)
    if clean.ndim != 1 or clean.size == 0:
        raise ValueError(f"clean audio has shape {clean.shape}: pass a non-empty mono 1-D waveform")
    clean_power = np.mean(clean**2)
    if clean_power == 0:
        raise ValueError("clean audio is digital silence: an SNR is undefined for it")
    if isinstance(noise, str):
        if noise not in NOISE_COLORS:
            raise ValueError(f"noise {noise!r} is unknown: use one of {list(NOISE_COLORS)} or pass a recording")
        noise = colored_noise(clean.size, noise, rng)
    else:
        if not isinstance(noise, np.ndarray):
            noise = noise[rng.integers(len(noise))]
        noise = np.asarray(noise, dtype=np.float64)
        if noise.ndim != 1 or noise.size == 0:
            raise ValueError(f"noise recording has shape {noise.shape}: pass a non-empty mono 1-D waveform")
        start = int(rng.integers(noise.size))
        noise = np.take(noise, np.arange(start, start + clean.size), mode="wrap")  # loop short, crop long
    noise_power = np.mean(noise**2)
    if noise_power == 0:
        raise ValueError("noise is digital silence over this clip: pick another recording")
    scale = np.sqrt(clean_power / (noise_power * 10 ** (snr_db / 10)))
    return (clean + scale * noise).astype(np.float32)


def make_noise_augmentation(p: float = 0.5, min_snr_db: float = 5.0, max_snr_db: float = 15.0,
                            background_dir: str | os.PathLike | None = None) -> OneOf:
    """An audiomentations transform adding white, coloured or (given a folder) recorded noise at a random SNR."""
    from audiomentations import AddBackgroundNoise, AddColorNoise, AddGaussianSNR, OneOf

    if not 0 <= p <= 1 or min_snr_db > max_snr_db:
        raise ValueError(f"noise augmentation p={p}, SNR [{min_snr_db}, {max_snr_db}] dB is invalid: "
                         "need 0 <= p <= 1 and min_snr_db <= max_snr_db")
    transforms = [AddGaussianSNR(min_snr_db=min_snr_db, max_snr_db=max_snr_db, p=1.0),
                  AddColorNoise(min_snr_db=min_snr_db, max_snr_db=max_snr_db, p=1.0)]
    if background_dir is not None:
        if not os.path.isdir(background_dir):
            raise ValueError(f"background noise folder {background_dir} does not exist: pass a folder of recordings")
        # the file list, not the folder: audiomentations would also pick up hidden (AppleDouble) files
        transforms.append(AddBackgroundNoise(sounds_path=noise_files(background_dir), min_snr_db=min_snr_db,
                                             max_snr_db=max_snr_db, noise_rms="relative", p=1.0))
    return OneOf(transforms, p=p)


def make_speed_perturbation(sampling_rate: int, max_change: float, p: float = 0.5) -> Resample:
    """Speed perturbation: resample by a random factor in [1 - max_change, 1 + max_change] (tempo and pitch together)."""
    from audiomentations import Resample

    if not 0 < max_change < 1:
        raise ValueError(f"speed perturbation {max_change} is invalid: give the largest relative change, in (0, 1), e.g. 0.1")
    # Resample's output is read at the original rate, so a lower target rate plays faster: Kaldi's speed perturbation.
    return Resample(min_sample_rate=round(sampling_rate * (1 - max_change)), max_sample_rate=round(sampling_rate * (1 + max_change)), p=p)


def make_training_augmentation(sampling_rate: int, noise_probability: float = 0.5, min_snr_db: float = 5.0,
                               max_snr_db: float = 15.0, background_dir: str | os.PathLike | None = None,
                               speed_perturbation: float = 0.0) -> OneOf | Compose:
    """train.py's augmentation: speed perturbation (when `speed_perturbation` > 0), then noise with `noise_probability`."""
    noise = make_noise_augmentation(noise_probability, min_snr_db, max_snr_db, background_dir)
    if not speed_perturbation:
        return noise
    from audiomentations import Compose

    return Compose([make_speed_perturbation(sampling_rate, speed_perturbation), noise])

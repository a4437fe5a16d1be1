"""The built-in synthetic sound-scene dataset: seeded scenes of 1 to 3 events, each with 5 paraphrased captions."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.fft
import soundfile as sf
from scipy.signal import fftconvolve, lfilter, sawtooth

from datasets import Audio, Dataset, DatasetDict, Features, List, Value

# Bump whenever synthesis or captions change: it is part of the cache fingerprint, so old cached splits are not reused.
GENERATOR_VERSION = 3  # 3: 16-bit WAV bytes instead of FLAC
SPLIT_SIZES = {"train": 2000, "validation": 200, "test": 200}
RELATIONS = ("then", "pause", "while")
BACKGROUNDS = ("hiss", "wind", "quiet")


def colored_noise(n_samples: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS float64 white, pink (1/f) or brown (1/f^2) noise drawn from `rng`."""
    # audiomentations' generator draws from the global numpy RNG; a Generator argument keeps every caller seedable.
    exponents = {"white": 0.0, "pink": 1.0, "brown": 2.0}
    if color not in exponents:
        raise ValueError(f"noise color {color!r} is not supported: use one of {sorted(exponents)}")
    if not exponents[color]:
        noise = rng.standard_normal(n_samples)
    else:
        # shape a white spectrum at an FFT-friendly length (arbitrary lengths can be 20x slower), then crop
        length = scipy.fft.next_fast_len(n_samples, real=True)
        spectrum = scipy.fft.rfft(rng.standard_normal(length))
        freqs = np.arange(spectrum.shape[0], dtype=np.float64)
        freqs[0] = freqs[1] if len(freqs) > 1 else 1.0  # no infinite DC gain
        noise = scipy.fft.irfft(spectrum / freqs ** (exponents[color] / 2), n=length)[:n_samples]
    return noise / max(np.sqrt(np.mean(noise**2)), 1e-12)


# ---- event synthesis: each returns a float64 waveform of exactly n samples with a distinct timbre ----


def _time(n, sr):
    return np.arange(n) / sr


def _place(n, sr, onsets_s, burst):
    """Adds copies of `burst` starting at each onset (seconds), cropped to n samples."""
    out = np.zeros(n)
    for onset in onsets_s:
        start = int(onset * sr)
        if start >= n:
            break
        piece = burst[: n - start]
        out[start : start + len(piece)] += piece
    return out


def _regular_onsets(duration_s, period_s, rng, jitter=0.1):
    """Onsets every `period_s` seconds (with relative jitter) that fit in the duration."""
    count = max(1, int(duration_s / period_s))
    return np.arange(count) * period_s * (1 + jitter * rng.uniform(-1, 1, count))


def _dog_bark(rng, n, sr):
    length = int(rng.uniform(0.12, 0.2) * sr)
    t = _time(length, sr)
    f0 = rng.uniform(350, 650) * np.linspace(1.0, 0.7, length)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    harmonics = np.arange(1, 9)[:, None]
    # formant-like weighting around 1.2 kHz gives the harsh bark colour
    weights = 1 / harmonics * np.exp(-(((harmonics * f0[None].mean()) - 1200) / 900) ** 2) + 0.05
    voice = (weights * np.sin(harmonics * phase[None])).sum(0)
    bark = (voice + 0.3 * rng.standard_normal(length)) * np.minimum(t / 0.01, 1) * np.exp(-t / 0.06)
    return _place(n, sr, _regular_onsets(n / sr - 0.2, rng.uniform(0.3, 0.45), rng), bark)


def _siren(rng, n, sr):
    t = _time(n, sr)
    freq = rng.uniform(900, 1300) + rng.uniform(300, 500) * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.15 * np.sin(3 * phase)


def _bell(rng, n, sr):
    t = _time(min(n, int(2.5 * sr)), sr)  # a strike has decayed by -40 dB after 2.5 s
    f0 = rng.uniform(350, 800)
    ratios = np.array([0.5, 1.0, 1.19, 1.5, 2.0, 2.74, 3.0])[:, None]
    amps = np.array([0.6, 1.0, 0.5, 0.4, 0.5, 0.3, 0.2])[:, None]
    taus = rng.uniform(0.6, 1.2) / ratios**0.7  # higher partials die away faster
    strike = (amps * np.sin(2 * np.pi * f0 * ratios * t[None]) * np.exp(-t[None] / taus)).sum(0)
    return _place(n, sr, _regular_onsets(n / sr - 0.3, rng.uniform(0.8, 1.3), rng, jitter=0.05), strike)


def _rain(rng, n, sr):
    drops = np.where(rng.random(n) < rng.uniform(60, 120) / sr, rng.uniform(0.3, 1.0, n), 0.0)
    kt = _time(int(0.006 * sr), sr)
    kernel = np.sin(2 * np.pi * rng.uniform(2500, 4500) * kt) * np.exp(-kt / 0.0015)
    hiss = np.diff(rng.standard_normal(n + 1))  # first difference: high-passed patter
    return fftconvolve(drops, kernel)[:n] * 3 + 0.15 * hiss


def _engine(rng, n, sr):
    t = _time(n, sr)
    # slow random drift of the firing rate: a steady but not perfectly periodic hum
    drift = np.interp(t, np.linspace(0, t[-1] + 1e-9, 8), rng.uniform(-0.03, 0.03, 8))
    phase = 2 * np.pi * np.cumsum(rng.uniform(28, 45) * (1 + drift)) / sr
    # a sawtooth through a one-pole low-pass (~600 Hz): the muffled buzz of a motor, cheaper than summing harmonics
    pole = np.exp(-2 * np.pi * 600 / sr)
    hum = lfilter([1 - pole], [1, -pole], sawtooth(phase))
    return hum * (1 + 0.3 * np.sin(phase / 2)) + 0.05 * colored_noise(n, "brown", rng)


def _bird(rng, n, sr):
    length = int(rng.uniform(0.04, 0.09) * sr)
    t = _time(length, sr)
    f1 = rng.uniform(2500, 4000)
    freq = f1 * (1 + rng.uniform(0.4, 0.8) * t / t[-1])
    chirp = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.hanning(length)
    group = _place(int(0.8 * sr), sr, np.arange(rng.integers(3, 7)) * rng.uniform(0.08, 0.14), chirp)
    return _place(n, sr, _regular_onsets(n / sr - 0.5, rng.uniform(0.9, 1.2), rng), group[: int(0.8 * sr)])


def _knock(rng, n, sr):
    kt = _time(int(0.08 * sr), sr)
    low, high = rng.uniform(150, 300), rng.uniform(600, 900)
    knock = (np.sin(2 * np.pi * low * kt) + 0.5 * np.sin(2 * np.pi * high * kt)) * np.exp(-kt / 0.025)
    knock[: int(0.002 * sr)] += rng.standard_normal(int(0.002 * sr))  # the contact click
    group = _place(int(1.0 * sr), sr, np.arange(rng.integers(2, 5)) * rng.uniform(0.15, 0.25), knock)
    return _place(n, sr, _regular_onsets(n / sr - 0.3, rng.uniform(1.1, 1.4), rng), group)


def _beep(rng, n, sr):
    on = rng.uniform(0.1, 0.25)
    length = int(on * sr)
    t = _time(length, sr)
    ramp = np.minimum(1, np.minimum(t, t[-1] - t) / 0.005)
    freq = rng.uniform(900, 2000)
    beep = (np.sin(2 * np.pi * freq * t) + 0.2 * np.sin(6 * np.pi * freq * t)) * ramp
    return _place(n, sr, np.arange(max(1, int(n / sr / (2 * on)))) * 2 * on, beep)


def _horn(rng, n, sr):
    length = int(rng.uniform(0.35, 0.8) * sr)
    t = _time(length, sr)
    f1 = rng.uniform(350, 450)
    odd = np.array([1, 3, 5, 7])[:, None]
    tone = sum((np.sin(2 * np.pi * f * odd * t[None]) / odd).sum(0) for f in (f1, 1.25 * f1))
    honk = tone * np.minimum(1, np.minimum(t, t[-1] - t) / 0.02)
    return _place(n, sr, _regular_onsets(n / sr - 0.3, length / sr + rng.uniform(0.15, 0.35), rng, 0.0), honk)


def _thunder(rng, n, sr):
    t = _time(n, sr)
    rumble = colored_noise(n, "brown", rng) * np.exp(-t / rng.uniform(0.8, 1.6))
    gusts = 1 + 0.5 * np.interp(t, np.linspace(0, t[-1] + 1e-9, 12), rng.uniform(-1, 1, 12))
    crack_len = int(0.05 * sr)
    crack = np.zeros(n)
    crack[:crack_len] = rng.standard_normal(crack_len) * np.exp(-_time(crack_len, sr) / 0.015)
    return rumble * gusts * np.minimum(t / 0.03, 1) + 0.5 * crack


@dataclass(frozen=True)
class EventType:
    """A synthesised sound event: its timbre generator, duration range and caption phrasings."""

    name: str
    synth: Callable[[np.random.Generator, int, int], np.ndarray]
    duration_s: tuple[float, float]
    sentences: tuple[str, ...]  # full clauses: "a dog barks"
    noun_phrases: tuple[str, ...]  # "a dog barking"


EVENT_TYPES = (
    EventType("dog_bark", _dog_bark, (1.0, 2.5), ("a dog barks", "a dog is barking", "a small dog yaps"),
              ("a dog barking", "a barking dog", "dog barks")),
    EventType("siren", _siren, (1.5, 3.5), ("a siren wails", "an emergency siren sounds", "a police siren blares"),
              ("a wailing siren", "a siren", "the wail of a siren")),
    EventType("bell", _bell, (1.5, 3.0), ("a bell rings", "a church bell tolls", "a bell chimes"),
              ("a ringing bell", "bell chimes", "the toll of a bell")),
    EventType("rain", _rain, (1.5, 3.5), ("rain falls", "rain patters", "it is raining"),
              ("falling rain", "the patter of rain", "rain")),
    EventType("engine", _engine, (1.5, 3.5), ("an engine hums", "an engine idles", "a motor drones"),
              ("an idling engine", "a low engine hum", "the drone of a motor")),
    EventType("bird", _bird, (1.0, 2.5), ("a bird chirps", "a bird sings", "a small bird tweets"),
              ("a chirping bird", "bird chirps", "birdsong")),
    EventType("knock", _knock, (1.0, 2.0), ("someone knocks on a door", "someone knocks", "a door is knocked on"),
              ("knocking", "a knock at the door", "knocks on wood")),
    EventType("beep", _beep, (1.0, 2.5), ("a device beeps", "an alarm beeps", "a machine beeps"),
              ("beeping", "electronic beeps", "a series of beeps")),
    EventType("horn", _horn, (0.8, 2.0), ("a car horn honks", "a horn blares", "a car honks"),
              ("a honking horn", "a car horn", "honking")),
    EventType("thunder", _thunder, (1.5, 3.5), ("thunder rumbles", "thunder roars", "thunder cracks and rumbles"),
              ("rumbling thunder", "a thunderclap", "the rumble of thunder")),
)
EVENT_NAMES = tuple(event.name for event in EVENT_TYPES)

# Two-event templates by relation; 3-event captions append a continuation for the second relation.
PAIR_TEMPLATES = {
    "then": ("{a}, then {b}", "{A} followed by {B}", "first {a}, and then {b}", "{b} after {a}", "{a} before {b}",
             "{A}, then {B}"),
    "pause": ("{a}, then after a pause {b}", "{A}, a few seconds of silence, then {B}", "{a}; after a short silence {b}",
              "{A} followed by a pause and {B}", "{a}, and after a moment of quiet {b}"),
    "while": ("{a} while {b}", "{A} and {B} at the same time", "{b} as {a}", "{A} together with {B}",
              "{a} and at the same time {b}"),
}
CONTINUATIONS = {
    "then": (", then {c}", ", followed by {C}", " and then {c}"),
    "pause": (", then after a pause {c}", ", and after a silence {c}", ", then a pause and {C}"),
    "while": (" while {c}", ", with {C} at the same time", " as {c}"),
}
SINGLE_TEMPLATES = ("{a}", "{A}", "the sound of {A}", "{A} can be heard", "{a} for a while")
BACKGROUND_PHRASES = {
    "hiss": (" over a steady hiss", " with static in the background", " over background hiss"),
    "wind": (" in the wind", " with wind blowing in the background", " with wind noise"),
    "quiet": (" in a quiet room", " in a quiet place", " with little background noise"),
}
BACKGROUND_MENTION_P = 0.6


def _caption(rng, events, relations, background):
    """One paraphrased caption naming the events in order, their relations and (often) the background."""
    a = [EVENT_TYPES[e].sentences[rng.integers(3)] for e in events]
    A = [EVENT_TYPES[e].noun_phrases[rng.integers(3)] for e in events]
    if len(events) == 1:
        text = SINGLE_TEMPLATES[rng.integers(len(SINGLE_TEMPLATES))].format(a=a[0], A=A[0])
    else:
        pair = PAIR_TEMPLATES[relations[0]]
        text = pair[rng.integers(len(pair))].format(a=a[0], A=A[0], b=a[1], B=A[1])
        if len(events) == 3:
            cont = CONTINUATIONS[relations[1]]
            text += cont[rng.integers(len(cont))].format(c=a[2], C=A[2])
    if rng.random() < BACKGROUND_MENTION_P:
        phrases = BACKGROUND_PHRASES[background]
        text += phrases[rng.integers(len(phrases))]
    return text[0].upper() + text[1:] + "."


def _layout(rng, events, relations, min_duration_s, max_duration_s):
    """Onsets/offsets (s) and clip duration honouring the relations and the duration bounds."""
    durations = np.array([rng.uniform(*EVENT_TYPES[e].duration_s) for e in events])
    gaps = [rng.uniform(0.15, 0.5) if r == "then" else rng.uniform(1.2, 2.2) if r == "pause" else 0.0
            for r in relations]
    lead, tail = rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)
    overlaps = [rng.uniform(0.25, 0.6) for _ in relations]

    def place(durations):
        onsets, end = [lead], lead + durations[0]
        for i, relation in enumerate(relations, start=1):
            onset = onsets[-1] + overlaps[i - 1] * durations[i - 1] if relation == "while" else end + gaps[i - 1]
            onsets.append(onset)
            end = max(end, onset + durations[i])
        return np.array(onsets), end + tail

    onsets, total = place(durations)
    if total > max_duration_s:  # shrink events (not the pauses, which must stay > 1 s) until the clip fits
        fixed = total - durations.sum()
        durations = np.maximum(durations * (max_duration_s - fixed) / durations.sum(), 0.5)
        onsets, total = place(durations)
    offsets = onsets + durations
    if total > max_duration_s:  # very short clips asked for: compress the whole timeline (pauses may drop under 1 s)
        onsets, offsets = onsets * max_duration_s / total, offsets * max_duration_s / total
    return onsets, offsets, float(np.clip(total, min_duration_s, max_duration_s))


def synthesize_clip(rng: np.random.Generator, sampling_rate: int = 16000, min_duration_s: float = 4.0,
                    max_duration_s: float = 12.0) -> dict:
    """One scene: float32 mono waveform, its event list, relations, background and 5 distinct captions."""
    n_events = rng.choice([1, 2, 3], p=[0.15, 0.45, 0.4])
    events = rng.choice(len(EVENT_TYPES), size=n_events, replace=False)
    relations = list(rng.choice(RELATIONS, size=n_events - 1, p=[0.45, 0.3, 0.25]))
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    onsets, offsets, duration = _layout(rng, events, relations, min_duration_s, max_duration_s)

    n = int(round(duration * sampling_rate))
    wave = np.zeros(n)
    for event, onset, offset in zip(events, onsets, offsets):
        start, stop = int(onset * sampling_rate), min(int(offset * sampling_rate), n)
        sound = EVENT_TYPES[event].synth(rng, stop - start, sampling_rate)
        fade = np.minimum(1, np.minimum(np.arange(stop - start), np.arange(stop - start)[::-1]) / (0.01 * sampling_rate))
        gain = 10 ** (rng.uniform(-6, 0) / 20) / max(np.sqrt(np.mean(sound**2)), 1e-9)
        wave[start:stop] += 0.1 * gain * sound * fade
    # hiss and wind sit 22 to 32 dB under the events, so pauses keep an audible floor; a quiet room sits over 60 dB
    # under them, so silence-aware chunking drops its long pauses as it would a real near-silent recording
    level_db = {"hiss": rng.uniform(-32, -26), "wind": rng.uniform(-28, -22), "quiet": rng.uniform(-70, -62)}[background]
    color = {"hiss": "white", "wind": "brown", "quiet": "pink"}[background]
    noise = colored_noise(n, color, rng)
    if background == "wind":  # slow gusts
        noise *= 1 + 0.6 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * np.arange(n) / sampling_rate)
    wave += 0.1 * 10 ** (level_db / 20) * noise
    wave *= 0.8 / np.abs(wave).max()

    captions = []
    while len(captions) < 5:  # 5 distinct paraphrases; the template pools are large enough to end quickly
        caption = _caption(rng, events, relations, background)
        if caption not in captions:
            captions.append(caption)
    return {
        "array": wave.astype(np.float32),
        "captions": captions,
        "events": [{"label": EVENT_NAMES[e], "onset_s": float(on), "offset_s": float(off)}
                   for e, on, off in zip(events, onsets, offsets)],
        "relations": [str(r) for r in relations],
        "background": background,
        "duration_s": n / sampling_rate,
    }


def _wav_bytes(wave, sampling_rate):
    """16-bit WAV bytes: half the size of float32 arrays, and 10x faster to decode than FLAC (the demo reads each clip 16 times)."""
    buffer = io.BytesIO()
    sf.write(buffer, wave, sampling_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _generate(split, indices, seed, sampling_rate, min_duration_s, max_duration_s):
    """Yields rows of one split; each clip has its own seed stream, so clip i is the same whatever n is."""
    split_key = int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")
    for index in indices:
        rng = np.random.default_rng([seed, split_key, index])
        clip = synthesize_clip(rng, sampling_rate, min_duration_s, max_duration_s)
        yield {
            "audio": {"bytes": _wav_bytes(clip.pop("array"), sampling_rate), "path": f"synthetic/{split}/{index:06d}.wav"},
            "clip_id": f"{split}_{index:06d}",
            **clip,
        }


FEATURES = Features({
    "audio": {"bytes": Value("binary"), "path": Value("string")},
    "clip_id": Value("string"),
    "captions": List(Value("string")),
    "events": List({"label": Value("string"), "onset_s": Value("float32"), "offset_s": Value("float32")}),
    "relations": List(Value("string")),
    "background": Value("string"),
    "duration_s": Value("float32"),
})


def make_synthetic_split(split: str = "train", n: int | None = None, *, seed: int = 0, sampling_rate: int = 16000,
                         min_duration_s: float = 4.0, max_duration_s: float = 12.0, cache_dir: str | None = None,
                         keep_in_memory: bool = False, num_proc: int | None = None) -> Dataset:
    """One split of synthetic scenes as a Dataset (audio as WAV bytes in an `Audio(decode=False)` column); cached.

    `num_proc` processes generate it (default: 1 below 1000 clips, else up to 4, as many as there are CPUs).
    """
    if n is None:
        if split not in SPLIT_SIZES:
            raise ValueError(f"synthetic split {split!r} has no default size: pass n= or use one of {list(SPLIT_SIZES)}")
        n = SPLIT_SIZES[split]
    if not 0 < min_duration_s <= max_duration_s:
        raise ValueError(f"clip durations ({min_duration_s}, {max_duration_s}) s are invalid: need 0 < min <= max")
    kwargs = dict(split=split, n=int(n), seed=int(seed), sampling_rate=int(sampling_rate),
                  min_duration_s=float(min_duration_s), max_duration_s=float(max_duration_s), version=GENERATOR_VERSION)
    # An explicit fingerprint names the cache entry, so the same arguments reuse the generated Arrow file.
    fingerprint = hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:16]
    if num_proc is None:
        num_proc = min(4, os.cpu_count() or 1) if n >= 1000 else 1
    # a list in gen_kwargs is what datasets shards across processes; shards are concatenated in order
    gen_kwargs = {k: v for k, v in kwargs.items() if k not in ("n", "version")} | {"indices": list(range(n))}
    dataset = Dataset.from_generator(_generate, features=FEATURES, gen_kwargs=gen_kwargs, cache_dir=cache_dir,
                                     keep_in_memory=keep_in_memory, fingerprint=f"atr-synthetic-{fingerprint}",
                                     num_proc=num_proc if num_proc > 1 else None)
    # Cast after generation: datasets' Audio encoder needs torchcodec, the cast does not.
    return dataset.cast_column("audio", Audio(sampling_rate=sampling_rate, decode=False))


def make_synthetic_dataset(n_train: int = 2000, n_validation: int = 200, n_test: int = 200, **kwargs) -> DatasetDict:
    """The synthetic train/validation/test splits; kwargs go to `make_synthetic_split`."""
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    return DatasetDict({split: make_synthetic_split(split, n, **kwargs) for split, n in sizes.items()})

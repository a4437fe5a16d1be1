"""Spoken-words benchmark data: short clips of single English words from espeak-ng, written as an atr audio folder.

    python benchmarks/spoken_words.py OUT_DIR [--train_per_word 24 --validation_per_word 4 --test_per_word 10 --seed 0]

Each clip is one word of a fixed 30-word vocabulary (the ten digits and twenty command words, after Speech Commands)
said by one espeak-ng voice (a language or accent plus a voice variant) at a random speed and pitch, as 16 kHz mono
16-bit WAV (about 0.5-1.2 s). The three splits use disjoint accents *and* disjoint variants, so every test voice is
unheard in training. Each row of `<split>/metadata.csv` has `file_name`, three captions (`caption_1..3`, from
CAPTION_TEMPLATES), and the ground truth `word`, `voice`, `speed`, `pitch`. Needs the `espeak-ng` program
(Debian/Ubuntu: `apt-get install espeak-ng`); voices verified with `espeak-ng --voices` (espeak-ng 1.51).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from atr.data import decode_audio

SAMPLING_RATE = 16000
WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "bed", "bird", "cat", "dog", "happy", "house", "tree", "wow", "forward", "backward",
)
# Accents (espeak-ng language voices reading the English word) and voice variants, each split its own: a test voice
# never shares its accent or its variant with a training voice.
ACCENTS = {
    "train": ("en-us", "en-gb", "en-gb-x-rp", "en-029", "de", "fr", "es", "it", "nl", "pl"),
    "validation": ("en-gb-x-gbclan", "da"),
    # en-us-nyc is left out: it says 14 of the 30 words exactly as en-us does (md5 of the output).
    "test": ("en-gb-scotland", "en-gb-x-gbcwmd", "sv", "pt"),
}
VARIANTS = {
    "train": ("m1", "m2", "m3", "m4", "f1", "f2", "klatt", "klatt3", "adam", "linda", "robert", "steph"),
    "validation": ("m7", "f3", "klatt4"),
    "test": ("m5", "m6", "f4", "f5", "klatt2", "michel"),
}
SPEED_WPM = (120, 220)  # espeak-ng -s, words per minute (default 175)
PITCH = (20, 80)  # espeak-ng -p, 0-99 (default 50)
CAPTION_TEMPLATES = (
    "someone says {word}",
    "the word '{word}' spoken",
    "a voice saying {word}",
    "a person says the word {word}",
    "{word}, spoken aloud",
    "a short recording of someone saying {word}",
)
CAPTIONS_PER_CLIP = 3
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def espeak_executable() -> str:
    """The espeak-ng program's path, or an error that says how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("espeak-ng is not installed: install it (Debian/Ubuntu: apt-get install espeak-ng)")
    return path


def speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """One word said by espeak-ng, as a float32 mono waveform at 16 kHz."""
    command = [espeak_executable(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r} and word {word!r}: {result.stderr.decode().strip()}")
    return decode_audio({"bytes": result.stdout, "path": None}, SAMPLING_RATE)


def split_rows(split: str, per_word: int, seed: int, words=WORDS) -> list[dict]:
    """The rows of one split: per word, `per_word` clips each with its own seeded voice, speed, pitch and captions."""
    rows = []
    for word_index, word in enumerate(words):
        for i in range(per_word):
            # One generator per clip: a clip does not change with the split size or the vocabulary's other words.
            rng = np.random.default_rng([seed, SPLIT_IDS[split], word_index, i])
            voice = f"{rng.choice(ACCENTS[split])}+{rng.choice(VARIANTS[split])}"
            templates = rng.choice(len(CAPTION_TEMPLATES), size=CAPTIONS_PER_CLIP, replace=False)
            rows.append({
                "file_name": f"{word}_{i:03d}.wav",
                **{f"caption_{k + 1}": CAPTION_TEMPLATES[t].format(word=word) for k, t in enumerate(templates)},
                "word": word, "voice": voice,
                "speed": int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1)), "pitch": int(rng.integers(PITCH[0], PITCH[1] + 1)),
            })
    return rows


def write_spoken_words(out_dir, sizes: dict[str, int], seed: int = 0, words=WORDS, overwrite: bool = False) -> dict[str, list[dict]]:
    """Writes `<out_dir>/<split>/` (WAV files + metadata.csv) for each split in `sizes` (clips per word); returns the rows."""
    out_dir = Path(out_dir)
    unknown = sorted(set(sizes) - set(SPLIT_IDS))
    if unknown:
        raise ValueError(f"splits {unknown} are unknown: use {list(SPLIT_IDS)}")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty: choose another folder or pass --overwrite")
    espeak_executable()
    written = {}
    for split, per_word in sizes.items():
        split_dir = out_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        rows = split_rows(split, per_word, seed, words)
        for row in rows:
            wave = speak(row["word"], row["voice"], row["speed"], row["pitch"])
            sf.write(split_dir / row["file_name"], wave, SAMPLING_RATE, subtype="PCM_16")
        with open(split_dir / "metadata.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        written[split] = rows
    return written


def main(argv=None):
    """CLI: write the three splits and print their sizes and voices."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train_per_word", type=int, default=24)
    parser.add_argument("--validation_per_word", type=int, default=4)
    parser.add_argument("--test_per_word", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    sizes = {"train": args.train_per_word, "validation": args.validation_per_word, "test": args.test_per_word}
    try:
        written = write_spoken_words(args.out_dir, {k: n for k, n in sizes.items() if n > 0}, args.seed, overwrite=args.overwrite)
    except (FileExistsError, RuntimeError, ValueError) as error:
        sys.exit(f"error: {error}")
    for split, rows in written.items():
        print(f"{split}: {len(rows)} clips, {len({r['voice'] for r in rows})} voices, {len({r['word'] for r in rows})} words")
    return written


if __name__ == "__main__":
    main()

"""The spoken-words benchmark folder (benchmarks/spoken_words.py): unseen voices in test, readable by the atr loader.

Needs the espeak-ng program (.ci/run installs it; elsewhere the generator's error says how); not skipped when absent.
"""

import sys
from pathlib import Path

import pytest
import soundfile as sf

from atr.data import decode_audio, load_audio_text_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import spoken_words  # noqa: E402

WORDS = ("seven", "stop", "yes")
SIZES = {"train": 3, "validation": 1, "test": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 3-word folder with all three splits."""
    out = tmp_path_factory.mktemp("words") / "spoken"
    spoken_words.write_spoken_words(out, SIZES, seed=0, words=WORDS)
    return out


def test_splits_have_disjoint_accents_and_variants(folder):
    voices = {split: set(load_audio_text_dataset(folder, split)["voice"]) for split in SIZES}
    parts = {split: ({v.split("+")[0] for v in vs}, {v.split("+")[1] for v in vs}) for split, vs in voices.items()}
    for a, b in (("train", "test"), ("train", "validation"), ("validation", "test")):
        assert not parts[a][0] & parts[b][0], f"accents shared by {a} and {b}"
        assert not parts[a][1] & parts[b][1], f"variants shared by {a} and {b}"


def test_loader_reads_every_split(folder):
    for split, per_word in SIZES.items():
        dataset = load_audio_text_dataset(folder, split)
        assert len(dataset) == per_word * len(WORDS)
        assert sorted(set(dataset["word"])) == sorted(WORDS)
        for row in dataset:
            assert len(row["captions"]) == spoken_words.CAPTIONS_PER_CLIP
            assert all(row["word"] in caption for caption in row["captions"])
            info = sf.info(row["audio"]["path"])
            assert (info.samplerate, info.channels) == (16000, 1)
            assert 0.2 < info.duration < 2.0  # a short clip, the case this benchmark is for


def test_same_seed_writes_the_same_audio(folder, tmp_path):
    again = tmp_path / "again"
    spoken_words.write_spoken_words(again, {"test": SIZES["test"]}, seed=0, words=WORDS)
    first = load_audio_text_dataset(folder, "test")
    second = load_audio_text_dataset(again, "test")
    assert first["voice"] == second["voice"] and first["captions"] == second["captions"]
    for a, b in zip(first["audio"], second["audio"]):
        assert (decode_audio(a, 16000) == decode_audio(b, 16000)).all()


def test_refuses_to_write_into_a_non_empty_folder(folder):
    with pytest.raises(FileExistsError, match="--overwrite"):
        spoken_words.write_spoken_words(folder, {"test": 1}, words=WORDS)

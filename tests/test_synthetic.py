"""The synthetic sound-scene dataset: determinism, honest captions, distinct timbres, silences, dataset layout."""

import numpy as np
import pytest
from datasets import Audio

from atr.data import decode_audio, load_audio_text_dataset
from atr.synthetic import EVENT_TYPES, colored_noise, make_synthetic_dataset, make_synthetic_split, synthesize_clip

SR = 16000
PAUSE_WORDS = ("pause", "silence", "moment of quiet")
WHILE_WORDS = ("while", "at the same time", "together with", " as ")


@pytest.fixture(scope="module")
def clips():
    """60 scenes drawn straight from the generator (no dataset machinery)."""
    return [synthesize_clip(np.random.default_rng([7, i]), SR) for i in range(60)]


def _mentions(caption, event):
    caption = caption.lower()
    return any(phrase in caption for phrase in (*event.sentences, *event.noun_phrases))


def test_at_least_eight_event_types_with_distinct_timbres():
    """A nearest-centroid classifier on log band energies tells fresh renders of every event type apart."""
    assert len(EVENT_TYPES) >= 8
    edges = np.geomspace(40, SR / 2, 25)

    def features(wave):
        spectrum = np.abs(np.fft.rfft(wave)) ** 2
        freqs = np.fft.rfftfreq(len(wave), 1 / SR)
        bands = np.array([spectrum[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
        log_bands = np.log(bands / bands.sum() + 1e-12)
        return log_bands - log_bands.mean()

    rng = np.random.default_rng(0)
    train = np.array([[features(e.synth(rng, 2 * SR, SR)) for _ in range(4)] for e in EVENT_TYPES])
    test = np.array([[features(e.synth(rng, 2 * SR, SR)) for _ in range(3)] for e in EVENT_TYPES])
    centroids = train.mean(axis=1)
    predicted = np.linalg.norm(test[:, :, None] - centroids[None, None], axis=-1).argmin(-1)
    accuracy = (predicted == np.arange(len(EVENT_TYPES))[:, None]).mean()
    assert accuracy >= 0.9, predicted


def test_scene_structure_and_durations(clips):
    counts = {len(c["events"]) for c in clips}
    assert counts == {1, 2, 3}
    for clip in clips:
        assert 4.0 <= clip["duration_s"] <= 12.0
        assert clip["array"].dtype == np.float32 and len(clip["array"]) == round(clip["duration_s"] * SR)
        assert np.isfinite(clip["array"]).all() and 0.5 < np.abs(clip["array"]).max() <= 1.0
        assert len(clip["relations"]) == len(clip["events"]) - 1
        labels = [e["label"] for e in clip["events"]]
        assert len(set(labels)) == len(labels)
        assert all(0 <= e["onset_s"] < e["offset_s"] <= clip["duration_s"] for e in clip["events"])


def test_captions_are_five_distinct_paraphrases_naming_every_event_and_relation(clips):
    by_name = {e.name: e for e in EVENT_TYPES}
    for clip in clips:
        captions = clip["captions"]
        assert len(captions) == 5 and len(set(captions)) == 5
        for caption in captions:
            for event in clip["events"]:
                assert _mentions(caption, by_name[event["label"]]), (caption, event["label"])
            if "pause" in clip["relations"]:
                assert any(word in caption.lower() for word in PAUSE_WORDS), caption
            if "while" in clip["relations"]:
                assert any(word in caption.lower() for word in WHILE_WORDS), caption
            if clip["relations"] and set(clip["relations"]) == {"then"}:
                assert not any(word in caption.lower() for word in PAUSE_WORDS + WHILE_WORDS), caption


def test_relations_match_the_timeline(clips):
    """`then` and `pause` events follow each other (pause: a silent gap over 1 s); `while` events overlap."""
    seen = set()
    for clip in clips:
        events = clip["events"]
        for i, relation in enumerate(clip["relations"]):
            previous_end = max(e["offset_s"] for e in events[: i + 1])
            gap = events[i + 1]["onset_s"] - previous_end
            seen.add(relation)
            if relation == "then":
                assert 0 < gap < 1.0
            elif relation == "pause":
                assert gap > 1.0
            else:
                assert events[i]["onset_s"] < events[i + 1]["onset_s"] < events[i]["offset_s"]
    assert seen == {"then", "pause", "while"}


def test_pauses_are_quiet_in_the_audio(clips):
    """Inside a pause only the background plays: at least 15 dB under the neighbouring events."""
    checked = 0
    for clip in clips:
        events, wave = clip["events"], clip["array"].astype(np.float64)
        for i, relation in enumerate(clip["relations"]):
            if relation != "pause":
                continue
            start = max(e["offset_s"] for e in events[: i + 1]) + 0.05
            stop = events[i + 1]["onset_s"] - 0.05
            gap = wave[int(start * SR): int(stop * SR)]
            sound = wave[int(events[i + 1]["onset_s"] * SR): int(events[i + 1]["offset_s"] * SR)]
            assert 10 * np.log10(np.mean(sound**2) / np.mean(gap**2)) > 15
            checked += 1
    assert checked > 0


def test_same_seed_gives_bitwise_same_audio_and_captions(tmp_path):
    first = make_synthetic_split("test", 3, seed=5, cache_dir=str(tmp_path / "a"))
    again = make_synthetic_split("test", 3, seed=5, cache_dir=str(tmp_path / "b"))  # regenerated, not cached
    other = make_synthetic_split("test", 3, seed=6, cache_dir=str(tmp_path / "a"))
    for i in range(3):
        assert np.array_equal(decode_audio(first[i]["audio"], SR), decode_audio(again[i]["audio"], SR))
        assert first[i]["captions"] == again[i]["captions"]
        assert not np.array_equal(decode_audio(first[i]["audio"], SR)[:4000], decode_audio(other[i]["audio"], SR)[:4000])
    # clip i does not depend on the split size
    longer = make_synthetic_split("test", 4, seed=5, cache_dir=str(tmp_path / "a"))
    assert longer[2]["audio"]["bytes"] == first[2]["audio"]["bytes"]
    # nor on how many processes generate it
    parallel = make_synthetic_split("test", 4, seed=5, cache_dir=str(tmp_path / "c"), num_proc=2)
    assert [a["bytes"] for a in parallel["audio"]] == [a["bytes"] for a in longer["audio"]]
    assert parallel["captions"] == longer["captions"]


def test_dataset_splits_layout_and_pipeline(tmp_path):
    splits = make_synthetic_dataset(n_train=3, n_validation=2, n_test=2, cache_dir=str(tmp_path))
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "validation": 2, "test": 2}
    assert splits["train"].features["audio"] == Audio(sampling_rate=SR, decode=False)
    assert splits["train"][0]["clip_id"] != splits["test"][0]["clip_id"]
    assert splits["train"][0]["audio"]["bytes"] != splits["test"][0]["audio"]["bytes"]
    row = splits["train"][0]
    wave = decode_audio(row["audio"], SR)
    assert len(wave) == round(row["duration_s"] * SR)
    # the same rows through the generic loader
    loaded = load_audio_text_dataset("synthetic", "train", load_kwargs={"n": 3, "cache_dir": str(tmp_path)})
    assert loaded["captions"] == splits["train"]["captions"]
    assert [a["bytes"] for a in loaded["audio"]] == [a["bytes"] for a in splits["train"]["audio"]]


def test_other_sampling_rate_and_bad_arguments(tmp_path):
    clip = synthesize_clip(np.random.default_rng(1), 48000, min_duration_s=4.0, max_duration_s=5.0)
    assert 4.0 <= clip["duration_s"] <= 5.0 and len(clip["array"]) == round(clip["duration_s"] * 48000)
    with pytest.raises(ValueError, match="no default size"):
        make_synthetic_split("dev", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="invalid"):
        make_synthetic_split("test", 2, min_duration_s=5, max_duration_s=4, cache_dir=str(tmp_path))


def test_colored_noise_spectral_slopes():
    """White is flat; pink falls about 3 dB and brown about 6 dB per octave."""
    rng = np.random.default_rng(0)
    freqs = np.fft.rfftfreq(2**16, 1 / SR)

    def slope(color):
        power = np.abs(np.fft.rfft(colored_noise(2**16, color, rng))) ** 2
        low, high = power[(freqs > 200) & (freqs < 400)].mean(), power[(freqs > 1600) & (freqs < 3200)].mean()
        return 10 * np.log10(high / low) / 3  # three octaves from 300 to 2400 Hz (band centres)

    assert abs(slope("white")) < 0.5
    assert -4 < slope("pink") < -2
    assert -7.5 < slope("brown") < -4.5
    with pytest.raises(ValueError, match="not supported"):
        colored_noise(10, "blue", rng)

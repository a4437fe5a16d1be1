"""The data pipeline: local folders and manifests, decoding, bad files, exact-SNR mixing, augmentation, collator."""

import csv
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from atr.augmentation import (
    load_noise_files, make_noise_augmentation, make_speed_perturbation, make_training_augmentation, mix_at_snr,
)
from atr.collator import AtrCollator
from atr.data import decode_audio, load_audio_text_dataset, median_duration_if_short

SR = 16000


def _write_clip(path, seconds=0.5, rate=SR, channels=1, seed=0):
    """A short noisy tone written with soundfile (format from the suffix)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (300 + 50 * seed) * t) + 0.01 * rng.standard_normal(t.size)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    sf.write(str(path), data.astype(np.float32), rate)


def _captions(i):
    return [f"clip {i} caption {k}" for k in range(5)]


@pytest.fixture
def audiofolder(tmp_path):
    """train/ (jsonl, 5-caption lists) and test/ (csv, one caption) with wav and flac files."""
    root = tmp_path / "folder"
    for split, n in (("train", 4), ("test", 2)):
        (root / split).mkdir(parents=True)
        rows = []
        for i in range(n):
            name = f"clip{i}.{'wav' if i % 2 == 0 else 'flac'}"
            _write_clip(root / split / name, seed=i)
            rows.append({"file_name": name, "captions": _captions(i)})
        if split == "train":
            (root / split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            with open(root / split / "metadata.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["file_name", "caption"])
                writer.writerows([r["file_name"], r["captions"][0]] for r in rows)
    return root


def _write_manifest(tmp_path, bad=None, empty=None):
    """A CSV manifest of 4 clips (wav + flac, relative paths) with caption_1..caption_5 columns."""
    (tmp_path / "clips").mkdir()
    rows = []
    for i in range(4):
        name = f"clips/c{i}.{'flac' if i % 2 else 'wav'}"
        _write_clip(tmp_path / name, seed=i)
        rows.append([name, *_captions(i)])
    if bad is not None:
        (tmp_path / "clips" / "broken.wav").write_bytes(b"not a wav file at all" * 20)
        rows.insert(bad, ["clips/broken.wav", *_captions(9)])
    if empty is not None:
        sf.write(str(tmp_path / "clips" / "empty.wav"), np.zeros(0, np.float32), SR)
        rows.insert(empty, ["clips/empty.wav", *_captions(8)])
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *[f"caption_{k}" for k in range(1, 6)]])
        writer.writerows(rows)
    return path


def test_audiofolder_splits_with_caption_lists_and_single_captions(audiofolder):
    train = load_audio_text_dataset(audiofolder, "train")
    assert len(train) == 4 and train["captions"] == [_captions(i) for i in range(4)]
    for i, row in enumerate(train):
        assert row["audio"]["path"].endswith(f"clip{i}.{'wav' if i % 2 == 0 else 'flac'}")
        wave = decode_audio(row["audio"], SR)
        assert wave.dtype == np.float32 and wave.shape == (SR // 2,)
    test = load_audio_text_dataset(str(audiofolder), "test")
    assert test["captions"] == [_captions(0)[:1], _captions(1)[:1]]
    with pytest.raises(ValueError, match="no 'validation' subfolder"):
        load_audio_text_dataset(audiofolder, "validation")


def test_csv_and_jsonl_manifests(tmp_path):
    manifest = _write_manifest(tmp_path)
    data = load_audio_text_dataset(manifest)
    assert len(data) == 4 and data[3]["captions"] == _captions(3)
    assert all(decode_audio(a, SR).size == SR // 2 for a in data["audio"])
    # JSONL with a split column, a list column and a JSON-list string
    lines = [{"audio_path": str(tmp_path / "clips/c0.wav"), "captions": _captions(0), "split": "train"},
             {"audio_path": "clips/c1.flac", "captions": json.dumps(_captions(1)), "split": "test"}]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    test = load_audio_text_dataset(jsonl, "test")
    assert len(test) == 1 and test[0]["captions"] == _captions(1) and test[0]["audio"]["path"].endswith("c1.flac")
    named = load_audio_text_dataset(jsonl, "train", audio_column="audio_path", caption_columns=["captions"])
    assert named[0]["captions"] == _captions(0)


def test_missing_columns_and_captions_are_clear_errors(tmp_path):
    manifest = _write_manifest(tmp_path)
    with pytest.raises(ValueError, match="audio column 'wav'.*columns"):
        load_audio_text_dataset(manifest, audio_column="wav")
    with pytest.raises(ValueError, match=r"caption columns \['text'\]"):
        load_audio_text_dataset(manifest, caption_columns="text")
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"file_name": "clips/c0.wav", "caption": " "}) + "\n")
    with pytest.raises(ValueError, match="row 0 of .*blank.jsonl has no caption"):
        load_audio_text_dataset(blank)


def test_corrupt_file_stops_with_file_and_row(tmp_path):
    manifest = _write_manifest(tmp_path, bad=2)
    with pytest.raises(ValueError, match=r"broken\.wav at row 2 .*skip_bad_audio=True"):
        load_audio_text_dataset(manifest)


def test_skip_bad_audio_skips_and_reports_one_row(tmp_path, caplog):
    manifest = _write_manifest(tmp_path, bad=1)
    with caplog.at_level(logging.WARNING, logger="atr.data"):
        data = load_audio_text_dataset(manifest, skip_bad_audio=True)
    assert len(data) == 4 and all("broken" not in a["path"] for a in data["audio"])
    assert "skipped 1 of 5 rows" in caplog.text and "broken.wav" in caplog.text


def test_empty_file_is_never_fed(tmp_path, caplog):
    manifest = _write_manifest(tmp_path, empty=0)
    with pytest.raises(ValueError, match=r"empty\.wav at row 0 .*no audio frames"):
        load_audio_text_dataset(manifest)
    with caplog.at_level(logging.WARNING, logger="atr.data"):
        data = load_audio_text_dataset(manifest, skip_bad_audio=True)
    assert len(data) == 4 and "skipped 1 of 5 rows" in caplog.text


def test_decode_audio_inputs_mono_mix_and_resampling(tmp_path):
    rate = 44100
    t = np.arange(rate) / rate
    left, right = np.sin(2 * np.pi * 1000 * t), 0.5 * np.sin(2 * np.pi * 1000 * t)
    sf.write(str(tmp_path / "stereo.flac"), np.stack([left, right], 1).astype(np.float32), rate, subtype="PCM_24")
    expected = 0.75 * np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)
    from_path = decode_audio(str(tmp_path / "stereo.flac"), SR)
    from_bytes = decode_audio({"bytes": (tmp_path / "stereo.flac").read_bytes(), "path": "stereo.flac"}, SR)
    from_array = decode_audio({"array": np.stack([left, right]), "sampling_rate": rate}, SR)
    for wave in (from_path, from_bytes, from_array):
        assert wave.dtype == np.float32 and wave.shape == (SR,)
        assert np.abs(wave[200:-200] - expected[200:-200]).max() < 1e-3  # away from the resampler's edges
    assert np.array_equal(decode_audio({"array": left.astype(np.float32), "sampling_rate": SR}, SR),
                          left.astype(np.float32))
    with pytest.raises(ValueError, match="could not decode audio file .*nope.wav"):
        decode_audio(str(tmp_path / "nope.wav"), SR)
    with pytest.raises(ValueError, match="no sampling_rate"):
        decode_audio({"array": left}, SR)


def _realised_snr(clean, mixed):
    clean = clean.astype(np.float64)
    return 10 * np.log10(np.sum(clean**2) / np.sum((mixed.astype(np.float64) - clean) ** 2))


@pytest.fixture
def noise_dir(tmp_path):
    """Two recordings: one shorter than the clips (looped) and one longer (cropped), one of them at 8 kHz stereo."""
    folder = tmp_path / "noise"
    folder.mkdir()
    rng = np.random.default_rng(3)
    sf.write(str(folder / "short.wav"), (0.2 * rng.standard_normal(3000)).astype(np.float32), SR)
    hum = np.sin(2 * np.pi * 120 * np.arange(40000) / 8000) + 0.3 * rng.standard_normal(40000)
    sf.write(str(folder / "long.flac"), np.stack([hum, hum], 1).astype(np.float32), 8000)
    return folder


@pytest.mark.parametrize("snr_db", [5.0, 10.0, 15.0])
def test_mix_at_snr_is_exact_for_white_pink_and_file_noise(snr_db, noise_dir):
    clean = decode_audio({"array": np.sin(np.linspace(0, 900, 2 * SR)) * np.hanning(2 * SR), "sampling_rate": SR}, SR)
    recordings = load_noise_files(noise_dir, SR)
    assert [r.size for r in recordings] == [80000, 3000]  # sorted: long.flac (5 s at 8 kHz -> 16 kHz), short.wav
    for noise in ("white", "pink", recordings[0], recordings[1], recordings):
        mixed = mix_at_snr(clean, noise, snr_db, rng=np.random.default_rng(11))
        assert mixed.dtype == np.float32 and mixed.shape == clean.shape
        assert abs(_realised_snr(clean, mixed) - snr_db) < 0.1


def test_mix_at_snr_is_deterministic_by_seed_and_checks_inputs(noise_dir):
    clean = np.sin(np.linspace(0, 500, SR)).astype(np.float32)
    recordings = load_noise_files(noise_dir, SR)
    for noise in ("white", "pink", recordings):
        same = [mix_at_snr(clean, noise, 10.0, rng=np.random.default_rng(4)) for _ in range(2)]
        assert np.array_equal(same[0], same[1])
        assert not np.array_equal(same[0], mix_at_snr(clean, noise, 10.0, rng=5))
    with pytest.raises(ValueError, match="digital silence"):
        mix_at_snr(np.zeros(100), "white", 10.0)
    with pytest.raises(ValueError, match="unknown"):
        mix_at_snr(clean, "purple", 10.0)
    with pytest.raises(ValueError, match="no audio files"):
        load_noise_files(noise_dir / "missing", SR)


def test_noise_augmentation_adds_noise_in_the_snr_range(noise_dir):
    clean = (0.5 * np.sin(np.linspace(0, 3000, 2 * SR))).astype(np.float32)
    np.random.seed(0)
    import random

    random.seed(0)
    for background in (None, noise_dir):
        augment = make_noise_augmentation(p=1.0, min_snr_db=5, max_snr_db=15, background_dir=background)
        for _ in range(6):
            snr = _realised_snr(clean, augment(samples=clean, sample_rate=SR))
            assert 4.0 < snr < 16.0
    untouched = make_noise_augmentation(p=0.0)
    assert np.array_equal(untouched(samples=clean, sample_rate=SR), clean)
    with pytest.raises(ValueError, match="does not exist"):
        make_noise_augmentation(background_dir=noise_dir / "missing")


def test_speed_perturbation_changes_tempo_within_the_range():
    clean = (0.5 * np.sin(np.linspace(0, 3000, SR))).astype(np.float32)  # 1 s
    np.random.seed(0)
    augment = make_speed_perturbation(SR, 0.1, p=1.0)
    lengths = {len(augment(samples=clean, sample_rate=SR)) for _ in range(8)}
    # factor f in [0.9, 1.1] plays 1 s in f s: a faster voice is shorter (and higher)
    assert len(lengths) > 1 and all(0.9 * SR - 1 <= n <= 1.1 * SR + 1 for n in lengths)
    with pytest.raises(ValueError, match="speed perturbation 1.5 is invalid"):
        make_speed_perturbation(SR, 1.5)
    # train.py's augmentation: speed (p=0.5) before the noise; off by default
    np.random.seed(1)
    with_speed = make_training_augmentation(SR, noise_probability=0.0, speed_perturbation=0.1)
    assert {len(with_speed(samples=clean, sample_rate=SR)) for _ in range(8)} - {SR}
    assert all(len(make_training_augmentation(SR, noise_probability=1.0)(samples=clean, sample_rate=SR)) == SR for _ in range(4))


class StubProcessor:
    """Records what the collator passes; returns waveform lengths and caption indices as tensors."""

    class feature_extractor:
        sampling_rate = SR

    def __call__(self, audio, text, sampling_rate, return_tensors, **kwargs):
        self.audio, self.text, self.kwargs = audio, text, kwargs
        assert sampling_rate == SR and return_tensors == "pt"
        return {"lengths": torch.tensor([len(a) for a in audio]), "n_text": torch.tensor(len(text))}


def _rows(tmp_path, n=3):
    rows = []
    for i in range(n):
        path = tmp_path / f"r{i}.flac"
        _write_clip(path, seconds=0.25 * (i + 1), rate=22050, seed=i)
        rows.append({"audio": {"bytes": None, "path": str(path)}, "captions": _captions(i), "clip_index": i})
    return rows


def test_collator_training_samples_one_seeded_caption_per_clip(tmp_path):
    rows = _rows(tmp_path)
    processor = StubProcessor()
    picks = []
    for seed in (0, 0, 1):
        collator = AtrCollator(processor, training=True, seed=seed)
        chosen = []
        for epoch in range(20):
            collator.set_epoch(epoch)
            assert collator(rows)["return_loss"] is True
            chosen.append(list(processor.text))
        picks.append(chosen)
    assert picks[0] == picks[1] and picks[0] != picks[2]
    for chosen in picks[0]:
        assert [caption in row["captions"] for caption, row in zip(chosen, rows)] == [True] * 3
    assert {c for chosen in picks[0] for c in chosen[:1]} == set(_captions(0))  # every caption gets its turn
    assert processor.kwargs["training"] is True
    assert processor.audio[2].dtype == np.float32 and len(processor.audio[2]) == int(0.75 * SR)  # 22.05 kHz -> 16 kHz


def test_collator_evaluation_keeps_all_captions_and_maps_them_to_clips(tmp_path):
    rows = _rows(tmp_path)
    rows[1]["captions"] = rows[1]["captions"][:2]
    processor = StubProcessor()
    batch = AtrCollator(processor, training=False)(rows)
    assert processor.text == _captions(0) + _captions(1)[:2] + _captions(2)
    assert batch["caption_to_audio"].tolist() == [0] * 5 + [1] * 2 + [2] * 5
    assert "return_loss" not in batch and "training" not in processor.kwargs


def test_collator_augments_only_in_training(tmp_path):
    rows = _rows(tmp_path, n=2)
    processor = StubProcessor()
    augment = make_noise_augmentation(p=1.0)
    AtrCollator(processor, training=False, augment=augment)(rows)
    clean = [a.copy() for a in processor.audio]
    assert all(np.array_equal(a, decode_audio(r["audio"], SR)) for a, r in zip(clean, rows))
    AtrCollator(processor, training=True, augment=augment)(rows)
    noisy = processor.audio
    assert all(5 - 1 < _realised_snr(c, n) < 15 + 1 for c, n in zip(clean, noisy))


def test_synthetic_rows_through_real_processor_and_tiny_model(tmp_path):
    """Synthetic split -> collator -> AtrProcessor (tiny Whisper features, tiny BERT tokenizer) -> AtrModel loss."""
    from tiny import tiny_atr_config, tiny_tokenizer

    from atr import AtrModel
    from atr.feature_extraction_atr import AtrFeatureExtractor
    from atr.processing_atr import AtrProcessor

    config = tiny_atr_config(audio="whisper", text="bert")
    processor = AtrProcessor(AtrFeatureExtractor.from_audio_config(config.audio_config), tiny_tokenizer())
    data = load_audio_text_dataset("synthetic", "train", load_kwargs={"n": 2, "cache_dir": str(tmp_path),
                                                                        "max_duration_s": 4.0})
    model = AtrModel(config).eval()
    train_batch = AtrCollator(processor, training=True, seed=0)(list(data.add_column("clip_index", [0, 1])))
    assert train_batch["input_ids"].shape[0] == 2 and train_batch["chunk_mask"].shape[0] == 2
    assert torch.isfinite(model(**train_batch).loss)
    eval_batch = AtrCollator(processor, training=False)(list(data))
    assert eval_batch["input_ids"].shape[0] == 10 and eval_batch["caption_to_audio"].tolist() == [0] * 5 + [1] * 5
    inputs = {k: v for k, v in eval_batch.items() if k != "caption_to_audio"}
    with torch.no_grad():
        audio = model.get_audio_features(inputs["input_features"], inputs["chunk_mask"]).pooler_output
    assert audio.shape == (2, config.projection_dim)


def _hub_like_parquet(tmp_path):
    """Parquet files laid out as Hub audio datasets are: an Audio column of bytes, Clotho- and AudioCaps-style."""
    from datasets import Audio, Dataset

    clips = []
    for i in range(3):
        _write_clip(tmp_path / f"h{i}.flac", seed=i)
        clips.append({"bytes": (tmp_path / f"h{i}.flac").read_bytes(), "path": f"h{i}.flac"})
    clotho = Dataset.from_dict({"audio": clips, **{f"caption_{k + 1}": [_captions(i)[k] for i in range(3)]
                                                   for k in range(5)}})
    clotho.cast_column("audio", Audio(sampling_rate=SR, decode=False)).to_parquet(str(tmp_path / "clotho.parquet"))
    # one caption per row; the same clip repeated under one id
    audiocaps = Dataset.from_dict({"audio": [clips[0], clips[0], clips[1]], "youtube_id": ["a", "a", "b"],
                                   "caption": ["first a", "second a", "only b"]})
    audiocaps.cast_column("audio", Audio(decode=False)).to_parquet(str(tmp_path / "audiocaps.parquet"))


def test_hub_code_path_with_local_parquet(tmp_path):
    """The Hub branch (load_dataset + Audio(decode=False) + caption gathering) on Hub-layout parquet, offline."""
    _hub_like_parquet(tmp_path)
    clotho = load_audio_text_dataset("parquet", "train", load_kwargs={"data_files": str(tmp_path / "clotho.parquet")})
    assert clotho["captions"] == [_captions(i) for i in range(3)]
    assert clotho.features["audio"].decode is False
    assert decode_audio(clotho[2]["audio"], SR).size == SR // 2
    audiocaps = load_audio_text_dataset("parquet", "train", group_by="youtube_id",
                                        load_kwargs={"data_files": str(tmp_path / "audiocaps.parquet")})
    assert audiocaps["captions"] == [["first a", "second a"], ["only b"]]
    assert audiocaps["youtube_id"] == ["a", "b"]
    streamed = load_audio_text_dataset("parquet", "train", streaming=True,
                                       load_kwargs={"data_files": str(tmp_path / "clotho.parquet")})
    assert [row["captions"] for row in streamed] == [_captions(i) for i in range(3)]


def test_collator_draws_depend_only_on_seed_epoch_and_clip_index(tmp_path):
    """Any split of a batch (processes, workers), any order, any restart: a row draws the same caption and noise."""
    rows = _rows(tmp_path, n=4)
    augment = make_noise_augmentation(p=1.0)

    def draws(batch_rows, epoch, seed=3):
        collator = AtrCollator(StubProcessor(), seed=seed, augment=augment)
        collator.set_epoch(epoch)
        collator(batch_rows)
        return {row["clip_index"]: (text, audio) for row, text, audio in zip(batch_rows, collator.processor.text, collator.processor.audio)}

    def same(a, b):
        return a.keys() == b.keys() and all(a[k][0] == b[k][0] and np.array_equal(a[k][1], b[k][1]) for k in a)

    whole = draws(rows, epoch=1)
    assert same(whole, {**draws(rows[:2], epoch=1), **draws(rows[2:], epoch=1)})  # two ranks or two workers
    assert same(whole, draws(rows[::-1], epoch=1))  # another batch order
    other_epoch = draws(rows, epoch=2)
    assert any(not np.array_equal(whole[k][1], other_epoch[k][1]) for k in whole)  # each epoch draws new noise
    assert not same(whole, draws(rows, epoch=1, seed=4))


def test_persistent_dataloader_workers_draw_each_epoch_anew(tmp_path):
    """A persistent worker keeps its copy of the collator across epochs: it must still draw the epoch set_epoch names."""
    from torch.utils.data import DataLoader

    class EchoProcessor(StubProcessor):
        def __call__(self, audio, text, sampling_rate, return_tensors, **kwargs):
            return {"energy": torch.tensor([float(np.square(a, dtype=np.float64).sum()) for a in audio]), "text": list(text)}

    rows = _rows(tmp_path, n=4)
    collator = AtrCollator(EchoProcessor(), seed=3, augment=make_noise_augmentation(p=1.0))
    loader = DataLoader(rows, batch_size=2, collate_fn=collator, num_workers=1, persistent_workers=True)
    energies = []
    for epoch in range(3):
        collator.set_epoch(epoch)
        in_worker, in_process = list(loader), [collator(rows[:2]), collator(rows[2:])]
        for got, want in zip(in_worker, in_process):
            assert got["text"] == want["text"] and torch.equal(got["energy"], want["energy"]), epoch
        energies.append(torch.cat([batch["energy"] for batch in in_worker]))
    assert not torch.equal(energies[0], energies[1]) and not torch.equal(energies[1], energies[2])


def test_median_duration_is_reported_only_when_clips_fill_under_a_quarter_of_the_window(tmp_path):
    from datasets import Dataset

    def clips(seconds):
        paths = []
        for i, length in enumerate(seconds):
            paths.append(str(tmp_path / f"{length}-{i}.wav"))
            _write_clip(paths[-1], seconds=length, rate=SR, seed=i)
        return Dataset.from_dict({"audio": [{"bytes": None, "path": path} for path in paths]})

    assert median_duration_if_short(clips([0.5, 0.7, 3.0]), window_s=4.96) == pytest.approx(0.7)
    assert median_duration_if_short(clips([0.5, 0.7, 3.0]), window_s=1.24) is None
    assert median_duration_if_short(clips([2.0, 6.0, 9.0]), window_s=4.96) is None


def test_collator_training_rows_need_their_clip_index(tmp_path):
    rows = [{key: value for key, value in row.items() if key != "clip_index"} for row in _rows(tmp_path, n=2)]
    with pytest.raises(ValueError, match=r"clip_index column .*add_column\('clip_index'"):
        AtrCollator(StubProcessor(), training=True)(rows)


def test_decode_audio_validates_in_memory_arrays_as_the_feature_extractor_does():
    """One validation for both: int PCM scaled to [-1, 1], (channels, samples) downmixed, (samples, channels) refused."""
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)
    pcm = np.round(tone * 32767).astype(np.int16)
    decoded = decode_audio({"array": pcm, "sampling_rate": SR}, SR)
    np.testing.assert_allclose(decoded, tone, atol=1e-4)
    stereo = np.stack([tone, 0.5 * tone])
    np.testing.assert_allclose(decode_audio({"array": stereo, "sampling_rate": SR}, SR), 0.75 * tone, atol=1e-6)
    with pytest.raises(ValueError, match=r"clip\.wav.*shape \(16000, 2\), expected \(channels, samples\): transpose"):
        decode_audio({"array": stereo.T, "sampling_rate": SR, "path": "clip.wav"}, SR)

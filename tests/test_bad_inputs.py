"""The bad-input matrix through the public API: each row gets a clear error naming the input and the fix, or the
documented correct handling (docs/data.md, docs/feature_extraction.md).

Rows: empty, all-silent, NaN/Inf, int16/int32/uint8, stereo in both layouts, a 2-D batch, a wrong rate, 0.05 s, 1 h,
a zero-byte file, a truncated file, a non-audio file named .wav, an AppleDouble file, and empty / whitespace /
non-string / over-long captions; through the processor, `decode_audio`, dataset loading, train.py and evaluate.py.
"""

import importlib.util
import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny import tiny_atr_config, tiny_bert_config, tiny_tokenizer
from transformers import BertModel

from atr import AtrFeatureExtractor, AtrModel, AtrProcessor
from atr.augmentation import make_noise_augmentation
from atr.data import decode_audio, load_audio_text_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402

_spec = importlib.util.spec_from_file_location("atr_evaluate_cli_bad_inputs", ROOT / "evaluate.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

SR = 16000  # the tiny Whisper extractor's rate (1 s windows)
TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")
# the bytes a macOS copy leaves next to clip.wav as ._clip.wav (AppleDouble magic 0x00051607, version 2)
APPLEDOUBLE = bytes.fromhex("0005160700020000") + b"Mac OS X        " + bytes(66)


def tone(seconds=1.0, freq=440.0, rate=SR):
    """A float32 sine at 0.5 amplitude."""
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


@pytest.fixture(scope="module")
def processor():
    config = tiny_atr_config(audio="whisper", text="bert")
    return AtrProcessor(AtrFeatureExtractor.from_audio_config(config.audio_config, window_s=1.0), tiny_tokenizer())


def features(processor, audio):
    return processor(audio=audio, sampling_rate=SR, return_tensors="np")


def write_bad_files(folder):
    """{kind: file name} of the four unreadable kinds, written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / "whole.wav", tone(2.0), SR, subtype="PCM_16")
    whole = (folder / "whole.wav").read_bytes()
    files = {"zero-byte": "empty.wav", "truncated": "cut.wav", "not audio": "notes.wav", "AppleDouble": "._whole.wav"}
    (folder / files["zero-byte"]).write_bytes(b"")
    (folder / files["truncated"]).write_bytes(whole[: len(whole) // 2])  # an interrupted copy: header promises 2 s
    (folder / files["not audio"]).write_text("these are meeting notes, not a recording\n" * 20)
    (folder / files["AppleDouble"]).write_bytes(APPLEDOUBLE)
    return files


# ---------------------------------------------------------------- the processor (AtrProcessor / AtrFeatureExtractor)


def test_processor_refuses_empty_audio(processor):
    with pytest.raises(ValueError, match=r"audio at index 0 is empty: drop it or pass at least one sample"):
        features(processor, np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"raw_audio is an empty list: pass at least one clip"):
        features(processor, [])


def test_processor_keeps_one_chunk_of_an_all_silent_clip(processor):
    out = features(processor, [np.zeros(3 * SR, dtype=np.float32), tone()])
    assert out["chunk_mask"].tolist() == [[1], [1]]  # silence is dropped, but a clip always keeps one chunk to embed
    assert np.isfinite(out["input_features"]).all() and out["chunk_spans"][0, 0, 0].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_processor_refuses_nan_and_inf_naming_clip_and_sample(processor, bad):
    clip = tone()
    clip[5] = bad
    with pytest.raises(ValueError, match=r"audio at index 1 has NaN or Inf at sample 5: clean it first, e\.g\. np\.nan_to_num"):
        features(processor, [tone(), clip])


@pytest.mark.parametrize("dtype", ["int16", "int32", "uint8"])
def test_processor_scales_integer_pcm_to_unit_range(processor, dtype):
    info = np.iinfo(dtype)
    scale, offset = (info.max - info.min + 1) / 2, (info.max + info.min + 1) / 2  # uint8: 128 is zero
    pcm = np.round(tone() * (scale - 1) + offset).astype(dtype)
    reference = ((pcm.astype(np.float64) - offset) / scale).astype(np.float32)
    np.testing.assert_allclose(features(processor, pcm)["input_features"], features(processor, reference)["input_features"], atol=1e-5)


def test_processor_downmixes_channels_first_stereo_and_refuses_samples_first(processor):
    left, right = tone(), tone(freq=660.0)
    stereo = np.stack([left, right])  # (channels, samples): the datasets / torchcodec layout
    np.testing.assert_allclose(features(processor, [stereo])["input_features"],
                               features(processor, [(left + right) / 2])["input_features"], atol=1e-6)
    with pytest.raises(ValueError, match=r"audio at index 0 has shape \(16000, 2\), expected \(channels, samples\): transpose it"):
        features(processor, [stereo.T])  # (samples, channels), as soundfile returns


def test_processor_takes_a_2d_array_as_a_batch_of_clips(processor):
    clips = [tone(freq=f) for f in (300.0, 500.0, 700.0)]
    batch = features(processor, np.stack(clips))  # the transformers convention, as ClapFeatureExtractor
    assert batch["chunk_mask"].shape[0] == 3
    np.testing.assert_array_equal(batch["input_features"], features(processor, clips)["input_features"])


def test_processor_refuses_a_wrong_or_missing_rate(processor):
    with pytest.raises(ValueError, match=r"audio has sampling rate 44100, expected 16000: resample it first"):
        processor(audio=tone(rate=44100), sampling_rate=44100)
    with pytest.raises(ValueError, match=r"sampling_rate is required: pass sampling_rate="):
        processor(audio=tone())


def test_processor_pads_a_50_ms_clip_and_masks_the_padding(processor):
    out = features(processor, tone(0.05))
    assert out["chunk_mask"].tolist() == [[1]]
    real_frames = int(out["audio_attention_mask"][0, 0].sum())
    assert 0 < real_frames <= 6 < out["audio_attention_mask"].shape[-1]  # 800 samples / hop 160: the rest is padding


def test_processor_on_an_hour_keeps_only_the_sound_with_bounded_memory(processor):
    """1 h with three 2 s events: only their chunks are featurised; the extra memory is a small part of the input.

    The peak memory of an hour of continuous sound through decode -> processor -> model is in BENCHMARKS.md
    (benchmarks/bench_memory.py).
    """
    hour = np.zeros(3600 * SR, dtype=np.float32)
    for start in (10, 1800, 3590):
        hour[start * SR : (start + 2) * SR] = tone(2.0)
    tracemalloc.start()
    try:
        out = features(processor, hour)
        extra = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert extra < 0.1 * hour.nbytes  # 230 MB in, a few MB on top
    spans = out["chunk_spans"][0][out["chunk_mask"][0].astype(bool)]
    starts = sorted({float(s) for chunk in spans for s, e in chunk if s >= 0})
    assert out["chunk_mask"].sum() == 9 and all(any(a - 0.2 <= s < a + 2 for a in (10, 1800, 3590)) for s in starts)


@pytest.mark.parametrize("caption, message", [
    ("", r"text at index 1 is an empty caption: drop it or pass some words"),
    ("   \n", r"text at index 1 is an empty caption: drop it or pass some words"),
    (3, r"text at index 1 is a int, expected a caption string"),
    (None, r"text at index 1 is a NoneType, expected a caption string"),
])
def test_processor_refuses_empty_and_non_string_captions(processor, caption, message):
    with pytest.raises(ValueError, match=message):
        processor(text=["a dog bark", caption])


def test_processor_truncates_an_over_long_caption_to_the_tokenizer_limit(processor):
    out = processor(text=["a dog bark " * 500, "a bell"], return_tensors="pt")
    assert out["input_ids"].shape == (2, processor.tokenizer.model_max_length)
    assert out["input_ids"][0, -1] == processor.tokenizer.sep_token_id  # truncated, still a well-formed sequence


# ---------------------------------------------------------------- decode_audio (arrays and files)


@pytest.mark.parametrize("dtype", ["int16", "int32", "uint8"])
def test_decode_audio_scales_integer_arrays_as_the_extractor_does(dtype):
    info = np.iinfo(dtype)
    pcm = np.round(tone() * info.max / 2 + (info.max + info.min + 1) / 2).astype(dtype)
    decoded = decode_audio({"array": pcm, "sampling_rate": SR}, SR)
    np.testing.assert_array_equal(decoded, AtrFeatureExtractor.to_mono_float(pcm).astype(np.float32))
    assert decoded.dtype == np.float32 and np.abs(decoded).max() <= 0.5 + 1e-2


def test_decode_audio_downmixes_channels_first_and_refuses_samples_first_naming_the_row():
    stereo = np.stack([tone(), tone(freq=660.0)])
    np.testing.assert_allclose(decode_audio({"array": stereo, "sampling_rate": SR}, SR), stereo.mean(0), atol=1e-7)
    with pytest.raises(ValueError, match=r"audio take3\.wav: .*shape \(16000, 2\), expected \(channels, samples\): transpose"):
        decode_audio({"array": stereo.T, "sampling_rate": SR, "path": "take3.wav"}, SR)


def test_decode_audio_takes_a_2d_row_array_as_channels_of_one_clip():
    """A dataset row holds one clip, so its 2-D array is (channels, samples) (datasets' layout), averaged to mono."""
    rows = np.stack([tone(freq=f) for f in (300.0, 500.0, 700.0)])
    np.testing.assert_allclose(decode_audio({"array": rows, "sampling_rate": SR}, SR), rows.mean(0), atol=1e-7)


def test_decode_audio_refuses_empty_and_non_finite_arrays():
    with pytest.raises(ValueError, match=r"audio <in-memory audio>: audio at index 0 is empty"):
        decode_audio({"array": np.zeros(0, dtype=np.float32), "sampling_rate": SR}, SR)
    clip = tone()
    clip[7] = np.nan
    with pytest.raises(ValueError, match=r"audio take1\.wav has NaN or Inf at sample 7: re-export it, or clean it first"):
        decode_audio({"array": clip, "sampling_rate": SR, "path": "take1.wav"}, SR)


def test_decode_audio_resamples_a_wrong_rate_and_keeps_silence_and_short_clips(tmp_path):
    assert decode_audio({"array": tone(0.5, rate=44100), "sampling_rate": 44100}, SR).shape == (SR // 2,)
    sf.write(tmp_path / "silent.wav", np.zeros(SR, dtype=np.float32), SR)
    sf.write(tmp_path / "blip.flac", tone(0.05, rate=48000), 48000)
    np.testing.assert_array_equal(decode_audio(str(tmp_path / "silent.wav"), SR), np.zeros(SR, dtype=np.float32))
    assert decode_audio(str(tmp_path / "blip.flac"), SR).shape == (800,)


def test_decode_audio_reads_stereo_files_and_refuses_non_finite_float_files(tmp_path):
    stereo = np.stack([tone(), tone(freq=660.0)], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, SR, subtype="FLOAT")
    np.testing.assert_allclose(decode_audio(str(tmp_path / "stereo.wav"), SR), stereo.mean(1), atol=1e-6)
    stereo[100, 0] = np.inf
    sf.write(tmp_path / "broken.wav", stereo, SR, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"broken\.wav has NaN or Inf at sample 100: re-export it"):
        decode_audio(str(tmp_path / "broken.wav"), SR)


@pytest.mark.parametrize("kind, message", [
    ("zero-byte", r"could not decode audio file .*empty\.wav: .*Fix or remove the file, or load the dataset with skip_bad_audio=True"),
    ("truncated", r"audio file .*cut\.wav is truncated \(its header promises 64000 bytes of audio, the file holds \d+\): re-export or re-download it"),
    ("not audio", r"could not decode audio file .*notes\.wav: .*Fix or remove the file"),
    ("AppleDouble", r"could not decode audio file .*\._whole\.wav: .*Fix or remove the file"),
])
def test_decode_audio_names_unreadable_files_and_the_fix(tmp_path, kind, message):
    files = write_bad_files(tmp_path)
    with pytest.raises(ValueError, match=message):
        decode_audio(str(tmp_path / files[kind]), SR)
    with pytest.raises(ValueError, match=message):  # the same file as {"bytes", "path"} (e.g. a Hub parquet row)
        decode_audio({"bytes": (tmp_path / files[kind]).read_bytes() or None, "path": str(tmp_path / files[kind])}, SR)


# ---------------------------------------------------------------- datasets, train.py, evaluate.py


def bad_manifest(folder, captions=None):
    """A CSV manifest of 6 good clips plus the four unreadable kinds; returns (manifest, {kind: file})."""
    files = write_bad_files(folder / "clips")
    lines = ["file_name,caption"]
    for index in range(6):
        sf.write(folder / "clips" / f"good{index}.wav", tone(1.0 + 0.2 * index, freq=300.0 + 100 * index), SR)
        lines.append(f"clips/good{index}.wav,{(captions or {}).get(index, 'a dog bark')}")
    lines += [f"clips/{name},a bell" for name in files.values()]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv", files


def test_loading_names_each_unreadable_file_with_its_row_or_skips_them_all(tmp_path, caplog):
    manifest, files = bad_manifest(tmp_path)
    with pytest.raises(ValueError, match=r"audio file .*empty\.wav at row 6 of split 'train' cannot be read .*pass skip_bad_audio=True"):
        load_audio_text_dataset(str(manifest), "train")
    with caplog.at_level("WARNING"):
        kept = load_audio_text_dataset(str(manifest), "train", skip_bad_audio=True)
    assert len(kept) == 6 and all("good" in row["audio"]["path"] for row in kept)
    assert "skipped 4 of 10 rows" in caplog.text and "truncated" in caplog.text


@pytest.mark.parametrize("caption", ['""', '"   "'])
def test_loading_refuses_a_row_whose_caption_is_empty_or_whitespace(tmp_path, caption):
    manifest, _ = bad_manifest(tmp_path, captions={2: caption})
    with pytest.raises(ValueError, match=r"row 2 of .*manifest\.csv has no caption in columns \['caption'\]: fill them in or drop the row"):
        load_audio_text_dataset(str(manifest), "train", verify_audio=False)


def test_loading_keeps_numeric_and_over_long_captions_as_text(tmp_path):
    long = " ".join(["dog bark"] * 400)
    manifest, _ = bad_manifest(tmp_path, captions={0: "42", 1: long})
    rows = load_audio_text_dataset(str(manifest), "train", verify_audio=False)
    assert rows[0]["captions"] == ["42"] and rows[1]["captions"] == [long]  # the processor truncates (test above)


def test_noise_folders_skip_hidden_appledouble_files(tmp_path):
    from atr.augmentation import load_noise_files, noise_files

    sf.write(tmp_path / "rain.wav", 0.1 * np.random.default_rng(0).standard_normal(SR).astype(np.float32), SR)
    (tmp_path / "._rain.wav").write_bytes(APPLEDOUBLE)
    assert [p.name for p in noise_files(tmp_path)] == ["rain.wav"]
    assert len(load_noise_files(tmp_path, SR)) == 1
    augment = make_noise_augmentation(p=1.0, background_dir=tmp_path)  # audiomentations alone would load ._rain.wav
    assert [Path(p).name for p in augment.transforms[-1].sound_file_paths] == ["rain.wav"]


def test_train_py_names_the_bad_file_and_trains_with_skip_bad_audio(tmp_path, tiny_text, caplog):
    manifest, files = bad_manifest(tmp_path)
    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "hum.wav", tone(1.0, freq=50.0), SR)
    (noise / "._hum.wav").write_bytes(APPLEDOUBLE)
    argv = ["--config", TINY, "--text_backbone", tiny_text, "--dataset", str(manifest), "--eval_split", "", "--test_split", "",
            "--max_steps", "1", "--save_strategy", "no", "--background_noise_dir", str(noise), "--noise_probability", "1"]
    with pytest.raises(ValueError, match=r"empty\.wav at row 6 of split 'train' cannot be read .*skip_bad_audio=True"):
        train.main([*argv, "--output_dir", str(tmp_path / "a")])
    with caplog.at_level("WARNING"):
        trainer, _ = train.main([*argv, "--output_dir", str(tmp_path / "b"), "--skip_bad_audio"])
    assert "skipped 4 of 10 rows" in caplog.text
    assert np.isfinite([log["loss"] for log in trainer.state.log_history if "loss" in log]).all()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, processor):
    path = tmp_path_factory.mktemp("atr-model")
    torch.manual_seed(0)
    AtrModel(tiny_atr_config(audio="whisper", text="bert", text_pooling="mean")).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_evaluate_py_names_the_bad_file_and_evaluates_with_skip_bad_audio(tmp_path, model_dir):
    manifest, _ = bad_manifest(tmp_path)
    argv = ["--model", str(model_dir), "--dataset", str(manifest), "--split", "train", "--no_progress"]
    with pytest.raises(ValueError, match=r"empty\.wav at row 6 of split 'train' cannot be read .*skip_bad_audio=True"):
        cli.main(argv)
    results = cli.main([*argv, "--skip_bad_audio"])
    assert results["num_clips"] == 6 and 0 <= results["conditions"][0]["metrics"]["t2a_mAP10"] <= 1


def test_evaluate_py_never_runs_a_repos_code_without_trust_remote_code(tmp_path):
    """A model folder whose config points at its own Python: evaluate.py refuses it and the code never runs."""
    marker = tmp_path / "code-ran"
    (tmp_path / "configuration_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    with pytest.raises(ValueError, match=r"(?s)could not be loaded .*--trust_remote_code, if you trust it"):
        cli.main(["--model", str(tmp_path), "--dataset", "synthetic", "--no_progress"])
    assert not marker.exists()


def test_atr_search_build_names_the_bad_file_skips_with_the_flag_and_ignores_appledouble(tmp_path, model_dir, capsys):
    from atr import search

    folder = tmp_path / "recordings"
    files = write_bad_files(folder)
    (folder / "whole.wav").rename(folder / "good.wav")
    argv = ["build", "--audio-dir", str(folder), "--model", str(model_dir), "--quiet", "--device", "cpu"]
    with pytest.raises(ValueError, match=r"(?s)(empty|cut|notes)\.wav.*skip_bad_audio"):
        search.main(argv)
    assert search.main([*argv, "--skip_bad_audio"]) == 0
    report = capsys.readouterr().err
    skipped = {line.split(":")[1].split()[-1] for line in report.splitlines() if line.startswith("atr-search: skipped")}
    assert skipped == {files["zero-byte"], files["truncated"], files["not audio"]}  # ._whole.wav: hidden, never read
    assert "1 recordings indexed" in report
